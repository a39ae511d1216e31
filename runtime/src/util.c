#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int rt_fail(struct rt_error *e, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int nibble(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int hex_decode(const char *hex, unsigned char *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = nibble(hex[2 * i]), lo = hi < 0 ? -1 : nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return hex[2 * n] == '\0' ? 0 : -1;
}

int read_full(int fd, void *buf, size_t count)
{
    char *p = buf;
    while (count) {
        ssize_t n = read(fd, p, count);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) { errno = EIO; return -1; }
        p += n; count -= (size_t)n;
    }
    return 0;
}

int pread_full(int fd, void *buf, size_t count, uint64_t offset)
{
    char *p = buf;
    while (count) {
        ssize_t n = pread(fd, p, count, (off_t)offset);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) { errno = EIO; return -1; }
        p += n; count -= (size_t)n; offset += (uint64_t)n;
    }
    return 0;
}

int write_full(int fd, const void *buf, size_t count)
{
    const char *p = buf;
    while (count) {
        ssize_t n = write(fd, p, count);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        p += n; count -= (size_t)n;
    }
    return 0;
}

int pwrite_full(int fd, const void *buf, size_t count, uint64_t offset)
{
    const char *p = buf;
    while (count) {
        ssize_t n = pwrite(fd, p, count, (off_t)offset);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        p += n; count -= (size_t)n; offset += (uint64_t)n;
    }
    return 0;
}

int replace_file(const char *path, const char *tmp, const void *data, size_t len, int newline, mode_t mode, int sync)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return errno ? errno : EIO;
    int rc = write_full(fd, data, len) == 0 && (!newline || write_full(fd, "\n", 1) == 0) && (!sync || fsync(fd) == 0)
                 ? 0 : (errno ? errno : EIO);
    close(fd);
    if (rc == 0 && rename(tmp, path) != 0) rc = errno ? errno : EIO;
    if (rc != 0) unlink(tmp);
    return rc;
}

int fsync_dir_of(const char *path)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int fsync_with_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc == 0 ? fsync_dir_of(path) : -1;
}

/* The length of the valid UTF-8 sequence at s (of n bytes), 0 if there is none. */
size_t utf8_sequence(const unsigned char *s, size_t n)
{
    size_t len = s[0] < 0x80 ? 1 : s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
               : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    if (!len || len > n) return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) ||  /* overlong, surrogate */
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))    /* overlong, > U+10FFFF */
        return 0;
    return len;
}


const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}
