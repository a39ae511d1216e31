/* The exported libc entry points (except directories, dirs.c, and dlopen, embedded.c): each
 * one asks the piece that serves the path (embedded.c, volumes.c, tracked.c), or calls the
 * real function, with the path resolved through embedded symlinks when that changed it. */
#include <stdarg.h>
#include <sys/syscall.h>

#include "shield.h"

/* ------------------------------------------------------------------ open */

static int is_write_open(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
}

/* -2: not ours, call the real function with t->path */
static int shield_open(int dirfd, const char *path, int flags, mode_t mode, struct target *t)
{
    if (!ACTIVE() || !path || target_of(dirfd, path, !(flags & O_NOFOLLOW), t) != 0) return -2;
    if (t->kind == T_SEALED || (t->in_code && t->kind == T_PASS && is_write_open(flags))) {
        errno = is_write_open(flags) ? EROFS : ENOENT;  /* code roots hold the measured code only */
        return -1;
    }
    if (S.locked && t->kind == T_PASS && !(flags & (O_DIRECTORY | O_PATH)) && locked_volume_file(t->path)) {
        errno = EACCES;
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
    if (t->kind != T_VOL && is_write_open(flags) && beside_encrypted_code(t->path)) {
        errno = EACCES;  /* no plaintext written beside encrypted code (embedded.c) */
        return -1;
    }
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
    if (!f) {
        int saved = errno;
        pthread_mutex_lock(&S.lock);
        untrack(fd);
        pthread_mutex_unlock(&S.lock);
        RESOLVE(close)(fd);
        errno = saved;
    }
    return f;
}

EXPORT FILE *fopen(const char *path, const char *mode) { return shield_fopen(path, mode, RESOLVE(fopen)); }
EXPORT FILE *fopen64(const char *path, const char *mode) { return shield_fopen(path, mode, (fopen_fn)RESOLVE(fopen64)); }

/* ------------------------------------------------------------------ close, fsync, dup */

EXPORT int close(int fd)
{
    if (S.active && tracked_fd(fd)) return close_tracked(fd);
    return RESOLVE(close)(fd);
}

/* libuv (Node.js) closes files with syscall(SYS_close, fd) (uv__close_nocancel), past close():
 * a tracked memfd closed that way would never be protected again, and every write lost. */
EXPORT long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_close && S.active && tracked_fd((int)a[0])) return close_tracked((int)a[0]);
    return RESOLVE(syscall)(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

EXPORT int fclose(FILE *f)
{
    int fd = f ? fileno(f) : -1;
    if (S.active && tracked_fd(fd)) {
        int flushed = fflush(f);
        int rc = flush_tracked(fd);
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

EXPORT int fsync(int fd)
{
    if (S.active && tracked_fd(fd)) return flush_tracked(fd);
    return RESOLVE(fsync)(fd);
}

EXPORT int fdatasync(int fd)
{
    if (S.active && tracked_fd(fd)) return flush_tracked(fd);
    return RESOLVE(fdatasync)(fd);
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
static int shield_stat(int dirfd, const char *path, struct stat64 *st, int follow, struct target *t)
{
    if (!ACTIVE() || !path || !*path || target_of(dirfd, path, follow, t) != 0) return -2;
    if (t->kind == T_SEALED) {
        errno = ENOENT;
        return -1;
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
            struct fspf_file *rec = fspf_find(&t->vol->fs, t->path);
            if (rec) {
                st->st_size = (off_t)rec->size;
                st->st_blocks = (blkcnt_t)((rec->size + 511) / 512);
            }
            pthread_mutex_unlock(&S.lock);
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

EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    struct target t;
    if (!(flags & AT_EMPTY_PATH) || (path && *path)) {
        int rc = shield_stat(dirfd, path, (struct stat64 *)st, !(flags & AT_SYMLINK_NOFOLLOW), &t);
        if (rc != -2) return rc;
        if (ACTIVE() && t.changed) return RESOLVE(fstatat)(AT_FDCWD, t.path, st, flags);
    }
    return RESOLVE(fstatat)(dirfd, path, st, flags);
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    struct target t;
    if (!(flags & AT_EMPTY_PATH) || (path && *path)) {
        int rc = shield_stat(dirfd, path, st, !(flags & AT_SYMLINK_NOFOLLOW), &t);
        if (rc != -2) return rc;
        if (ACTIVE() && t.changed) return RESOLVE(fstatat64)(AT_FDCWD, t.path, st, flags);
    }
    return RESOLVE(fstatat64)(dirfd, path, st, flags);
}

/* The pre-2.33 glibc entry points, for executables built against an older glibc. */
EXPORT int __xstat(int ver, const char *path, struct stat *st) { (void)ver; return stat(path, st); }
EXPORT int __xstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return stat64(path, st); }
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
    if (rc == -2 || t->kind != T_EMB) return rc == -1 ? -1 : -2;
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
    if (!ACTIVE() || !path || target_of(AT_FDCWD, path, 1, &t) != 0 || (t.kind != T_EMB && t.kind != T_SEALED))
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
    if (t->kind == T_EMB) {
        errno = EEXIST;
        return -1;
    }
    if (t->kind == T_SEALED) {
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
    if (!ACTIVE() || !S.cfg.code_root_count || !path || target_of(dirfd, path, 0, &t) != 0) return 1;
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

