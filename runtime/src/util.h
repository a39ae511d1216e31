/* Small helpers shared by the launcher, the shield and their parts. */
#ifndef SCONIFY_UTIL_H
#define SCONIFY_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Every function that can fail returns -1 and fills an rt_error with one line that names the
 * problem (and, where the caller cannot add it, the fix). Messages never contain key bytes. */
struct rt_error {
    char msg[512];
};

/* printf into e->msg; returns -1 so callers can `return rt_fail(e, ...)`. e may be NULL. */
int rt_fail(struct rt_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Little-endian loads and stores. */
static inline uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t le32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static inline uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }
static inline void put16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8); }
static inline void put32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static inline void put64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }

/* Lower-case hex of n bytes into out (2n+1 bytes); parse exactly n bytes of hex (-1 if not). */
void hex_encode(const unsigned char *in, size_t n, char *out);
int hex_decode(const char *hex, unsigned char *out, size_t n);

/* read/write/pread/pwrite the whole count, retrying on EINTR and short transfers; -1 + errno. */
int read_full(int fd, void *buf, size_t count);
int pread_full(int fd, void *buf, size_t count, uint64_t offset);
int write_full(int fd, const void *buf, size_t count);
int pwrite_full(int fd, const void *buf, size_t count, uint64_t offset);

/* Replace path with len bytes of data (and a '\n' after them when newline) the crash-safe way: a
 * temp file (tmp, created with mode) written and, when sync, fsynced, then renamed over path. 0,
 * or the errno of what failed (tmp removed, path unchanged). Fsyncing path's directory is the
 * caller's. Without sync a reader sees the old or the new content, never a part, and the kernel
 * keeps the new one if the process is killed; only a crash of the machine may lose it. */
int replace_file(const char *path, const char *tmp, const void *data, size_t len, int newline, mode_t mode, int sync);
/* The last component of path (after its last '/'). */
const char *base_name(const char *path);
/* fsync the directory that holds path (what makes a rename or a create in it durable): 0 or -1. */
int fsync_dir_of(const char *path);
/* fsync path itself and then its directory: a file replaced by a rename made durable. 0 or -1
 * + errno (a missing path is ENOENT). */
int fsync_with_dir(const char *path);

/* The length of the valid UTF-8 sequence at s (of n > 0 bytes), 0 if there is none. */
size_t utf8_sequence(const unsigned char *s, size_t n);

#endif
