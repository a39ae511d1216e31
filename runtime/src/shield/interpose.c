/* The exported libc entry points (except directories, dirs.c, and dlopen, embedded.c): each
 * one asks the piece that serves the path (embedded.c, volumes.c, tracked.c), or calls the
 * real function, with the path resolved through embedded symlinks when that changed it. */
#include <stdarg.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "shield.h"

/* ------------------------------------------------------------------ open */

static int is_write_open(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
}

/* -2: not ours, call the real function with t->path */
/* A bare code root that is a real directory (paths.c), opened: as a directory only, and only
 * if it still is where its path says (no file or symlink swapped in since it was looked at:
 * openat() relative to the fd must name paths below the root, which stay sealed). */
static int open_bare_root(const char *path, int flags)
{
    int fd = RESOLVE(openat)(AT_FDCWD, path, flags | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0) return -1;
    char real[PATH_MAX];
    if (fd_path(fd, real, sizeof real) == 0 && strcmp(real, path) == 0) return fd;
    RESOLVE(close)(fd);
    errno = ENOENT;
    return -1;
}

static int shield_open(int dirfd, const char *path, int flags, mode_t mode, struct target *t)
{
    if (!ACTIVE() || !path || target_of(dirfd, path, !(flags & O_NOFOLLOW), t) != 0) return -2;
    if (t->kind == T_INJ && t->inj) {  /* read-only, as a secret mount is (injected.c) */
        int refused = dir_syntax(path) || (flags & O_DIRECTORY) ? ENOTDIR
                    : (flags & O_CREAT) && (flags & O_EXCL) ? EEXIST
                    : (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) ? EROFS : 0;
        if (!refused) return open_injected(t->inj, flags);
        errno = refused;
        return -1;
    }
    if (t->kind == T_INJ) return -2;  /* a directory on the way: what the disk has */
    if (t->kind == T_SEALED || (t->in_code && t->kind == T_PASS && is_write_open(flags))) {
        errno = is_write_open(flags) ? EROFS : ENOENT;  /* code roots hold the measured code only */
        return -1;
    }
    if (t->kind == T_PASS && t->bare_root) return open_bare_root(t->path, flags);
    if (S.locked && t->kind == T_PASS && !(flags & (O_DIRECTORY | O_PATH)) && locked_volume_file(t->path)) {
        errno = EACCES;
        return -1;
    }
    if (t->kind == T_PASS && is_write_open(flags) && beside_encrypted_code(t->path)) {
        errno = EACCES;  /* no plaintext written beside encrypted code (embedded.c) */
        return -1;
    }
    struct stat64 st;
    if (t->kind == T_PASS && !(flags & (O_NOFOLLOW | O_DIRECTORY | O_PATH)) && S.nvols &&
        follow_into_region(dirfd, path, t, &st) != 1)
        return -2;  /* (a missing file: the kernel's create or ENOENT) */
    if (t->kind == T_EMB && t->m && t->m->kind == EMBEDFS_FILE && !(flags & O_DIRECTORY)) {
        if (dir_syntax(path)) {
            errno = flags & O_CREAT ? EISDIR : ENOTDIR;
            return -1;
        }
        if (is_write_open(flags)) {
            errno = EROFS;
            return -1;
        }
        if ((flags & O_CREAT) && (flags & O_EXCL)) {
            errno = EEXIST;
            return -1;
        }
        return open_embedded(t->m, t->path, flags & O_CLOEXEC);
    }
    if (t->kind == T_EMB && t->m && t->m->kind == EMBEDFS_SYMLINK && (flags & O_NOFOLLOW)) {
        errno = ELOOP;
        return -1;
    }
    if (t->kind == T_VOL && t->vol->ephemeral && (flags & O_TMPFILE) == O_TMPFILE) return open_anonymous(t, flags);
    if (t->kind == T_VOL && !(flags & (O_DIRECTORY | O_PATH)) && !reserved_name(t->vol, base_name(t->path)) &&
        strcmp(t->path, t->vol->v->path) != 0)
        return dir_syntax(path) ? region_dir_syntax(t, flags) : open_volume_file(t, flags, mode);
    return -2;
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_BODY(realname, dirfd, ...)                                               \
    struct target t;                                                                  \
    t.changed = 0;                                                                    \
    int fd = shield_open(dirfd, path, flags, mode, &t);                               \
    if (fd != -2) return fd;                                                          \
    return RESOLVE(realname)(__VA_ARGS__);

EXPORT int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    OPEN_BODY(open, AT_FDCWD, PATH_OR_RESOLVED, flags, mode)
}

EXPORT int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    OPEN_BODY(open64, AT_FDCWD, PATH_OR_RESOLVED, flags, mode)
}

EXPORT int __open_2(const char *path, int flags) { return open(path, flags); }
EXPORT int __open64_2(const char *path, int flags) { return open64(path, flags); }

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    OPEN_BODY(openat, dirfd, dirfd, PATH_OR_RESOLVED, flags, mode)
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    OPEN_BODY(openat64, dirfd, dirfd, PATH_OR_RESOLVED, flags, mode)
}

EXPORT int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
EXPORT int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }
EXPORT int creat(const char *path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
EXPORT int creat64(const char *path, mode_t mode) { return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

static int fopen_flags(const char *mode)
{
    int flags;
    switch (mode[0]) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: return -1;
    }
    for (const char *c = mode + 1; *c && *c != ','; c++) {
        if (*c == '+') flags = (flags & ~O_ACCMODE) | O_RDWR;
        else if (*c == 'e') flags |= O_CLOEXEC;
        else if (*c == 'x') flags |= O_EXCL;
    }
    return flags;
}

/* Close an fd the shield opened for a stream that did not take it (errno kept). */
static void drop_fd(int fd)
{
    int saved = errno;
    pthread_mutex_lock(&S.lock);
    untrack(fd);
    pthread_mutex_unlock(&S.lock);
    RESOLVE(close)(fd);
    errno = saved;
}

static FILE *shield_fopen(const char *path, const char *mode, fopen_fn real)
{
    struct target t;
    t.changed = 0;
    int flags = mode ? fopen_flags(mode) : -1;
    if (flags < 0 || !ACTIVE()) return real(path, mode);
    int fd = shield_open(AT_FDCWD, path, flags, 0666, &t);
    if (fd == -2) return real(PATH_OR_RESOLVED, mode);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, mode);
    if (!f) drop_fd(fd);
    return f;
}

EXPORT FILE *fopen(const char *path, const char *mode) { return shield_fopen(path, mode, RESOLVE(fopen)); }
EXPORT FILE *fopen64(const char *path, const char *mode) { return shield_fopen(path, mode, (fopen_fn)RESOLVE(fopen64)); }

/* freopen: glibc closes the stream's fd and opens the new path inside itself, past open(). The
 * stream's old file, if tracked, is protected again first (as fclose does). A path the shield
 * serves is opened here; the stream is reopened on /dev/null with the same mode (less 'x': the
 * shield checked it) and its fd replaced by the shield's (as fopen's fdopen of it: the memfd,
 * readable for the commit), its tracking carried over. */
static FILE *shield_freopen(const char *path, const char *mode, FILE *stream, freopen_fn real)
{
    if (!ACTIVE() || !stream) return real(path, mode, stream);
    int old = fileno(stream);
    if (old >= 0 && tracked_fd(old)) {
        int flushed = fflush(stream);
        int rc = flush_tracked(old, 0);
        pthread_mutex_lock(&S.lock);
        untrack(old);
        pthread_mutex_unlock(&S.lock);
        if (rc != 0 || flushed != 0) shield_log("freopen: the stream's earlier file could not be protected again");
    }
    char null_mode[64];
    int flags = path && mode && strlen(mode) < sizeof null_mode ? fopen_flags(mode) : -1;
    if (flags < 0) return real(path, mode, stream);
    struct target t;
    t.changed = 0;
    int fd = shield_open(AT_FDCWD, path, flags, 0666, &t);
    if (fd == -2) return real(PATH_OR_RESOLVED, mode, stream);
    if (fd < 0) {
        int saved = errno;
        fclose(stream);  /* freopen closes the stream when it fails */
        errno = saved;
        return NULL;
    }
    size_t n = 0;
    for (const char *c = mode; *c; c++)
        if (*c != 'x') null_mode[n++] = *c;
    null_mode[n] = 0;
    if (flags & O_APPEND) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_APPEND);
    in_shield++;
    FILE *f = real("/dev/null", null_mode, stream);
    in_shield--;
    if (f && RESOLVE(dup3)(fd, fileno(f), flags & O_CLOEXEC) < 0) {
        int saved = errno;
        fclose(f);
        errno = saved;
        f = NULL;
    }
    if (f) dup_tracked(fd, fileno(f));
    drop_fd(fd);
    return f;
}

EXPORT FILE *freopen(const char *path, const char *mode, FILE *stream)
{
    return shield_freopen(path, mode, stream, RESOLVE(freopen));
}

EXPORT FILE *freopen64(const char *path, const char *mode, FILE *stream)
{
    return shield_freopen(path, mode, stream, (freopen_fn)RESOLVE(freopen64));
}

/* ------------------------------------------------------------------ close, fsync, dup */

EXPORT int close(int fd)
{
    if (S.active && tracked_fd(fd)) return close_tracked(fd);
    return RESOLVE(close)(fd);
}

/* syscall(): C code (a C extension, a library) that calls syscall(SYS_openat, ...) instead of
 * openat() reaches the same shield function as the libc entry point, so a volume file gives its
 * plaintext, an embedded file its measured content, a sealed path ENOENT. libuv (Node.js) closes
 * its files with syscall(SYS_close, fd) (uv__close_nocancel): a tracked memfd closed that way
 * must be protected again like one close() closes. Routed: the calls on a path the shield serves
 * (open, openat, openat2, creat, stat, lstat, newfstatat, access, faccessat(2), readlink(at),
 * unlink(at), rename(at), renameat2, truncate, mkdir(at), execve) and on the fds it tracks
 * (close, dup*, fsync, fdatasync). Everything else, and every call of a process where the shield
 * is passive, is the real syscall(). A routed call returns as syscall() does (-1 and errno). */
static long routed_syscall(long number, const long *a, int *routed)
{
    const char *p0 = (const char *)a[0], *p1 = (const char *)a[1];
    *routed = 1;
    switch (number) {
    case SYS_open: return open64(p0, (int)a[1], (mode_t)a[2]);
    case SYS_openat: return openat64((int)a[0], p1, (int)a[2], (mode_t)a[3]);
    case SYS_creat: return creat64(p0, (mode_t)a[1]);
    case SYS_openat2: {
        const struct open_how *how = (const struct open_how *)a[2];
        if (!how || (size_t)a[3] < sizeof *how) break;
        struct target t;
        t.changed = 0;  /* how->resolve is not applied to what the shield serves */
        int fd = shield_open((int)a[0], p1, (int)how->flags, (mode_t)how->mode, &t);
        if (fd != -2) return fd;
        if (ACTIVE() && t.changed) return RESOLVE(syscall)(SYS_openat2, AT_FDCWD, t.path, a[2], a[3]);
        break;
    }
    case SYS_close:
        if (!tracked_fd((int)a[0])) break;  /* libuv's close without a cancellation point */
        return close_tracked((int)a[0]);
    case SYS_dup: return dup((int)a[0]);
    case SYS_dup2: return dup2((int)a[0], (int)a[1]);
    case SYS_dup3: return dup3((int)a[0], (int)a[1], (int)a[2]);
    case SYS_fsync: return fsync((int)a[0]);
    case SYS_fdatasync: return fdatasync((int)a[0]);
    /* the kernel's struct stat of x86_64 is glibc's struct stat64 */
    case SYS_stat: return stat64(p0, (struct stat64 *)a[1]);
    case SYS_lstat: return lstat64(p0, (struct stat64 *)a[1]);
    case SYS_newfstatat: return fstatat64((int)a[0], p1, (struct stat64 *)a[2], (int)a[3]);
    case SYS_access: return access(p0, (int)a[1]);
    case SYS_faccessat: return faccessat((int)a[0], p1, (int)a[2], 0);
    case SYS_faccessat2: return faccessat((int)a[0], p1, (int)a[2], (int)a[3]);
    case SYS_readlink: return readlink(p0, (char *)a[1], (size_t)a[2]);
    case SYS_readlinkat: return readlinkat((int)a[0], p1, (char *)a[2], (size_t)a[3]);
    case SYS_unlink: return unlink(p0);
    case SYS_unlinkat: return unlinkat((int)a[0], p1, (int)a[2]);
    case SYS_rename: return rename(p0, p1);
    case SYS_renameat: return renameat((int)a[0], p1, (int)a[2], (const char *)a[3]);
    case SYS_renameat2: return renameat2((int)a[0], p1, (int)a[2], (const char *)a[3], (unsigned)a[4]);
    case SYS_truncate: return truncate64(p0, (off64_t)a[1]);
    case SYS_mkdir: return mkdir(p0, (mode_t)a[1]);
    case SYS_mkdirat: return mkdirat((int)a[0], p1, (mode_t)a[2]);
    case SYS_execve: return execve(p0, (char *const *)a[1], (char *const *)a[2]);
    }
    *routed = 0;
    return 0;
}

EXPORT long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (ACTIVE()) {
        int routed;
        long rc = routed_syscall(number, a, &routed);
        if (routed) return rc;
    }
    return RESOLVE(syscall)(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

EXPORT int fclose(FILE *f)
{
    int fd = f ? fileno(f) : -1;
    if (S.active && tracked_fd(fd)) {
        int flushed = fflush(f);
        int rc = flush_tracked(fd, 0);
        int saved = errno;
        pthread_mutex_lock(&S.lock);
        untrack(fd);
        pthread_mutex_unlock(&S.lock);
        int r = RESOLVE(fclose)(f);
        if (rc != 0 || flushed != 0) {
            errno = rc != 0 ? saved : errno;
            return EOF;
        }
        return r;
    }
    return RESOLVE(fclose)(f);
}

/* recvmsg: descriptors another process of the service passed (SCM_RIGHTS) that are files of the
 * shared plaintext cache are tracked here too (cache_adopt_received). */
EXPORT ssize_t recvmsg(int sockfd, struct msghdr *msg, int flags)
{
    ssize_t n = RESOLVE(recvmsg)(sockfd, msg, flags);
    if (n < 0 || !ACTIVE() || !msg || !msg->msg_control || msg->msg_controllen < sizeof(struct cmsghdr)) return n;
    int saved = errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                cache_adopt_received(fd);
            }
    errno = saved;
    return n;
}

/* fsync and fdatasync of a volume file commit it and make the volume durable (volume_sync); of
 * a directory in a volume (SQLite fsyncs the journal's directory), make the volume durable. */
EXPORT int fsync(int fd)
{
    if (S.active && tracked_fd(fd)) return flush_tracked(fd, 1);
    return ACTIVE() ? sync_untracked(fd) : RESOLVE(fsync)(fd);  /* (the shield's own fsyncs: the kernel's) */
}

EXPORT int fdatasync(int fd)
{
    if (S.active && tracked_fd(fd)) return flush_tracked(fd, 1);
    return ACTIVE() ? sync_untracked(fd) : RESOLVE(fdatasync)(fd);
}

/* Extended attributes set or read on a region file's descriptor are the stored file's, as
 * the path calls (which reach the kernel) see them; a commit carries them to the new stored
 * file (commit.c). On the memfd they would be lost at close. */
EXPORT int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)
{
    char path[PATH_MAX];
    if (tracked_stored_path(fd, path, sizeof path)) return setxattr(path, name, value, size, flags);
    return RESOLVE(fsetxattr)(fd, name, value, size, flags);
}

EXPORT ssize_t fgetxattr(int fd, const char *name, void *value, size_t size)
{
    char path[PATH_MAX];
    if (tracked_stored_path(fd, path, sizeof path)) return getxattr(path, name, value, size);
    return RESOLVE(fgetxattr)(fd, name, value, size);
}

EXPORT ssize_t flistxattr(int fd, char *list, size_t size)
{
    char path[PATH_MAX];
    if (tracked_stored_path(fd, path, sizeof path)) return listxattr(path, list, size);
    return RESOLVE(flistxattr)(fd, list, size);
}

EXPORT int fremovexattr(int fd, const char *name)
{
    char path[PATH_MAX];
    if (tracked_stored_path(fd, path, sizeof path)) return removexattr(path, name);
    return RESOLVE(fremovexattr)(fd, name);
}

EXPORT int dup(int fd) { return dup_tracked(fd, RESOLVE(dup)(fd)); }

/* fcntl(F_DUPFD[_CLOEXEC]) is a dup too: CPython's mmap keeps its own copy of the fd that
 * way, and a file resized through the map after the file object was closed must be protected
 * again when that copy is closed. Every other command is passed on with its argument. */
static int shield_fcntl(fcntl_fn real, int fd, int cmd, va_list ap)
{
    void *arg = va_arg(ap, void *);
    int rc = real(fd, cmd, arg);
    if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && rc >= 0 && ACTIVE()) return dup_tracked(fd, rc);
    return rc;
}

EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    int rc = shield_fcntl(RESOLVE(fcntl), fd, cmd, ap);
    va_end(ap);
    return rc;
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    int rc = shield_fcntl((fcntl_fn)RESOLVE(fcntl64), fd, cmd, ap);
    va_end(ap);
    return rc;
}

EXPORT int dup2(int fd, int to)
{
    if (S.active && fd != to && tracked_fd(to)) close(to);
    return dup_tracked(fd, RESOLVE(dup2)(fd, to));
}

EXPORT int dup3(int fd, int to, int flags)
{
    if (S.active && fd != to && tracked_fd(to)) close(to);
    return dup_tracked(fd, RESOLVE(dup3)(fd, to, flags));
}

/* ------------------------------------------------------------------ stat */

/* 0: filled, -1: error (errno), -2: not ours (real call with t->path). */
/* A region file's identity: st_ino is a digest of its path, the same for stat(path) and for
 * fstat of an fd the shield serves it in (the fd is a memfd, with an identity of its own), and
 * stable across commits (each one renames a new stored file into place, a new inode). SQLite
 * compares the two to tell whether its database was moved or deleted while open: without this
 * its default rollback journal failed with "attempt to write a readonly database". The top
 * bits keep it clear of the small numbers real files get. */
static ino64_t region_ino(const char *path)
{
    uint64_t h = 0xcbf29ce484222325ULL;  /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) h = (h ^ *p) * 0x100000001b3ULL;
    return (ino64_t)(h | (3ULL << 62));
}

/* fstat of an fd the shield serves a region file in (tracked: for writing, or for reading
 * only): the file's identity (its volume's device, region_ino of its path), as stat(path)
 * gives; the memfd's size and times. */
static void served_identity(int fd, struct stat64 *st)
{
    if (!ACTIVE() || !S_ISREG(st->st_mode)) return;
    pthread_mutex_lock(&S.lock);
    struct tracked *t = tracked_fd(fd);
    dev_t dev;
    if (t && t->vol && st->st_dev == t->dev && st->st_ino == t->ino && region_device(t->vol, &dev)) {
        st->st_dev = dev;
        st->st_ino = region_ino(t->path);
    }
    pthread_mutex_unlock(&S.lock);
}

static int shield_stat(int dirfd, const char *path, struct stat64 *st, int follow, struct target *t)
{
    if (!ACTIVE() || !path || !*path || target_of(dirfd, path, follow, t) != 0) return -2;
    if (t->kind == T_SEALED) {
        errno = ENOENT;
        return -1;
    }
    if (t->kind == T_INJ) {
        if (t->inj && dir_syntax(path)) {
            errno = ENOTDIR;
            return -1;
        }
        return injected_stat(t, st);
    }
    if (t->kind == T_EMB) {
        if (t->is_dir) {
            in_shield++;
            int rc = stat64(t->path, st);  /* the real directory, when it is there */
            in_shield--;
            if (rc == 0 && S_ISDIR(st->st_mode)) return 0;
        }
        embedded_stat(t, st);
        return 0;
    }
    if (t->kind == T_PASS && follow && S.nvols) {
        int rc = follow_into_region(dirfd, path, t, st);  /* the real stat, or a region's file */
        if (rc != 1) return rc;
    }
    if (t->kind == T_VOL && dir_syntax(path) && strcmp(t->path, t->vol->v->path) != 0) return region_dir_syntax(t, 0);
    if (t->kind == T_VOL) {
        if (follow) {
            pthread_mutex_lock(&S.lock);
            struct fspf_file *rec = fspf_find(&t->vol->fs, t->path);
            int unchecked = rec && rec->protection == FSPF_SYMLINK;  /* its target did not check (logged) */
            pthread_mutex_unlock(&S.lock);
            if (unchecked || t->loop) {
                errno = t->loop ? ELOOP : EIO;
                return -1;
            }
        }
        in_shield++;
        int rc = follow ? stat64(t->path, st) : lstat64(t->path, st);
        in_shield--;
        if (rc != 0) return -1;
        if (t->vol->ephemeral) {
            pthread_mutex_lock(&S.lock);
            int hidden = ephemeral_hidden(t->vol, t->path);
            pthread_mutex_unlock(&S.lock);
            if (hidden) {
                errno = ENOENT;
                return -1;
            }
        }
        if (S_ISREG(st->st_mode)) {
            pthread_mutex_lock(&S.lock);
            volume_refresh(t->vol, 0);  /* what the service's other processes committed */
            struct fspf_file *rec = fspf_find(&t->vol->fs, t->path);
            if (rec) {
                st->st_size = (off_t)rec->size;
                st->st_blocks = (blkcnt_t)((rec->size + 511) / 512);
            }
            pthread_mutex_unlock(&S.lock);
            st->st_ino = region_ino(t->path);
        }
        return 0;
    }
    return -2;
}

#define STAT_BODY(follow, realcall)                                  \
    struct target t;                                                 \
    t.changed = 0;                                                   \
    int rc = shield_stat(AT_FDCWD, path, (struct stat64 *)st, follow, &t); \
    if (rc != -2) return rc;                                         \
    return realcall;

EXPORT int stat(const char *path, struct stat *st) { STAT_BODY(1, RESOLVE(stat)(PATH_OR_RESOLVED, st)) }
EXPORT int stat64(const char *path, struct stat64 *st) { STAT_BODY(1, RESOLVE(stat64)(PATH_OR_RESOLVED, st)) }
EXPORT int lstat(const char *path, struct stat *st) { STAT_BODY(0, RESOLVE(lstat)(PATH_OR_RESOLVED, st)) }
EXPORT int lstat64(const char *path, struct stat64 *st) { STAT_BODY(0, RESOLVE(lstat64)(PATH_OR_RESOLVED, st)) }

EXPORT int fstat(int fd, struct stat *st)
{
    int rc = RESOLVE(fstat)(fd, st);
    if (rc == 0) served_identity(fd, (struct stat64 *)st);
    return rc;
}

EXPORT int fstat64(int fd, struct stat64 *st)
{
    int rc = RESOLVE(fstat64)(fd, st);
    if (rc == 0) served_identity(fd, st);
    return rc;
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    struct target t;
    if (!(flags & AT_EMPTY_PATH) || (path && *path)) {
        int rc = shield_stat(dirfd, path, (struct stat64 *)st, !(flags & AT_SYMLINK_NOFOLLOW), &t);
        if (rc != -2) return rc;
        if (ACTIVE() && t.changed) return RESOLVE(fstatat)(AT_FDCWD, t.path, st, flags);
    }
    int rc = RESOLVE(fstatat)(dirfd, path, st, flags);
    if (rc == 0 && (flags & AT_EMPTY_PATH) && (!path || !*path)) served_identity(dirfd, (struct stat64 *)st);
    return rc;
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    struct target t;
    if (!(flags & AT_EMPTY_PATH) || (path && *path)) {
        int rc = shield_stat(dirfd, path, st, !(flags & AT_SYMLINK_NOFOLLOW), &t);
        if (rc != -2) return rc;
        if (ACTIVE() && t.changed) return RESOLVE(fstatat64)(AT_FDCWD, t.path, st, flags);
    }
    int rc = RESOLVE(fstatat64)(dirfd, path, st, flags);
    if (rc == 0 && (flags & AT_EMPTY_PATH) && (!path || !*path)) served_identity(dirfd, st);
    return rc;
}

/* statx(): glibc's asks the kernel (ENOSYS under the shield's seccomp filter, for libuv) and
 * then emulates it with its internal fstatat64, past stat(): a path the shield serves is
 * answered here from its stat. (syscall(SYS_statx) stays ENOSYS.) */
EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
    struct target t;
    t.changed = 0;
    struct stat64 st;
    int rc = -2;
    if (!(flags & AT_EMPTY_PATH) || (path && *path))
        rc = shield_stat(dirfd, path, &st, !(flags & AT_SYMLINK_NOFOLLOW), &t);
    else if (ACTIVE())
        rc = fstat64(dirfd, &st);  /* an fd's: a served region file's identity (served_identity) */
    if (rc == -1) return -1;
    if (rc == -2) {
        if (ACTIVE() && t.changed) return RESOLVE(statx)(AT_FDCWD, t.path, flags, mask, stx);
        return RESOLVE(statx)(dirfd, path, flags, mask, stx);
    }
    memset(stx, 0, sizeof *stx);
    stx->stx_mask = STATX_BASIC_STATS;
    stx->stx_blksize = (unsigned)st.st_blksize;
    stx->stx_nlink = (unsigned)st.st_nlink;
    stx->stx_uid = st.st_uid;
    stx->stx_gid = st.st_gid;
    stx->stx_mode = (unsigned short)st.st_mode;
    stx->stx_ino = st.st_ino;
    stx->stx_size = (unsigned long long)st.st_size;
    stx->stx_blocks = (unsigned long long)st.st_blocks;
    stx->stx_atime = (struct statx_timestamp){.tv_sec = st.st_atim.tv_sec, .tv_nsec = (unsigned)st.st_atim.tv_nsec};
    stx->stx_mtime = (struct statx_timestamp){.tv_sec = st.st_mtim.tv_sec, .tv_nsec = (unsigned)st.st_mtim.tv_nsec};
    stx->stx_ctime = (struct statx_timestamp){.tv_sec = st.st_ctim.tv_sec, .tv_nsec = (unsigned)st.st_ctim.tv_nsec};
    stx->stx_rdev_major = major(st.st_rdev);
    stx->stx_rdev_minor = minor(st.st_rdev);
    stx->stx_dev_major = major(st.st_dev);
    stx->stx_dev_minor = minor(st.st_dev);
    return 0;
}

/* The pre-2.33 glibc entry points, for executables built against an older glibc. */
EXPORT int __xstat(int ver, const char *path, struct stat *st) { (void)ver; return stat(path, st); }
EXPORT int __xstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return stat64(path, st); }
EXPORT int __fxstat(int ver, int fd, struct stat *st) { (void)ver; return fstat(fd, st); }
EXPORT int __fxstat64(int ver, int fd, struct stat64 *st) { (void)ver; return fstat64(fd, st); }
EXPORT int __lxstat(int ver, const char *path, struct stat *st) { (void)ver; return lstat(path, st); }
EXPORT int __lxstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return lstat64(path, st); }
EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
    (void)ver;
    return fstatat(dirfd, path, st, flags);
}
EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
    (void)ver;
    return fstatat64(dirfd, path, st, flags);
}

static int shield_access(int dirfd, const char *path, int amode, int flags, struct target *t)
{
    struct stat64 st;
    int rc = shield_stat(dirfd, path, &st, !(flags & AT_SYMLINK_NOFOLLOW), t);
    if (rc == 0 && t->kind == T_INJ && st.st_dev != FAKE_DEV) return -2;  /* a directory on disk: the real access */
    if (rc == -2 || (t->kind != T_EMB && t->kind != T_INJ)) return rc == -1 ? -1 : -2;
    if (amode & W_OK) {
        errno = EROFS;
        return -1;
    }
    if ((amode & X_OK) && !(st.st_mode & 0111)) {
        errno = EACCES;
        return -1;
    }
    return 0;
}

EXPORT int access(const char *path, int amode)
{
    struct target t;
    int rc = shield_access(AT_FDCWD, path, amode, 0, &t);
    if (rc != -2) return rc;
    return RESOLVE(access)(PATH_OR_RESOLVED, amode);
}

EXPORT int faccessat(int dirfd, const char *path, int amode, int flags)
{
    struct target t;
    int rc = shield_access(dirfd, path, amode, flags, &t);
    if (rc != -2) return rc;
    if (ACTIVE() && t.changed) return RESOLVE(faccessat)(AT_FDCWD, t.path, amode, flags);
    return RESOLVE(faccessat)(dirfd, path, amode, flags);
}

static ssize_t shield_readlink(int dirfd, const char *path, char *buf, size_t len, struct target *t)
{
    if (!ACTIVE() || !path || target_of(dirfd, path, 0, t) != 0) return -2;
    if (t->kind == T_SEALED) {
        errno = ENOENT;
        return -1;
    }
    if (t->kind == T_VOL) {
        pthread_mutex_lock(&S.lock);
        struct fspf_file *rec = fspf_find(&t->vol->fs, t->path);
        char link[PATH_MAX];
        ssize_t n = -2;
        if (rec && rec->protection == FSPF_SYMLINK) {  /* the target the service wrote, checked */
            n = region_link(t->vol, rec, NULL, link, sizeof link);
            if (n > 0) memcpy(buf, link, (size_t)n < len ? (size_t)n : len);
            if (n > 0 && (size_t)n > len) n = (ssize_t)len;
        } else if (rec) {
            errno = EINVAL;  /* a file */
            n = -1;
        } else if (ephemeral_hidden(t->vol, t->path)) {
            errno = ENOENT;  /* not this process's */
            n = -1;
        }
        pthread_mutex_unlock(&S.lock);
        return n;
    }
    if (t->kind == T_INJ && t->inj) {
        errno = EINVAL;  /* a file */
        return -1;
    }
    if (t->kind != T_EMB) return -2;
    if (!t->m || t->m->kind != EMBEDFS_SYMLINK) {
        errno = EINVAL;
        return -1;
    }
    size_t n = t->m->link_len < len ? t->m->link_len : len;
    memcpy(buf, t->m->link, n);
    return (ssize_t)n;
}

EXPORT ssize_t readlink(const char *path, char *buf, size_t len)
{
    struct target t;
    ssize_t rc = shield_readlink(AT_FDCWD, path, buf, len, &t);
    if (rc != -2) return rc;
    return RESOLVE(readlink)(PATH_OR_RESOLVED, buf, len);
}

EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t len)
{
    struct target t;
    ssize_t rc = shield_readlink(dirfd, path, buf, len, &t);
    if (rc != -2) return rc;
    if (ACTIVE() && t.changed) return RESOLVE(readlinkat)(AT_FDCWD, t.path, buf, len);
    return RESOLVE(readlinkat)(dirfd, path, buf, len);
}

EXPORT char *realpath(const char *path, char *resolved)
{
    struct target t;
    if (!ACTIVE() || !path || target_of(AT_FDCWD, path, 1, &t) != 0 ||
        (t.kind != T_EMB && t.kind != T_SEALED && !(t.kind == T_INJ && t.inj)))
        return RESOLVE(realpath)(ACTIVE() && path && t.changed ? t.path : path, resolved);
    if (t.kind == T_SEALED) {
        errno = ENOENT;
        return NULL;
    }
    if (!resolved && !(resolved = malloc(PATH_MAX))) return NULL;
    snprintf(resolved, PATH_MAX, "%s", t.path);
    return resolved;
}

/* ------------------------------------------------------------------ truncate */

static int truncate_path(const char *path, off64_t length, int large)
{
    struct target t;
    t.changed = 0;
    if (ACTIVE() && S.ninjected && path && target_of(AT_FDCWD, path, 1, &t) == 0 && t.kind == T_INJ && t.inj) {
        errno = EROFS;  /* an injection file is read-only (injected.c) */
        return -1;
    }
    t.changed = 0;
    int rc = shield_truncate(path, length, &t);
    if (rc != -2) return rc;
    return large ? RESOLVE(truncate64)(PATH_OR_RESOLVED, length) : RESOLVE(truncate)(PATH_OR_RESOLVED, length);
}

EXPORT int truncate(const char *path, off_t length) { return truncate_path(path, length, 0); }
EXPORT int truncate64(const char *path, off64_t length) { return truncate_path(path, length, 1); }

/* ------------------------------------------------------------------ mkdir */

/* A code root is read-only: CPython's mkdir of a __pycache__ there fails (and it then writes
 * no bytecode, silently). 0/-1 (errno), or -2: not ours. */
static int shield_mkdir(int dirfd, const char *path, struct target *t)
{
    if (!ACTIVE() || !path || target_of(dirfd, path, 0, t) != 0) return -2;
    if (t->kind == T_EMB || t->kind == T_INJ) {  /* (an injection file or a directory on the way: there) */
        errno = EEXIST;
        return -1;
    }
    if (t->kind == T_SEALED && !t->bare_root) {  /* a bare code root may be made (paths.c) */
        errno = EROFS;
        return -1;
    }
    return -2;
}

EXPORT int mkdir(const char *path, mode_t mode)
{
    struct target t;
    t.changed = 0;
    int rc = shield_mkdir(AT_FDCWD, path, &t);
    if (rc != -2) return rc;
    return RESOLVE(mkdir)(PATH_OR_RESOLVED, mode);
}

EXPORT int mkdirat(int dirfd, const char *path, mode_t mode)
{
    struct target t;
    t.changed = 0;
    int rc = shield_mkdir(dirfd, path, &t);
    if (rc != -2) return rc;
    if (ACTIVE() && t.changed) return RESOLVE(mkdirat)(AT_FDCWD, t.path, mode);
    return RESOLVE(mkdirat)(dirfd, path, mode);
}

/* ------------------------------------------------------------------ unlink, rename */

/* Under a code root nothing is removed or renamed: 0 if path is not there (sealed: ENOENT) or
 * is a file left there (EROFS), with errno set; 1 otherwise. */
static int code_root_allows(int dirfd, const char *path)
{
    struct target t;
    if (!ACTIVE() || (!S.cfg.code_root_count && !S.ninjected) || !path || target_of(dirfd, path, 0, &t) != 0) return 1;
    if (t.kind == T_INJ && t.inj) {  /* an injection file is read-only (injected.c) */
        errno = EROFS;
        return 0;
    }
    if (t.kind == T_SEALED || (t.kind == T_PASS && t.in_code)) {
        errno = t.kind == T_SEALED ? ENOENT : EROFS;
        return 0;
    }
    return 1;
}

EXPORT int unlink(const char *path)
{
    struct target t;
    if (!code_root_allows(AT_FDCWD, path)) return -1;
    int rc = shield_unlink(AT_FDCWD, path, 0, &t);
    if (rc != -2) return rc;
    return RESOLVE(unlink)(PATH_OR_RESOLVED);
}

EXPORT int unlinkat(int dirfd, const char *path, int flags)
{
    struct target t;
    if (!code_root_allows(dirfd, path)) return -1;
    int rc = shield_unlink(dirfd, path, flags, &t);
    if (rc != -2) return rc;
    if (ACTIVE() && t.changed) return RESOLVE(unlinkat)(AT_FDCWD, t.path, flags);
    return RESOLVE(unlinkat)(dirfd, path, flags);
}

EXPORT int rmdir(const char *path)
{
    struct target t;
    int rc = shield_unlink(AT_FDCWD, path, AT_REMOVEDIR, &t);
    if (rc != -2) return rc;
    return RESOLVE(rmdir)(PATH_OR_RESOLVED);
}

/* remove(): glibc's calls its internal unlinkat, past unlinkat(); the same steps through ours. */
EXPORT int remove(const char *path)
{
    if (unlinkat(AT_FDCWD, path, 0) == 0) return 0;
    if (errno != EISDIR) return -1;
    return unlinkat(AT_FDCWD, path, AT_REMOVEDIR);
}

EXPORT int rename(const char *oldpath, const char *newpath)
{
    if (!code_root_allows(AT_FDCWD, oldpath)) return -1;
    if (!code_root_allows(AT_FDCWD, newpath)) {
        errno = EROFS;
        return -1;
    }
    int rc = shield_rename(AT_FDCWD, oldpath, AT_FDCWD, newpath);
    return rc != -2 ? rc : RESOLVE(rename)(oldpath, newpath);
}

EXPORT int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    if (!code_root_allows(olddirfd, oldpath)) return -1;
    if (!code_root_allows(newdirfd, newpath)) {
        errno = EROFS;
        return -1;
    }
    int rc = shield_rename(olddirfd, oldpath, newdirfd, newpath);
    return rc != -2 ? rc : RESOLVE(renameat)(olddirfd, oldpath, newdirfd, newpath);
}

/* RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT: the shield cannot do them atomically in a
 * region (a file there is its fspf record as well as its stored file): EINVAL, the answer of a
 * file system without them; embedded: EROFS. Without flags, renameat. */
EXPORT int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)
{
    if (!flags) return renameat(olddirfd, oldpath, newdirfd, newpath);
    if (!code_root_allows(olddirfd, oldpath)) return -1;
    if (!code_root_allows(newdirfd, newpath)) {
        errno = EROFS;
        return -1;
    }
    struct target from, to;
    if (ACTIVE() && oldpath && newpath && target_of(olddirfd, oldpath, 0, &from) == 0 &&
        target_of(newdirfd, newpath, 0, &to) == 0 && (from.kind != T_PASS || to.kind != T_PASS)) {
        errno = from.kind == T_EMB || to.kind == T_EMB ? EROFS : EINVAL;
        return -1;
    }
    return RESOLVE(renameat2)(olddirfd, oldpath, newdirfd, newpath, flags);
}

/* ------------------------------------------------------------------ statvfs */

/* statvfs of embedded code (shutil.disk_usage(__file__)): the file system of its deepest
 * directory on disk, where the file would be; a sealed path is not there. -2: not ours. */
static int shield_statvfs(const char *path, char *dir)
{
    struct target t;
    if (!ACTIVE() || !path || target_of(AT_FDCWD, path, 1, &t) != 0 || (t.kind != T_EMB && t.kind != T_SEALED)) return -2;
    if (t.kind == T_SEALED) {
        errno = ENOENT;
        return -1;
    }
    strcpy(dir, t.path);
    for (;;) {
        struct stat64 st;
        in_shield++;
        int there = stat64(dir, &st) == 0 && S_ISDIR(st.st_mode);
        in_shield--;
        char *slash = strrchr(dir, '/');
        if (there || !slash || slash == dir) {
            if (!there) strcpy(dir, "/");
            return 0;
        }
        *slash = '\0';
    }
}

EXPORT int statvfs(const char *path, struct statvfs *buf)
{
    char dir[PATH_MAX];
    int rc = shield_statvfs(path, dir);
    return rc == -2 ? RESOLVE(statvfs)(path, buf) : rc < 0 ? rc : RESOLVE(statvfs)(dir, buf);
}

EXPORT int statvfs64(const char *path, struct statvfs64 *buf)
{
    char dir[PATH_MAX];
    int rc = shield_statvfs(path, dir);
    return rc == -2 ? RESOLVE(statvfs64)(path, buf) : rc < 0 ? rc : RESOLVE(statvfs64)(dir, buf);
}

/* ------------------------------------------------------------------ symlink, link */

EXPORT int symlink(const char *target, const char *path)
{
    int rc = shield_symlink(target, AT_FDCWD, path);
    return rc != -2 ? rc : RESOLVE(symlink)(target, path);
}

EXPORT int symlinkat(const char *target, int dirfd, const char *path)
{
    int rc = shield_symlink(target, dirfd, path);
    return rc != -2 ? rc : RESOLVE(symlinkat)(target, dirfd, path);
}

EXPORT int link(const char *oldpath, const char *newpath)
{
    int rc = shield_link(AT_FDCWD, oldpath, AT_FDCWD, newpath, 0);
    return rc != -2 ? rc : RESOLVE(link)(oldpath, newpath);
}

EXPORT int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
{
    int rc = shield_link(olddirfd, oldpath, newdirfd, newpath, flags);
    return rc != -2 ? rc : RESOLVE(linkat)(olddirfd, oldpath, newdirfd, newpath, flags);
}

/* ------------------------------------------------------------------ mkstemp, tmpfile */

EXPORT int mkstemp(char *tmpl) { return shield_mkostemps(tmpl, 0, 0, 0); }
EXPORT int mkstemp64(char *tmpl) { return shield_mkostemps(tmpl, 0, 0, 1); }
EXPORT int mkostemp(char *tmpl, int flags) { return shield_mkostemps(tmpl, 0, flags, 0); }
EXPORT int mkostemp64(char *tmpl, int flags) { return shield_mkostemps(tmpl, 0, flags, 1); }
EXPORT int mkstemps(char *tmpl, int suffixlen) { return shield_mkostemps(tmpl, suffixlen, 0, 0); }
EXPORT int mkstemps64(char *tmpl, int suffixlen) { return shield_mkostemps(tmpl, suffixlen, 0, 1); }
EXPORT int mkostemps(char *tmpl, int suffixlen, int flags) { return shield_mkostemps(tmpl, suffixlen, flags, 0); }
EXPORT int mkostemps64(char *tmpl, int suffixlen, int flags) { return shield_mkostemps(tmpl, suffixlen, flags, 1); }

EXPORT FILE *tmpfile(void) { return shield_tmpfile(0); }
EXPORT FILE *tmpfile64(void) { return shield_tmpfile(1); }

