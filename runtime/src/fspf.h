/* The fspf (file-system protection file), format version 1 (docs/fspf-format.md), as the
 * runtime needs it: load an encrypted fspf checked against its expected tag, open a protected
 * file's stored bytes as plaintext, protect new plaintext with a fresh key and file id, and
 * write the fspf back encrypted with the same key and a fresh nonce. Byte-compatible with
 * sconify/fspf (Python). */
#ifndef SCONIFY_FSPF_H
#define SCONIFY_FSPF_H

#include <stddef.h>
#include <stdint.h>
#include "util.h"

/* Errors: -1 and a one-line rt_error without key bytes. Integrity failures are told apart by
 * the message's start (fspf_tool maps them to exit code 1):
 *   "integrity check failed for PATH[ chunk N]: ..."   a stored file does not match its record
 *   "fspf tag mismatch (rolled back or replaced): ..."  the fspf is not the trusted one
 *   "fspf does not decrypt (wrong key): ..."           its tag is trusted but the key is wrong
 * "corrupt fspf: ..." is a malformed field; anything else an argument or I/O problem.
 * The functions below that use libcrypto first call OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG):
 * an openssl.cnf from the image must not configure the crypto that protects it. */

enum { FSPF_KERNEL = 0, FSPF_EPHEMERAL = 1 };
enum { FSPF_NOT_PROTECTED = 0, FSPF_AUTHENTICATED = 1, FSPF_ENCRYPTED = 2 };
/* A file record's protection only: a symlink the service made in a region. Its target string is
 * the record's authenticated content (size = target length, one tag per chunk, as for
 * FSPF_AUTHENTICATED); the link itself is a kernel symlink at the record's path. */
enum { FSPF_SYMLINK = 3 };

struct fspf_region {
    char *path;          /* absolute, normalised, NUL-terminated */
    uint8_t kind, protection, key_length;
    uint32_t chunk_size;
    char *kernel_path;   /* "" for ephemeral */
};

struct fspf_file {
    char *path;          /* absolute fspf path, NUL-terminated */
    uint64_t size;       /* plaintext size */
    uint8_t protection;  /* FSPF_AUTHENTICATED or FSPF_ENCRYPTED */
    uint32_t chunk_size;
    unsigned char file_id[16];
    uint8_t key_len;     /* 16, 24 or 32 */
    unsigned char key[32];
    uint32_t tag_count;  /* authenticated: one tag per chunk; encrypted: 0 */
    unsigned char (*tags)[16];
};

struct fspf {
    uint32_t region_count;
    struct fspf_region *regions;   /* sorted by path */
    uint32_t file_count;
    struct fspf_file *files;       /* sorted by path, unique */
};

/* Load an fspf file's bytes. With key (32 bytes) the envelope must be "encrypted"; the last 16
 * bytes must equal expected_tag (constant-time compare, before decrypting: a rolled-back fspf is
 * refused as such). Every field is checked as sconify/fspf/format.py does. 0 or -1. */
int fspf_load(struct fspf *out, const unsigned char *data, size_t len, const unsigned char key[32],
              const unsigned char expected_tag[16], struct rt_error *err);
/* (key NULL: a plain fspf only, its integrity tag checked, expected_tag optional. With a key,
 * expected_tag is required. On failure *out is left empty.) */
void fspf_free(struct fspf *fs);

/* An fspf of one kernel region at path (absolute, normalised; its files stored at their own
 * paths, 64 KiB chunks, 32-byte file keys) and no files: what a region starts with. 0 or -1. */
int fspf_one_region(struct fspf *fs, const char *path, uint8_t protection, struct rt_error *err);

/* Serialise and encrypt with key (32 bytes) and a fresh random nonce (RAND_bytes): *out is
 * malloc'ed (to free()), tag receives its last 16 bytes. 0 or -1. */
int fspf_save_encrypted(const struct fspf *fs, const unsigned char key[32], unsigned char **out, size_t *out_len,
                        unsigned char tag[16], struct rt_error *err);

/* The region with the longest whole-component prefix of path, or NULL. */
const struct fspf_region *fspf_region_for(const struct fspf *fs, const char *path);
/* The file record at path, or NULL (binary search). */
struct fspf_file *fspf_find(const struct fspf *fs, const char *path);
/* Insert rec (taking ownership of its path and tags), replacing a record at the same path.
 * rec is checked as fspf_load checks a record (normalised path, protection, key length, chunk
 * size, tag count); on success *rec is cleared, on failure the caller still owns it. */
int fspf_put(struct fspf *fs, struct fspf_file *rec, struct rt_error *err);
/* Remove the record at path (no-op if absent); its key is wiped. */
void fspf_remove(struct fspf *fs, const char *path);

/* Bytes stored on disk for a plaintext of size bytes: encrypted adds 16 per chunk. */
uint64_t fspf_stored_size(uint64_t size, uint32_t chunk_size, uint8_t protection);

/* Read the stored file at stored_fd (from offset 0) and write its checked plaintext to plain_fd
 * (at offset 0, f->size bytes), chunk by chunk: encrypted files are decrypted, authenticated
 * ones checked against their tags. A wrong stored size, a bad tag, ... gives -1 with a message
 * naming the path and the chunk. plain_fd must accept pwrite (a regular file or memfd; it
 * is not truncated). On failure the chunks before the bad one may already be in plain_fd: the
 * caller discards it. Chunks are read in batches of about 1 MiB through one buffer. */
int fspf_open_file(const struct fspf_file *f, int stored_fd, int plain_fd, struct rt_error *err);

/* Protect size bytes of plaintext read from plain_fd (offset 0) as path (normalised; any bytes:
 * fspf_put decides whether the record may be kept): fill rec (fresh file id
 * and key of key_len bytes from RAND_bytes; path strdup'ed; tags malloc'ed when authenticated)
 * and, for encrypted files, write the stored bytes to stored_fd (offset 0; a longer old
 * content is truncated). stored_fd is unused for authenticated files (-1). On failure rec is
 * left empty. 0 or -1. */
int fspf_protect_file(const char *path, uint8_t protection, uint32_t chunk_size, uint8_t key_len, int plain_fd,
                      uint64_t size, int stored_fd, struct fspf_file *rec, struct rt_error *err);
void fspf_file_free(struct fspf_file *rec);

/* Check a symlink's target (len bytes, as readlink gives it) against its FSPF_SYMLINK record:
 * 0, or -1 with an "integrity check failed for PATH..." message. (A record is made with
 * fspf_protect_file(FSPF_AUTHENTICATED) over the target, its protection then set.) */
int fspf_check_link(const struct fspf_file *f, const char *target, size_t len, struct rt_error *err);

#endif
