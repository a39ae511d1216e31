/* Today's shape: an LD_PRELOAD shim for the public entry points. It checks
   the path / fd against its tables (here: a prefix compare and a bitmap) and
   issues the real call itself. */
#include "common.h"
#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>

static unsigned char tracked[4096 / 8];
static const char prefix[] = "/protected/volume/";

static int is_protected(const char *p) { return strncmp(p, prefix, sizeof prefix - 1) == 0; }

int open(const char *path, int flags, ...)
{
    mode_t m = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); m = va_arg(ap, mode_t); va_end(ap); }
    if (is_protected(path)) { errno = EACCES; return -1; }
    long r = shield_syscall6(SYS_openat, AT_FDCWD, (long)path, flags, m, 0, 0);
    if (r < 0) { errno = (int)-r; return -1; }
    return (int)r;
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
    if (fd >= 0 && fd < 4096 && (tracked[fd / 8] & (1 << (fd % 8)))) { errno = EIO; return -1; }
    long r = shield_syscall6(SYS_pread64, fd, (long)buf, (long)n, off, 0, 0);
    if (r < 0) { errno = (int)-r; return -1; }
    return r;
}
ssize_t pread64(int fd, void *buf, size_t n, off_t off) __attribute__((alias("pread")));

int fstat(int fd, struct stat *st)
{
    if (fd >= 0 && fd < 4096 && (tracked[fd / 8] & (1 << (fd % 8)))) { errno = EIO; return -1; }
    long r = shield_syscall6(SYS_fstat, fd, (long)st, 0, 0, 0, 0);
    if (r < 0) { errno = (int)-r; return -1; }
    return 0;
}
int fstat64(int fd, struct stat64 *st) { return fstat(fd, (struct stat *)st); }
