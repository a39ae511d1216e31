/* The shared plaintext cache of volume files and of the start's shared /tmp (docs/runtime.md,
 * "One file in many processes"): while such a file is open in any granted process of the
 * service, there is one plaintext
 * memfd for it, held by the launcher (PID 1). A process asks for it over a unix socket
 * (SOCK_SEQPACKET, an abstract name and a token, both in the grant) and gets a new open file
 * description of that memfd, so reads, writes, mmap, lseek, fstat and fcntl/flock locks are the
 * kernel's own and shared by every process. The first process to open a file decrypts it (the
 * shield, as before) and hands its memfd to the launcher, which keeps it; every later open gets
 * the same one. The launcher drops a file's memfd once no process holds it (a write lease can
 * be taken on it again). Commits stay in the shield, under the volume's lock, and read the
 * shared memfd: what is committed is always the shared content.
 *
 *   plaincache.c   the launcher's side: the listening socket, requests, the table of memfds
 *   shield/cache.c the shield's side: one connection per process, a request per open, unlink,
 *                  rename
 */
#ifndef SCONIFY_PLAINCACHE_H
#define SCONIFY_PLAINCACHE_H

#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define CACHE_TOKEN_LEN 32

enum {
    CACHE_OPEN = 1,    /* path, flags [+ an fd: the caller's decrypted memfd] -> an fd, or a status */
    CACHE_FORGET = 2,  /* path: removed or replaced by a rename; its memfd is dropped -> status 0 */
    CACHE_WHICH = 3,   /* an fd (path ""): the path of the cached file it is a description of -> status 0
                        * and the path, or ENOENT (no file of the cache: not a shared memfd) */
};

struct cache_request {
    uint32_t op;
    int32_t flags;                            /* CACHE_OPEN: the open(2) flags (O_ACCMODE, O_APPEND) */
    unsigned char token[CACHE_TOKEN_LEN];     /* the grant's: only granted processes are served */
    char path[PATH_MAX];                      /* absolute, normalised, NUL-terminated */
};

/* status 0 with an fd attached; ENOENT: not cached (CACHE_OPEN without an fd: decrypt it and
 * send it); ENOSPC: the table is full (keep a private copy); EACCES, EINVAL: refused. Only
 * CACHE_WHICH's answer carries a path (NUL-terminated); the others end after status. */
struct cache_reply {
    int32_t status;
    char path[PATH_MAX];
};

/* Room for the one descriptor a request or an answer carries. */
union cache_control {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
};

/* msg carries fd (SCM_RIGHTS), in control. */
static inline void cache_attach_fd(struct msghdr *msg, union cache_control *control, int fd)
{
    memset(control, 0, sizeof *control);
    msg->msg_control = control->buf;
    msg->msg_controllen = sizeof control->buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
}

#define CACHE_MAX_FILES 1024
#define CACHE_MAX_CLIENTS 512

struct cache_file {
    char *path;
    int fd;                                   /* an O_RDONLY open file description of the memfd */
};

struct plaincache {
    int listener;                             /* -1: no cache (the shield keeps private copies) */
    char name[64];                            /* the abstract socket name, without its leading NUL */
    unsigned char token[CACHE_TOKEN_LEN];
    char **volumes;                           /* the volumes it serves (paths) */
    size_t volume_count;
    dev_t exe_dev;                            /* the measured executable: peers must be it */
    ino_t exe_ino;
    struct cache_file files[CACHE_MAX_FILES];
    size_t file_count;
    int clients[CACHE_MAX_CLIENTS];
    size_t client_count;
};

/* The listening socket (close-on-exec) for the volumes' files, served to processes whose
 * executable is `executable` and who send the token: 0, or -1 (pc->listener -1, errno). */
int plaincache_start(struct plaincache *pc, const char *executable, char *const *volumes, size_t volume_count);
/* The fds to poll (listener and clients, POLLIN) into fds: how many (at most 1 + CACHE_MAX_CLIENTS). */
size_t plaincache_pollfds(const struct plaincache *pc, struct pollfd *fds);
/* Serve what poll reported on those fds: accept, answer requests, drop clients that hang up
 * or do not take their answer at once. Never blocks. */
void plaincache_serve(struct plaincache *pc, const struct pollfd *fds, size_t count);
/* Drop the memfds no process holds any more. */
void plaincache_sweep(struct plaincache *pc);

#endif
