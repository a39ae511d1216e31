/* The launcher's side of the shared plaintext cache (plaincache.h): a listening socket, the
 * requests of the service's processes, and the table of memfds, one per volume file open
 * somewhere in the service. Single-threaded, driven by the launcher's poll loop; never blocks. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "plaincache.h"
#include "util.h"

int plaincache_start(struct plaincache *pc, const char *executable, char *const *volumes, size_t volume_count)
{
    memset(pc, 0, sizeof *pc);
    pc->listener = -1;
    struct stat st;
    unsigned char id[8];
    if (stat(executable, &st) != 0 || getrandom(id, sizeof id, 0) != (ssize_t)sizeof id ||
        getrandom(pc->token, sizeof pc->token, 0) != (ssize_t)sizeof pc->token)
        return -1;
    pc->exe_dev = st.st_dev;
    pc->exe_ino = st.st_ino;
    char hex[17];
    hex_encode(id, sizeof id, hex);
    snprintf(pc->name, sizeof pc->name, "sconify-cache-%s", hex);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(pc->name);
    memcpy(addr.sun_path + 1, pc->name, len);  /* abstract: nothing on disk */
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) != 0 ||
        listen(fd, 64) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    pc->volumes = calloc(volume_count ? volume_count : 1, sizeof *pc->volumes);
    if (!pc->volumes) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    for (size_t i = 0; i < volume_count; i++) pc->volumes[i] = strdup(volumes[i]);
    pc->volume_count = volume_count;
    pc->listener = fd;
    return 0;
}

size_t plaincache_pollfds(const struct plaincache *pc, struct pollfd *fds)
{
    size_t n = 0;
    if (pc->listener < 0) return 0;
    fds[n++] = (struct pollfd){.fd = pc->listener, .events = POLLIN};
    for (size_t i = 0; i < pc->client_count; i++) fds[n++] = (struct pollfd){.fd = pc->clients[i], .events = POLLIN};
    return n;
}

/* Only the measured executable is served (its token is checked on every request as well). */
static int measured_peer(const struct plaincache *pc, int fd)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    char exe[64];
    struct stat st;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0) return 0;
    snprintf(exe, sizeof exe, "/proc/%d/exe", (int)cred.pid);
    return stat(exe, &st) == 0 && st.st_dev == pc->exe_dev && st.st_ino == pc->exe_ino;
}

static void accept_clients(struct plaincache *pc)
{
    for (;;) {
        int fd = accept4(pc->listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) return;  /* EAGAIN: none left; anything else: the client retries or falls back */
        if (pc->client_count == CACHE_MAX_CLIENTS || !measured_peer(pc, fd)) {
            close(fd);  /* the client sees the connection closed: it keeps a private copy */
            continue;
        }
        pc->clients[pc->client_count++] = fd;
    }
}

/* A path the cache serves: absolute, normalised, strictly inside one of the volumes. */
static int served_path(const struct plaincache *pc, const char *path)
{
    if (path[0] != '/' || strstr(path, "//") || strstr(path, "/./") || strstr(path, "/../")) return 0;
    size_t n = strlen(path);
    if (path[n - 1] == '/' || (n >= 2 && strcmp(path + n - 2, "/.") == 0) || (n >= 3 && strcmp(path + n - 3, "/..") == 0))
        return 0;
    for (size_t i = 0; i < pc->volume_count; i++) {
        const char *v = pc->volumes[i];
        size_t len = strcmp(v, "/") == 0 ? 0 : strlen(v);
        if (strncmp(path, v, len) == 0 && path[len] == '/' && path[len + 1]) return 1;
    }
    return 0;
}

static struct cache_file *find_file(struct plaincache *pc, const char *path)
{
    for (size_t i = 0; i < pc->file_count; i++)
        if (strcmp(pc->files[i].path, path) == 0) return &pc->files[i];
    return NULL;
}

/* The file whose memfd fd is a description of (the same inode), or NULL. */
static struct cache_file *file_of(struct plaincache *pc, int fd)
{
    struct stat st, held;
    if (fstat(fd, &st) != 0) return NULL;
    for (size_t i = 0; i < pc->file_count; i++)
        if (fstat(pc->files[i].fd, &held) == 0 && held.st_dev == st.st_dev && held.st_ino == st.st_ino) return &pc->files[i];
    return NULL;
}

static void drop_file(struct plaincache *pc, struct cache_file *f)
{
    close(f->fd);
    free(f->path);
    *f = pc->files[--pc->file_count];
}

/* Nobody else holds f's memfd: a write lease can be taken only when no other open file
 * description of it exists (the launcher's own is read-only; a process's mapping keeps its
 * description alive). A lease that cannot be taken for another reason (EACCES: the memfd
 * belongs to another user) counts as held. */
static int unheld(const struct cache_file *f)
{
    if (fcntl(f->fd, F_SETLEASE, F_WRLCK) != 0) return 0;
    fcntl(f->fd, F_SETLEASE, F_UNLCK);
    return 1;
}

void plaincache_sweep(struct plaincache *pc)
{
    for (size_t i = 0; i < pc->file_count;)
        if (unheld(&pc->files[i])) drop_file(pc, &pc->files[i]);
        else i++;
}

/* A new open file description of f's memfd, with the access mode (and O_APPEND) asked for. */
static int reopen(const struct cache_file *f, int flags)
{
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", f->fd);
    return open(proc, (flags & O_ACCMODE) | (flags & O_APPEND) | O_CLOEXEC);
}

/* The memfd a process decrypted: kept if it is a writable memfd (its read-only description is
 * what the table holds). */
static struct cache_file *adopt(struct plaincache *pc, const char *path, int fd, int *status)
{
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW))) {
        *status = EINVAL;  /* not a memfd, or one that cannot be shared for writing */
        return NULL;
    }
    if (pc->file_count == CACHE_MAX_FILES) plaincache_sweep(pc);
    if (pc->file_count == CACHE_MAX_FILES) {
        *status = ENOSPC;
        return NULL;
    }
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int held = open(proc, O_RDONLY | O_CLOEXEC);
    char *copy = strdup(path);
    if (held < 0 || !copy) {
        if (held >= 0) close(held);
        free(copy);
        *status = ENOMEM;
        return NULL;
    }
    struct cache_file *f = &pc->files[pc->file_count++];
    f->path = copy;
    f->fd = held;
    return f;
}

/* One request from a client: 0, or -1 to drop the client. */
static int answer(struct plaincache *pc, int client)
{
    struct cache_request req;
    union cache_control control;
    struct iovec iov = {.iov_base = &req, .iov_len = sizeof req};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
    ssize_t n = recvmsg(client, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n <= 0) return -1;
    int passed = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (passed < 0) passed = fd;
                else close(fd);
            }
        }
    size_t head = offsetof(struct cache_request, path);
    int ok = (size_t)n > head && !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) &&
             CRYPTO_memcmp(req.token, pc->token, sizeof req.token) == 0 && memchr(req.path, '\0', (size_t)n - head);
    struct cache_reply reply = {.status = 0};
    size_t reply_len = offsetof(struct cache_reply, path);
    int out = -1;
    if (!ok) {
        if (passed >= 0) close(passed);
        return -1;  /* not a granted process of the service: no answer */
    }
    OPENSSL_cleanse(req.token, sizeof req.token);
    if (req.op == CACHE_WHICH) {
        /* a descriptor another process of the service passed to this one (SCM_RIGHTS) */
        struct cache_file *f = passed >= 0 ? file_of(pc, passed) : NULL;
        reply.status = f ? 0 : ENOENT;
        if (f) {
            size_t len = strlen(f->path);
            memcpy(reply.path, f->path, len + 1);
            reply_len += len + 1;
        }
    } else if (!served_path(pc, req.path)) {
        reply.status = EACCES;
    } else if (req.op == CACHE_FORGET) {
        struct cache_file *f = find_file(pc, req.path);
        if (f) drop_file(pc, f);
    } else if (req.op == CACHE_OPEN) {
        struct cache_file *f = find_file(pc, req.path);
        if (f && unheld(f)) {
            /* nobody has it open: what is stored is the file (a chmod or utime by path changed
             * it there), the caller reads it again */
            drop_file(pc, f);
            f = NULL;
        }
        if (!f && passed >= 0) f = adopt(pc, req.path, passed, &reply.status);
        else if (!f) reply.status = ENOENT;
        if (f && (out = reopen(f, req.flags)) < 0) reply.status = errno;
    } else {
        reply.status = EINVAL;
    }
    if (passed >= 0) close(passed);
    struct iovec riov = {.iov_base = &reply, .iov_len = reply_len};
    struct msghdr rmsg = {.msg_iov = &riov, .msg_iovlen = 1};
    union cache_control rcontrol;
    if (out >= 0) cache_attach_fd(&rmsg, &rcontrol, out);
    /* A client that does not take its answer at once (its queue full) is dropped, never waited for. */
    ssize_t sent = sendmsg(client, &rmsg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (out >= 0) close(out);
    return sent == (ssize_t)reply_len ? 0 : -1;
}

void plaincache_serve(struct plaincache *pc, const struct pollfd *fds, size_t count)
{
    if (pc->listener < 0 || !count) return;
    /* fds[0] is the listener, fds[1..] the clients as they were when polled */
    int drop[CACHE_MAX_CLIENTS];
    size_t ndrop = 0;
    for (size_t i = 1; i < count; i++) {
        if (!fds[i].revents) continue;
        int gone = (fds[i].revents & (POLLERR | POLLNVAL)) != 0;
        /* a few requests per wake-up, so that one busy client cannot starve the others */
        for (int k = 0; !gone && k < 8 && (fds[i].revents & (POLLIN | POLLHUP)); k++) {
            if (answer(pc, fds[i].fd) < 0) gone = 1;
            struct pollfd again = {.fd = fds[i].fd, .events = POLLIN};
            if (!gone && (poll(&again, 1, 0) != 1 || !(again.revents & POLLIN))) break;
        }
        if (gone) drop[ndrop++] = fds[i].fd;
    }
    for (size_t d = 0; d < ndrop; d++)
        for (size_t i = 0; i < pc->client_count; i++)
            if (pc->clients[i] == drop[d]) {
                close(pc->clients[i]);
                pc->clients[i] = pc->clients[--pc->client_count];
                break;
            }
    if (fds[0].revents & POLLIN) accept_clients(pc);
}
