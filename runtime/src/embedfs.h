/* Read-only access to an embedfs archive (docs/embedfs-format.md, versions 1 and 2) held in memory:
 * the archive mapped by the running executable's own PT_LOAD, or a buffer. */
#ifndef SCONIFY_EMBEDFS_H
#define SCONIFY_EMBEDFS_H

#include <stddef.h>
#include <stdint.h>
#include "util.h"

enum { EMBEDFS_FILE = 1, EMBEDFS_SYMLINK = 2 };
#define EMBEDFS_CODE_KEY_SIZE 32


struct embedfs_member {
    uint8_t kind;             /* EMBEDFS_FILE or EMBEDFS_SYMLINK */
    uint8_t encrypted;        /* a file stored sealed under the code key (index kind 3, version 2):
                                 sha256 is of the stored bytes, size the plaintext's */
    uint32_t mode, uid, gid;  /* mode: permission bits only */
    uint64_t size;            /* content size; a symlink: length of its target */
    uint64_t data_offset, data_length;
    const unsigned char *sha256;   /* 32 bytes, points into the archive */
    const char *path;              /* relative, no leading '/', NOT NUL-terminated */
    uint16_t path_len;
    const char *link;              /* symlink target, NOT NUL-terminated */
    uint16_t link_len;
};

struct embedfs {
    const unsigned char *base;     /* the archive bytes (not owned) */
    size_t size;
    uint64_t count;
    struct embedfs_member *members;  /* count entries, sorted by path bytes (owned) */
    unsigned char root_hash[32];
    uint64_t encrypted_count;      /* members with encrypted set */
};

/* Parse and check an archive: header and trailer magic and version, index bounds, every record
 * well formed, paths normalised, sorted and unique, data ranges inside the data area, and the
 * root hash recomputed from the index equal to the trailer's. Also refused: a path that is
 * both a member and a directory of others ("a" and "a/b"), a symlink with an empty target, a
 * size other than its target's length or content data, a file with a link target, a mode
 * beyond 07777, unknown header flags. One malloc (the member array), O(count). Returns 0 or -1.
 * The root hash only proves the index self-consistent: compare fs->root_hash with a trusted
 * one (the descriptor's, the measured one) before trusting the content. */
int embedfs_open(struct embedfs *fs, const void *archive, size_t size, struct rt_error *err);
void embedfs_close(struct embedfs *fs);

/* Find the archive of the running executable from memory: getauxval(AT_PHDR/AT_PHNUM), load
 * bias, the "EMBEDFS" PT_NOTE descriptor, the mapped archive (embedfs/runtime.py does the
 * same). Returns 1 and sets *archive, *size and root_hash when there is one, 0 when the executable
 * carries none, -1 on a malformed descriptor. Without PT_PHDR (static executables) the bias
 * comes from the injector's layout, accepted only when the table sits exactly there; nothing
 * is read from memory outside the PT_LOAD segments. */
int embedfs_find_self(const void **archive, size_t *size, unsigned char root_hash[32], struct rt_error *err);

/* Same, from an ELF file open at fd; reads the archive into a malloc'ed buffer (*archive, to
 * free()). Returns 1, 0 (no archive) or -1. */
int embedfs_find_in_file(int fd, void **archive, size_t *size, unsigned char root_hash[32], struct rt_error *err);

/* The member at a relative path (no leading '/'; "" is the root), or NULL. Binary search. */
const struct embedfs_member *embedfs_lookup(const struct embedfs *fs, const char *path, size_t len);

/* 1 if path is a directory implied by member paths ("" is always one), else 0. */
int embedfs_is_dir(const struct embedfs *fs, const char *path, size_t len);

/* Call fn once for each direct child name of directory path (members and implied directories),
 * in sorted order (by name bytes: "a" before "a-b" before "a.b"); m is the member of a file
 * or symlink, NULL for a directory. Stops and returns fn's value if it is non-zero; returns 0
 * when done, and at once for a path that is not a directory. Binary search to the directory's
 * range, each subdirectory's subtree skipped by another. */
typedef int (*embedfs_child_fn)(void *ctx, const char *name, size_t len, int is_dir, const struct embedfs_member *m);
int embedfs_list_dir(const struct embedfs *fs, const char *path, size_t len, embedfs_child_fn fn, void *ctx);

/* Decompress a regular file's frames into out (m->size bytes) and check its size and SHA-256
 * against the record. Returns 0, or -1 naming the path and the check that failed ("zstd
 * frame", "file size", "file sha256"). A symlink gives its target, checked the same way.
 * Thread-safe (per-thread zstd and hash contexts, freed at thread exit). */
int embedfs_read(const struct embedfs *fs, const struct embedfs_member *m, unsigned char *out, struct rt_error *err);

/* The same, for any member: an encrypted one (m->encrypted) is checked against its SHA-256 (of
 * the stored bytes), decrypted with code_key (AES-256-GCM, the path as associated data; see
 * embedfs/codecrypt.py), decompressed and checked against its size. code_key NULL: an
 * encrypted member fails with "needs the code key". A wrong key or changed bytes fail with
 * check "code decryption". embedfs_read is this with code_key NULL. */
int embedfs_read_keyed(const struct embedfs *fs, const struct embedfs_member *m,
                       const unsigned char *code_key, unsigned char *out, struct rt_error *err);

#endif
