/* The shield's side of the shared plaintext cache (plaincache.h): a connection to the launcher
 * per process (a forked child connects again: a connection shared with its parent would mix
 * their answers), one request per open of a volume file and per unlink or rename of one. Every
 * call is made with S.lock held, so the requests of a process's threads never interleave. */
#include <sys/socket.h>
#include <sys/un.h>

#include <openssl/crypto.h>

#include "plaincache.h"
#include "shield.h"

/* The connection: its fd, the process that made it and the socket's inode (a number the
 * service closed and reused for another file is never written to). */
static int conn = -1;
static pid_t conn_pid;
static ino_t conn_ino;

/* The lowest fd number the connection takes: out of the way of the numbers the service expects. */
#define CONN_FD_MIN 700

static int connected(void)
{
    struct stat64 st;
    if (conn >= 0 && conn_pid == getpid() && RESOLVE(fstat64)(conn, &st) == 0 && S_ISSOCK(st.st_mode) &&
        st.st_ino == conn_ino)
        return conn;
    if (conn >= 0 && conn_pid != getpid() && RESOLVE(fstat64)(conn, &st) == 0 && st.st_ino == conn_ino)
        RESOLVE(close)(conn);  /* the parent's, inherited by fork: the parent keeps its own */
    conn = -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(S.cache_socket);
    if (len + 1 >= sizeof addr.sun_path) return -1;
    memcpy(addr.sun_path + 1, S.cache_socket, len);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&addr, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) != 0) {
        RESOLVE(close)(fd);
        return -1;
    }
    int high = RESOLVE(fcntl)(fd, F_DUPFD_CLOEXEC, CONN_FD_MIN);
    if (high >= 0) {
        RESOLVE(close)(fd);
        fd = high;
    }
    if (RESOLVE(fstat64)(fd, &st) != 0) {
        RESOLVE(close)(fd);
        return -1;
    }
    conn = fd;
    conn_pid = getpid();
    conn_ino = st.st_ino;
    return conn;
}

static void disconnect(void)
{
    if (conn >= 0) RESOLVE(close)(conn);
    conn = -1;
}

int cache_enabled(const struct svol *vol)
{
    return S.cache_socket[0] && (!vol->ephemeral || vol->shared);  /* a volume, or this start's shared /tmp */
}

/* One request and its answer: the fd it carries (close-on-exec if cloexec), or -1 with *status
 * (the launcher's: ENOENT not cached, ENOSPC full...; ECONNREFUSED: no launcher to ask). The
 * answer's path, if it has one, goes to answer (PATH_MAX bytes) when that is not NULL. */
static int request(uint32_t op, const char *path, int flags, int send_fd, int cloexec, int *status, char *answer)
{
    *status = ECONNREFUSED;
    size_t plen = strlen(path);
    if (plen >= PATH_MAX) return -1;
    in_shield++;
    int fd = connected(), out = -1;
    if (fd < 0) {
        in_shield--;
        return -1;
    }
    struct cache_request req;
    req.op = op;
    req.flags = flags;
    memcpy(req.token, S.cache_token, sizeof req.token);
    memcpy(req.path, path, plen + 1);
    struct iovec iov = {.iov_base = &req, .iov_len = offsetof(struct cache_request, path) + plen + 1};
    union cache_control control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (send_fd >= 0) cache_attach_fd(&msg, &control, send_fd);
    ssize_t n;
    while ((n = sendmsg(fd, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {}
    OPENSSL_cleanse(req.token, sizeof req.token);
    struct cache_reply reply;
    struct iovec riov = {.iov_base = &reply, .iov_len = sizeof reply};
    struct msghdr rmsg = {.msg_iov = &riov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
    if (n >= 0) {
        memset(&control, 0, sizeof control);
        while ((n = recvmsg(fd, &rmsg, cloexec ? MSG_CMSG_CLOEXEC : 0)) < 0 && errno == EINTR) {}
    }
    size_t head = offsetof(struct cache_reply, path);
    if (n < (ssize_t)head || (n > (ssize_t)head && !memchr(reply.path, '\0', (size_t)n - head))) {
        disconnect();  /* the launcher dropped this process: private copies from now on */
        S.cache_socket[0] = '\0';
        in_shield--;
        return -1;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&rmsg); c; c = CMSG_NXTHDR(&rmsg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int)))
            memcpy(&out, CMSG_DATA(c), sizeof out);
    *status = out >= 0 ? 0 : reply.status;
    if (answer) {
        if (n > (ssize_t)head) memcpy(answer, reply.path, (size_t)n - head);
        else answer[0] = '\0';
    }
    in_shield--;
    return out;
}

int cache_open(const char *path, int flags, int plain_fd, int *status)
{
    int fd = request(CACHE_OPEN, path, flags, plain_fd, !!(flags & O_CLOEXEC), status, NULL);
    if (fd < 0 && *status == 0) *status = EIO;  /* an answer without the fd it promised */
    return fd;
}

void cache_forget(const struct svol *vol, const char *path)
{
    int status;
    if (cache_enabled(vol)) request(CACHE_FORGET, path, 0, -1, 1, &status, NULL);
}

/* Descriptors received from another process (recvmsg, SCM_RIGHTS): one that is a description
 * of a file of the shared cache (multiprocessing's send_handle of an open volume file) is that
 * file here too, so this process's close protects what it wrote, as the sender's does. */
void cache_adopt_received(int fd)
{
    struct stat64 st;
    char path[PATH_MAX];
    int status;
    if (!S.cache_socket[0] || tracked_fd(fd) || RESOLVE(fstat64)(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink)
        return;  /* not an unlinked regular file: no memfd */
    request(CACHE_WHICH, "", 0, fd, 1, &status, path);
    struct svol *vol = status == 0 && path[0] ? volume_of(path) : NULL;
    if (!vol || !cache_enabled(vol)) return;
    int flags = RESOLVE(fcntl)(fd, F_GETFL);
    pthread_mutex_lock(&S.lock);
    (flags >= 0 && (flags & O_ACCMODE) == O_RDONLY ? track_reader : track)(fd, vol, path);
    pthread_mutex_unlock(&S.lock);
}

/* At start: descriptors this process inherited across its exec that are files of the shared
 * cache (a file action of posix_spawn, a shell's redirection, a parent that opened a file for
 * its child's stdout) are its files too, so what it writes through them is committed at its
 * close or exit, as the opener's writes would be (CPython's test_posix test_open_file: the
 * spawned child's stdout opened by the spawn, nobody else holding it). */
void cache_adopt_inherited(void)
{
    if (!S.cache_socket[0]) return;
    in_shield++;
    DIR *d = RESOLVE(opendir)("/proc/self/fd");
    in_shield--;
    if (!d) return;
    int fds[256], n = 0, self = dirfd(d);
    struct dirent64 *e;
    while (n < (int)(sizeof fds / sizeof *fds) && (e = RESOLVE(readdir64)(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (!*end && e->d_name[0] != '.' && fd != self) fds[n++] = (int)fd;
    }
    RESOLVE(closedir)(d);
    for (int i = 0; i < n; i++) cache_adopt_received(fds[i]);
}
