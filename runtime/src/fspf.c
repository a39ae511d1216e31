/* The fspf (file-system protection file), format version 1: the C twin of sconify/fspf
 * (format.py, chunks.py, build.py, shield.py). docs/fspf-format.md is the specification.
 *
 * Message conventions (callers classify errors by prefix; see fspf.h):
 *   "integrity check failed for PATH[ chunk N]: ..."  a protected file does not match its record
 *   "fspf tag mismatch (rolled back or replaced): ..." the fspf is not the trusted one
 *   "fspf does not decrypt (wrong key): ..."          the tag matched but the key is wrong
 *   "corrupt fspf: ..."                                a field is malformed
 * Everything else is an argument or I/O problem. No message contains key bytes.
 *
 * Chunk I/O goes through one buffer allocated per call, holding a batch of up to
 * FSPF_BATCH_BYTES of stored chunks (at least one chunk: chunk sizes up to 64 MiB are valid),
 * so small chunks cost one pread/pwrite per batch, not per chunk. Encrypted chunks are
 * decrypted and encrypted in place; the plaintext of a batch is scattered/gathered with
 * preadv/pwritev, so no chunk is copied. */
#include "fspf.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define MAGIC "SCNFSPF\0"
#define VERSION 1
#define ENVELOPE_PLAIN 0
#define ENVELOPE_ENCRYPTED 1
#define HEADER_SIZE 16
#define NONCE_SIZE 12
#define TAG_SIZE 16
#define FSPF_KEY_SIZE 32
#define MIN_CHUNK_SIZE 16u
#define MAX_CHUNK_SIZE (64u * 1024 * 1024)
#define DEFAULT_CHUNK_SIZE (64u * 1024)
#define MAX_PATH_BYTES 4096
#define REGION_FIXED 7   /* u8 kind, u8 protection, u8 key_length, u32 chunk_size */
#define FILE_FIXED 30    /* u64 size, u8 protection, u32 chunk_size, file_id(16), u8 key_len */
#define CHUNK_AAD_PREFIX "SCNFSPF-CHUNK\x01"
#define CHUNK_AAD_PREFIX_LEN 14
#define CHUNK_AAD_POS (CHUNK_AAD_PREFIX_LEN + 16)  /* u64 index | u8 final */
#define CHUNK_AAD_FIXED (CHUNK_AAD_POS + 9)
#define FSPF_BATCH_BYTES (1u << 20)
#define FSPF_BATCH_CHUNKS 1024  /* <= IOV_MAX */
#define GCM_STEP (1 << 30)      /* EVP lengths are int: feed long buffers in steps */
#define RESTORE_HINT "(the stored file was changed outside the shield; restore it from the image the fspf was built with)"
#define REBUILD_HINT "rebuild it with `sconify fspf create/addr/addf`"

/* ---------------------------------------------------------------- small helpers */

/* A path (or any untrusted string) fit for a one-line UTF-8 message: control bytes and bytes
 * that are not UTF-8 (a raw file name) become '?', and more than 300 bytes are cut with "...".
 * out must hold 304 bytes. */
static const char *shown(const char *s, char out[304])
{
    size_t i = 0, n = strlen(s);
    while (i < n && i < 300) {
        const unsigned char *c = (const unsigned char *)s + i;
        size_t seq = utf8_sequence(c, n - i);
        if (seq && i + seq <= 300 && c[0] >= 0x20 && c[0] != 0x7f) {
            memcpy(out + i, c, seq);
            i += seq;
        } else {
            out[i++] = '?';
        }
    }
    if (s[i]) { memcpy(out + i, "...", 3); i += 3; }
    out[i] = '\0';
    return out;
}

static const char *shown_n(const unsigned char *s, size_t n, char out[304])
{
    char tmp[304];
    size_t m = n > 301 ? 301 : n;
    memcpy(tmp, s, m);
    tmp[m] = '\0';
    for (size_t i = 0; i < m; i++) if (!tmp[i]) tmp[i] = '?';
    return shown(tmp, out);
}

static int corrupt(struct rt_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int corrupt(struct rt_error *err, const char *fmt, ...)
{
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return rt_fail(err, "corrupt fspf: %s; " REBUILD_HINT, detail);
}

/* chunk < 0: the whole file. */
static int integrity(struct rt_error *err, const char *path, long long chunk, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int integrity(struct rt_error *err, const char *path, long long chunk, const char *fmt, ...)
{
    char reason[256], where[304], at[32] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (chunk >= 0) snprintf(at, sizeof at, " chunk %lld", chunk);
    return rt_fail(err, "integrity check failed for %s%s: %s " RESTORE_HINT, shown(path, where), at, reason);
}

static uint64_t chunk_count(uint64_t size, uint32_t chunk_size)
{
    uint64_t n = size / chunk_size + (size % chunk_size != 0);
    return n ? n : 1;
}

uint64_t fspf_stored_size(uint64_t size, uint32_t chunk_size, uint8_t protection)
{
    if (protection != FSPF_ENCRYPTED || chunk_size == 0) return size;
    uint64_t n = chunk_count(size, chunk_size);
    if (n > (UINT64_MAX - size) / TAG_SIZE) return UINT64_MAX;  /* cannot exist: never matches */
    return size + TAG_SIZE * n;
}

static int key_length_ok(unsigned n) { return n == 16 || n == 24 || n == 32; }
static int chunk_size_ok(uint64_t n) { return n >= MIN_CHUNK_SIZE && n <= MAX_CHUNK_SIZE; }

/* As format.normalise_path(p) == p: absolute, no empty, "." or ".." components, no trailing
 * '/', no NUL, at most 4096 bytes. */
static int path_normalised(const unsigned char *p, size_t n)
{
    if (n == 0 || n > MAX_PATH_BYTES || p[0] != '/') return 0;
    if (n == 1) return 1;
    size_t start = 1;
    for (size_t i = 1; i <= n; i++) {
        if (i < n && p[i] == '\0') return 0;
        if (i == n || p[i] == '/') {
            size_t len = i - start;
            if (len == 0) return 0;
            if (p[start] == '.' && (len == 1 || (len == 2 && p[start + 1] == '.'))) return 0;
            start = i + 1;
        }
    }
    return 1;
}

static char *dup_n(const unsigned char *s, size_t n)
{
    char *out = malloc(n + 1);
    if (out) { memcpy(out, s, n); out[n] = '\0'; }
    return out;
}

/* ---------------------------------------------------------------- AES-GCM */

/* libcrypto 3 otherwise reads openssl.cnf (or $OPENSSL_CONF) at its first use: in a converted
 * image that file belongs to the image, and could load a provider that replaces AES-GCM or the
 * random generator. The first call decides; later ones are cheap no-ops. */
static int crypto_init(struct rt_error *err)
{
    if (OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL) != 1)
        return rt_fail(err, "cannot initialise libcrypto");
    return 0;
}

static const EVP_CIPHER *gcm_cipher(size_t key_len)
{
    switch (key_len) {
    case 16: return EVP_aes_128_gcm();
    case 24: return EVP_aes_192_gcm();
    case 32: return EVP_aes_256_gcm();
    default: return NULL;
    }
}

/* Feed n bytes (any size) to an EVP update: out NULL means associated data. */
static int gcm_update(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in, size_t n)
{
    while (n) {
        int step = n > GCM_STEP ? GCM_STEP : (int)n, got;
        if (!EVP_CipherUpdate(ctx, out, &got, in, step)) return -1;
        if (out) out += step;
        in += step;
        n -= (size_t)step;
    }
    return 0;
}

/* One AES-GCM operation with a 12-byte nonce: seal (enc=1: out = ciphertext, tag written) or
 * open (enc=0: tag checked; returns 1 if it matches, 0 if not). aad may be given in two parts. */
static int gcm_once(int enc, const unsigned char *key, size_t key_len, const unsigned char nonce[12],
                    const unsigned char *aad, size_t aad_len, const unsigned char *aad2, size_t aad2_len,
                    const unsigned char *in, size_t n, unsigned char *out, unsigned char tag[16])
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int rc = -1, len;
    unsigned char scratch[16];
    if (!ctx) return -1;
    if (!EVP_CipherInit_ex(ctx, gcm_cipher(key_len), NULL, NULL, NULL, enc) ||
        !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_SIZE, NULL) ||
        !EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) ||
        gcm_update(ctx, NULL, aad, aad_len) || gcm_update(ctx, NULL, aad2, aad2_len) ||
        (n && gcm_update(ctx, out, in, n)))
        goto done;
    if (enc) {
        if (EVP_CipherFinal_ex(ctx, scratch, &len) && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, tag))
            rc = 0;
    } else {
        if (!EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag)) goto done;
        rc = EVP_CipherFinal_ex(ctx, scratch, &len) > 0 ? 1 : 0;
    }
done:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* The chunks of one file under its key (chunks.py): the key schedule is set once, each chunk
 * only sets its nonce and the position bytes of the aad. */
struct chunker {
    EVP_CIPHER_CTX *ctx;
    unsigned char *aad;
    size_t aad_len;
};

static int chunker_init(struct chunker *c, int enc, const unsigned char *key, size_t key_len,
                        const unsigned char file_id[16], const char *path)
{
    size_t path_len = strlen(path);
    c->aad_len = CHUNK_AAD_FIXED + path_len;
    c->aad = malloc(c->aad_len);
    c->ctx = EVP_CIPHER_CTX_new();
    if (!c->aad || !c->ctx) return -1;
    memcpy(c->aad, CHUNK_AAD_PREFIX, CHUNK_AAD_PREFIX_LEN);
    memcpy(c->aad + CHUNK_AAD_PREFIX_LEN, file_id, 16);
    memcpy(c->aad + CHUNK_AAD_FIXED, path, path_len);
    if (!EVP_CipherInit_ex(c->ctx, gcm_cipher(key_len), NULL, NULL, NULL, enc) ||
        !EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_SIZE, NULL) ||
        !EVP_CipherInit_ex(c->ctx, NULL, NULL, key, NULL, enc))
        return -1;
    return 0;
}

static void chunker_free(struct chunker *c)
{
    EVP_CIPHER_CTX_free(c->ctx);  /* clears the key schedule */
    free(c->aad);
    c->ctx = NULL;
    c->aad = NULL;
}

/* nonce = u64 index | u32 final; aad = prefix | file id | u64 index | u8 final | path. */
static int chunker_start(struct chunker *c, uint64_t index, int final)
{
    unsigned char nonce[NONCE_SIZE];
    int got;
    put64(nonce, index);
    put32(nonce + 8, (uint32_t)final);
    put64(c->aad + CHUNK_AAD_POS, index);
    c->aad[CHUNK_AAD_POS + 8] = (unsigned char)final;
    if (!EVP_CipherInit_ex(c->ctx, NULL, NULL, NULL, nonce, -1)) return -1;
    return EVP_CipherUpdate(c->ctx, NULL, &got, c->aad, (int)c->aad_len) ? 0 : -1;
}

/* Encrypt n bytes in place and write the tag (encrypted chunks). */
static int chunk_seal(struct chunker *c, uint64_t index, int final, unsigned char *p, size_t n, unsigned char tag[16])
{
    int got;
    unsigned char scratch[16];
    if (chunker_start(c, index, final)) return -1;
    if (n && !EVP_CipherUpdate(c->ctx, p, &got, p, (int)n)) return -1;
    if (!EVP_CipherFinal_ex(c->ctx, scratch, &got)) return -1;
    return EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, tag) ? 0 : -1;
}

/* Decrypt n bytes in place and check the tag: 1 authentic, 0 not, -1 error. */
static int chunk_open(struct chunker *c, uint64_t index, int final, unsigned char *p, size_t n, unsigned char tag[16])
{
    int got;
    unsigned char scratch[16];
    if (chunker_start(c, index, final)) return -1;
    if (n && !EVP_CipherUpdate(c->ctx, p, &got, p, (int)n)) return -1;
    if (!EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag)) return -1;
    return EVP_CipherFinal_ex(c->ctx, scratch, &got) > 0 ? 1 : 0;
}

/* The tag of a plaintext chunk (authenticated): AES-GCM over nothing, aad = chunk aad | data. */
static int chunk_mac(struct chunker *c, uint64_t index, int final, const unsigned char *p, size_t n, unsigned char tag[16])
{
    int got;
    unsigned char scratch[16];
    if (chunker_start(c, index, final)) return -1;
    if (n && !EVP_CipherUpdate(c->ctx, NULL, &got, p, (int)n)) return -1;
    if (!EVP_CipherFinal_ex(c->ctx, scratch, &got)) return -1;
    return EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, tag) ? 0 : -1;
}

/* ---------------------------------------------------------------- chunked file I/O */

/* Read up to n bytes at off, stopping early only at end of file: bytes read, or -1 + errno. */
static ssize_t pread_upto(int fd, unsigned char *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, buf + done, n - done, (off_t)(off + done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -1;
        if (got == 0) break;
        done += (size_t)got;
    }
    return (ssize_t)done;
}

/* preadv/pwritev of the whole iovec (which is consumed): bytes transferred (short only at end
 * of file when reading), or -1 + errno. */
static ssize_t iov_full(int fd, struct iovec *iov, int cnt, uint64_t off, int write)
{
    size_t done = 0;
    while (cnt > 0 && iov->iov_len == 0) { iov++; cnt--; }
    while (cnt > 0) {
        ssize_t got = write ? pwritev(fd, iov, cnt, (off_t)(off + done)) : preadv(fd, iov, cnt, (off_t)(off + done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -1;
        if (got == 0) {
            if (write) { errno = EIO; return -1; }
            break;
        }
        done += (size_t)got;
        size_t left = (size_t)got;
        while (cnt > 0 && left >= iov->iov_len) { left -= iov->iov_len; iov++; cnt--; }
        if (cnt > 0) { iov->iov_base = (char *)iov->iov_base + left; iov->iov_len -= left; }
        while (cnt > 0 && iov->iov_len == 0) { iov++; cnt--; }
    }
    return (ssize_t)done;
}

/* Chunks per batch: about FSPF_BATCH_BYTES of stored chunks, at least 1, at most n. */
static uint64_t batch_chunks(uint64_t n, size_t stored_chunk)
{
    uint64_t k = FSPF_BATCH_BYTES / stored_chunk;
    if (k < 1) k = 1;
    if (k > FSPF_BATCH_CHUNKS) k = FSPF_BATCH_CHUNKS;
    return k < n ? k : n;
}

static int record_ok(const struct fspf_file *f, struct rt_error *err)
{
    char where[304];
    if (!f || !f->path) return rt_fail(err, "fspf_open_file: no file record given");
    if ((f->protection != FSPF_AUTHENTICATED && f->protection != FSPF_ENCRYPTED) || !key_length_ok(f->key_len) ||
        !chunk_size_ok(f->chunk_size))
        return rt_fail(err, "the fspf record of %s is malformed (protection, key length or chunk size)", shown(f->path, where));
    if (f->size > (uint64_t)INT64_MAX - MAX_CHUNK_SIZE)
        return rt_fail(err, "the fspf record of %s has an impossible size %llu", shown(f->path, where), (unsigned long long)f->size);
    if (f->protection == FSPF_AUTHENTICATED && (f->tag_count != chunk_count(f->size, f->chunk_size) || !f->tags))
        return rt_fail(err, "the fspf record of %s has %u chunk tags for %llu chunks", shown(f->path, where),
                       f->tag_count, (unsigned long long)chunk_count(f->size, f->chunk_size));
    return 0;
}

int fspf_open_file(const struct fspf_file *f, int stored_fd, int plain_fd, struct rt_error *err)
{
    char where[304];
    if (record_ok(f, err) || crypto_init(err)) return -1;
    const int sealed = f->protection == FSPF_ENCRYPTED;
    const size_t tag_size = sealed ? TAG_SIZE : 0, cs = f->chunk_size, stored_chunk = cs + tag_size;
    const uint64_t size = f->size, n = chunk_count(size, f->chunk_size);
    const uint64_t expected = fspf_stored_size(size, f->chunk_size, f->protection);

    struct stat st;
    if (fstat(stored_fd, &st) < 0)
        return rt_fail(err, "cannot stat the stored file of %s: %s", shown(f->path, where), strerror(errno));
    if ((uint64_t)st.st_size != expected)
        return integrity(err, f->path, -1, "stored size is %llu bytes, the fspf records %llu (%s)",
                         (unsigned long long)st.st_size, (unsigned long long)expected,
                         (uint64_t)st.st_size < expected ? "truncated" : "extended");

    const uint64_t k = batch_chunks(n, stored_chunk);
    const size_t buf_size = k == n ? (size_t)expected + TAG_SIZE : (size_t)k * stored_chunk;
    unsigned char *buf = malloc(buf_size);
    struct iovec *iov = malloc(sizeof *iov * (size_t)k);
    struct chunker c = {0};
    int rc = -1;
    if (!buf || !iov) { rt_fail(err, "out of memory for the chunks of %s", shown(f->path, where)); goto done; }
    if (chunker_init(&c, sealed ? 0 : 1, f->key, f->key_len, f->file_id, f->path)) {
        rt_fail(err, "AES-GCM setup failed for %s", shown(f->path, where));
        goto done;
    }
    for (uint64_t first = 0; first < n; first += k) {
        const uint64_t cnt = n - first < k ? n - first : k;
        const uint64_t plain_off = first * cs, plain_end = (first + cnt) * cs < size ? (first + cnt) * cs : size;
        const size_t plain_len = (size_t)(plain_end - plain_off), stored_len = plain_len + tag_size * (size_t)cnt;
        ssize_t got = pread_upto(stored_fd, buf, stored_len, first * stored_chunk);
        if (got < 0) { rt_fail(err, "cannot read the stored file of %s: %s", shown(f->path, where), strerror(errno)); goto done; }
        if ((size_t)got < stored_len) {
            integrity(err, f->path, (long long)(first + (uint64_t)got / stored_chunk),
                      "the stored file ended at %llu bytes while it was read, the fspf records %llu (truncated)",
                      (unsigned long long)(first * stored_chunk + (uint64_t)got), (unsigned long long)expected);
            goto done;
        }
        for (uint64_t j = 0; j < cnt; j++) {
            const uint64_t i = first + j;
            const size_t len = (size_t)(size - i * cs < cs ? size - i * cs : cs);
            unsigned char *p = buf + j * stored_chunk, tag[TAG_SIZE];
            const int final = i == n - 1;
            if (sealed) {
                int ok = chunk_open(&c, i, final, p, len, p + len);
                if (ok < 0) { rt_fail(err, "AES-GCM failed on %s chunk %llu", shown(f->path, where), (unsigned long long)i); goto done; }
                if (!ok) {
                    integrity(err, f->path, (long long)i, "AES-GCM tag mismatch (content changed, moved or from another file)");
                    goto done;
                }
                iov[j].iov_base = p;
                iov[j].iov_len = len;
            } else {
                if (chunk_mac(&c, i, final, p, len, tag)) {
                    rt_fail(err, "AES-GCM failed on %s chunk %llu", shown(f->path, where), (unsigned long long)i);
                    goto done;
                }
                if (CRYPTO_memcmp(tag, f->tags[i], TAG_SIZE) != 0) {
                    integrity(err, f->path, (long long)i, "chunk tag mismatch (content changed, moved or from another file)");
                    goto done;
                }
            }
        }
        ssize_t put = sealed ? iov_full(plain_fd, iov, (int)cnt, plain_off, 1)
                             : (pwrite_full(plain_fd, buf, plain_len, plain_off) ? -1 : (ssize_t)plain_len);
        if (put < 0) { rt_fail(err, "cannot write the plaintext of %s: %s", shown(f->path, where), strerror(errno)); goto done; }
    }
    /* The size was checked before reading; a file extended since then is refused too. */
    unsigned char extra;
    ssize_t more = pread_upto(stored_fd, &extra, 1, expected);
    if (more < 0) { rt_fail(err, "cannot read the stored file of %s: %s", shown(f->path, where), strerror(errno)); goto done; }
    if (more > 0) {
        integrity(err, f->path, (long long)(n - 1), "the stored file grew beyond the %llu bytes the fspf records while it was read (extended)",
                  (unsigned long long)expected);
        goto done;
    }
    rc = 0;
done:
    chunker_free(&c);
    if (buf) OPENSSL_cleanse(buf, buf_size);
    free(buf);
    free(iov);
    return rc;
}

int fspf_check_link(const struct fspf_file *f, const char *target, size_t len, struct rt_error *err)
{
    char where[304];
    struct fspf_file as_file = *f;
    as_file.protection = FSPF_AUTHENTICATED;
    if (f->protection != FSPF_SYMLINK) return rt_fail(err, "%s is not recorded as a symlink", shown(f->path, where));
    if (record_ok(&as_file, err) || crypto_init(err)) return -1;
    if (len != f->size)
        return integrity(err, f->path, -1, "the symlink's target is %zu bytes, the fspf records %llu", len,
                         (unsigned long long)f->size);
    struct chunker c = {0};
    if (chunker_init(&c, 1, f->key, f->key_len, f->file_id, f->path)) {
        chunker_free(&c);
        return rt_fail(err, "AES-GCM setup failed for %s", shown(f->path, where));
    }
    const uint64_t n = chunk_count(len, f->chunk_size);
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        const size_t off = (size_t)i * f->chunk_size, piece = len - off < f->chunk_size ? len - off : f->chunk_size;
        unsigned char tag[TAG_SIZE];
        if (chunk_mac(&c, i, i == n - 1, (const unsigned char *)target + off, piece, tag))
            rc = rt_fail(err, "AES-GCM failed on %s chunk %llu", shown(f->path, where), (unsigned long long)i);
        else if (CRYPTO_memcmp(tag, f->tags[i], TAG_SIZE) != 0)
            rc = integrity(err, f->path, (long long)i, "symlink target mismatch (the link was changed or moved)");
    }
    chunker_free(&c);
    return rc;
}

void fspf_file_free(struct fspf_file *rec)
{
    if (!rec) return;
    free(rec->path);
    free(rec->tags);
    OPENSSL_cleanse(rec, sizeof *rec);
}

int fspf_protect_file(const char *path, uint8_t protection, uint32_t chunk_size, uint8_t key_len, int plain_fd,
                      uint64_t size, int stored_fd, struct fspf_file *rec, struct rt_error *err)
{
    char where[304];
    memset(rec, 0, sizeof *rec);
    if (crypto_init(err)) return -1;
    if (!path || !path_normalised((const unsigned char *)path, strlen(path)) || !strcmp(path, "/"))
        return rt_fail(err, "file path %s is not an absolute normalised path (no '.', '..', '//', trailing '/')",
                       path ? shown(path, where) : "(null)");
    if (protection != FSPF_AUTHENTICATED && protection != FSPF_ENCRYPTED)
        return rt_fail(err, "%s: only authenticated or encrypted files are recorded (protection %u)", shown(path, where), protection);
    if (!key_length_ok(key_len))
        return rt_fail(err, "key length %u is not supported; use 16, 24 or 32 bytes", key_len);
    if (!chunk_size_ok(chunk_size))
        return rt_fail(err, "chunk size %u is out of range; pick %u..%u bytes (default %u)", chunk_size, MIN_CHUNK_SIZE,
                       MAX_CHUNK_SIZE, DEFAULT_CHUNK_SIZE);
    if (size > (uint64_t)INT64_MAX - MAX_CHUNK_SIZE)
        return rt_fail(err, "%s: a size of %llu bytes is too large", shown(path, where), (unsigned long long)size);
    const int sealed = protection == FSPF_ENCRYPTED;
    const uint64_t n = chunk_count(size, chunk_size);
    if (!sealed && n > UINT32_MAX)
        return rt_fail(err, "%s: %llu chunks do not fit an fspf record; use a larger chunk size", shown(path, where), (unsigned long long)n);

    const size_t tag_size = sealed ? TAG_SIZE : 0, cs = chunk_size, stored_chunk = cs + tag_size;
    const uint64_t expected = fspf_stored_size(size, chunk_size, protection);
    const uint64_t k = batch_chunks(n, stored_chunk);
    const size_t buf_size = k == n ? (size_t)(size + TAG_SIZE * n) : (size_t)k * stored_chunk;
    unsigned char *buf = malloc(buf_size ? buf_size : 1);
    struct iovec *iov = malloc(sizeof *iov * (size_t)k);
    struct chunker c = {0};
    int rc = -1;

    rec->path = strdup(path);
    rec->size = size;
    rec->protection = protection;
    rec->chunk_size = chunk_size;
    rec->key_len = key_len;
    if (!sealed) {
        rec->tag_count = (uint32_t)n;
        rec->tags = malloc((size_t)n * TAG_SIZE);
    }
    if (!buf || !iov || !rec->path || (!sealed && !rec->tags)) {
        rt_fail(err, "out of memory protecting %s", shown(path, where));
        goto done;
    }
    if (RAND_bytes(rec->key, key_len) != 1 || RAND_bytes(rec->file_id, 16) != 1) {
        rt_fail(err, "the random generator failed; cannot draw a file key for %s", shown(path, where));
        goto done;
    }
    if (chunker_init(&c, 1, rec->key, key_len, rec->file_id, path)) {
        rt_fail(err, "AES-GCM setup failed for %s", shown(path, where));
        goto done;
    }
    for (uint64_t first = 0; first < n; first += k) {
        const uint64_t cnt = n - first < k ? n - first : k;
        const uint64_t plain_off = first * cs, plain_end = (first + cnt) * cs < size ? (first + cnt) * cs : size;
        const size_t plain_len = (size_t)(plain_end - plain_off);
        for (uint64_t j = 0; j < cnt; j++) {  /* plaintext chunk j lands where its stored chunk starts */
            const uint64_t i = first + j;
            iov[j].iov_base = buf + j * stored_chunk;
            iov[j].iov_len = (size_t)(size - i * cs < cs ? size - i * cs : cs);
        }
        ssize_t got = iov_full(plain_fd, iov, (int)cnt, plain_off, 0);
        if (got < 0) { rt_fail(err, "cannot read the plaintext of %s: %s", shown(path, where), strerror(errno)); goto done; }
        if ((size_t)got < plain_len) {
            rt_fail(err, "%s: the input ended after %llu of %llu bytes; the file changed while it was read, retry",
                    shown(path, where), (unsigned long long)(plain_off + (uint64_t)got), (unsigned long long)size);
            goto done;
        }
        for (uint64_t j = 0; j < cnt; j++) {
            const uint64_t i = first + j;
            const size_t len = (size_t)(size - i * cs < cs ? size - i * cs : cs);
            unsigned char *p = buf + j * stored_chunk;
            const int final = i == n - 1;
            if (sealed ? chunk_seal(&c, i, final, p, len, p + len) : chunk_mac(&c, i, final, p, len, rec->tags[i])) {
                rt_fail(err, "AES-GCM failed on %s chunk %llu", shown(path, where), (unsigned long long)i);
                goto done;
            }
        }
        if (sealed && pwrite_full(stored_fd, buf, plain_len + TAG_SIZE * (size_t)cnt, first * stored_chunk)) {
            rt_fail(err, "cannot write the stored file of %s: %s", shown(path, where), strerror(errno));
            goto done;
        }
    }
    if (sealed) {  /* a stored file that was longer before must not keep its old tail */
        struct stat st;
        if (fstat(stored_fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > expected &&
            ftruncate(stored_fd, (off_t)expected) < 0) {
            rt_fail(err, "cannot truncate the stored file of %s: %s", shown(path, where), strerror(errno));
            goto done;
        }
    }
    rc = 0;
done:
    chunker_free(&c);
    if (buf) OPENSSL_cleanse(buf, buf_size ? buf_size : 1);
    free(buf);
    free(iov);
    if (rc) fspf_file_free(rec);
    return rc;
}

/* ---------------------------------------------------------------- body decoding */

struct reader {
    const unsigned char *p;
    size_t left;
    struct rt_error *err;
};

static int take(struct reader *r, size_t n, const unsigned char **out)
{
    if (n > r->left) {
        corrupt(r->err, "it ends in the middle of a record");
        return -1;
    }
    *out = r->p;
    r->p += n;
    r->left -= n;
    return 0;
}

/* A u32 element count, bounded by what the remaining bytes could hold. */
static int take_count(struct reader *r, size_t min_item, uint32_t *n)
{
    const unsigned char *p = NULL;
    if (take(r, 4, &p)) return -1;
    *n = le32(p);
    if ((uint64_t)*n * min_item > r->left) return corrupt(r->err, "a count of %u entries exceeds the file size", *n);
    return 0;
}

static int take_string(struct reader *r, const unsigned char **s, size_t *n)
{
    const unsigned char *p = NULL;
    if (take(r, 2, &p)) return -1;
    *n = le16(p);
    if (take(r, *n, s)) return -1;
    if (memchr(*s, '\0', *n)) return corrupt(r->err, "a path holds a NUL byte");
    return 0;
}

static int decode_body(struct fspf *fs, const unsigned char *body, size_t len, struct rt_error *err)
{
    struct reader r = {body, len, err};
    const unsigned char *p = NULL, *s = NULL, *k = NULL;
    size_t n = 0, kn = 0;
    char a[304], b[304];
    uint32_t count;

    if (take_count(&r, REGION_FIXED + 4, &count)) return -1;
    if (count && !(fs->regions = calloc(count, sizeof *fs->regions))) return rt_fail(err, "out of memory reading the fspf");
    for (uint32_t i = 0; i < count; i++) {
        struct fspf_region *reg = &fs->regions[i];
        if (take_string(&r, &s, &n) || take(&r, REGION_FIXED, &p) || take_string(&r, &k, &kn)) return -1;
        if (!(reg->path = dup_n(s, n)) || !(reg->kernel_path = dup_n(k, kn))) {
            free(reg->path);
            reg->path = NULL;
            return rt_fail(err, "out of memory reading the fspf");
        }
        fs->region_count = i + 1;
        reg->kind = p[0];
        reg->protection = p[1];
        reg->key_length = p[2];
        reg->chunk_size = le32(p + 3);
        if (reg->kind > FSPF_EPHEMERAL) return corrupt(err, "unknown region kind %u", reg->kind);
        if (reg->protection > FSPF_ENCRYPTED) return corrupt(err, "unknown region protection %u", reg->protection);
        if (!path_normalised(s, n)) return corrupt(err, "region path '%s' is not normalised", shown_n(s, n, a));
        if ((reg->kind == FSPF_KERNEL) != (kn != 0)) return corrupt(err, "region %s has an inconsistent kernel path", shown_n(s, n, a));
        /* Stricter than format.py, which leaves the kernel path unchecked (build.py always
         * normalises it): the runtime opens files below it. */
        if (kn && !path_normalised(k, kn))
            return corrupt(err, "kernel path '%s' of region %s is not normalised", shown_n(k, kn, b), shown_n(s, n, a));
        if (!key_length_ok(reg->key_length)) return corrupt(err, "key length %u is not supported; use 16, 24 or 32 bytes", reg->key_length);
        if (!chunk_size_ok(reg->chunk_size))
            return corrupt(err, "chunk size %u is out of range; pick %u..%u bytes", reg->chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE);
    }

    if (take_count(&r, FILE_FIXED + 6, &count)) return -1;
    if (count && !(fs->files = calloc(count, sizeof *fs->files))) return rt_fail(err, "out of memory reading the fspf");
    for (uint32_t i = 0; i < count; i++) {
        struct fspf_file *f = &fs->files[i];
        uint32_t tags;
        const unsigned char *t = NULL;
        if (take_string(&r, &s, &n) || take(&r, FILE_FIXED, &p) || take(&r, p[29], &k) || take_count(&r, TAG_SIZE, &tags) ||
            take(&r, (size_t)tags * TAG_SIZE, &t))
            return -1;
        if (!(f->path = dup_n(s, n))) return rt_fail(err, "out of memory reading the fspf");
        fs->file_count = i + 1;
        f->size = le64(p);
        f->protection = p[8];
        f->chunk_size = le32(p + 9);
        memcpy(f->file_id, p + 13, 16);
        f->key_len = p[29];
        if (f->protection > FSPF_SYMLINK) return corrupt(err, "unknown file protection %u", f->protection);
        if (!path_normalised(s, n) || (n == 1 && s[0] == '/')) return corrupt(err, "file path '%s' is not normalised", shown_n(s, n, a));
        if (f->protection == FSPF_NOT_PROTECTED) return corrupt(err, "file %s is recorded without protection", shown(f->path, a));
        if (!key_length_ok(f->key_len)) return corrupt(err, "key length %u is not supported; use 16, 24 or 32 bytes", f->key_len);
        memcpy(f->key, k, f->key_len);
        if (!chunk_size_ok(f->chunk_size))
            return corrupt(err, "chunk size %u is out of range; pick %u..%u bytes", f->chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE);
        uint64_t want = f->protection != FSPF_ENCRYPTED ? chunk_count(f->size, f->chunk_size) : 0;
        if (tags != want)
            return corrupt(err, "file %s has %u chunk tags, expected %llu", shown(f->path, a), tags, (unsigned long long)want);
        f->tag_count = tags;
        if (tags) {
            if (!(f->tags = malloc((size_t)tags * TAG_SIZE))) return rt_fail(err, "out of memory reading the fspf");
            memcpy(f->tags, t, (size_t)tags * TAG_SIZE);
        }
    }
    if (r.left) return corrupt(err, "%zu unexpected bytes after the file table", r.left);
    for (uint32_t i = 1; i < fs->region_count; i++)
        if (strcmp(fs->regions[i - 1].path, fs->regions[i].path) >= 0) return corrupt(err, "regions are not sorted or not unique");
    for (uint32_t i = 1; i < fs->file_count; i++)
        if (strcmp(fs->files[i - 1].path, fs->files[i].path) >= 0) return corrupt(err, "files are not sorted or not unique");
    return 0;
}

/* ---------------------------------------------------------------- envelopes */

static int load(struct fspf *out, const unsigned char *data, size_t len, const unsigned char key[32],
                const unsigned char expected_tag[16], struct rt_error *err)
{
    memset(out, 0, sizeof *out);
    if (crypto_init(err)) return -1;
    if (len < HEADER_SIZE + TAG_SIZE || memcmp(data, MAGIC, 8) != 0)
        return rt_fail(err, "not an fspf file (bad magic or too short); pass a file written by `sconify fspf create`");
    if (data[8] != VERSION)
        return rt_fail(err, "fspf format version %u is not supported (this runtime reads version %u); use a matching sconify "
                            "release or recreate the fspf", data[8], VERSION);
    if (data[9] != ENVELOPE_PLAIN && data[9] != ENVELOPE_ENCRYPTED) return corrupt(err, "unknown envelope type %u", data[9]);
    const int envelope = data[9];
    if (key && envelope != ENVELOPE_ENCRYPTED)
        return rt_fail(err, "the fspf is not encrypted; the runtime loads only fspfs written by `sconify fspf encrypt`");
    if (!key && envelope == ENVELOPE_ENCRYPTED)
        return rt_fail(err, "the fspf is encrypted; pass the key printed by `sconify fspf encrypt`");
    if (key && !expected_tag)
        return rt_fail(err, "an encrypted fspf is loaded only against its expected tag (the root of trust); pass it");
    if (envelope == ENVELOPE_ENCRYPTED && len < HEADER_SIZE + NONCE_SIZE + TAG_SIZE) return corrupt(err, "the encrypted fspf is too short");

    const unsigned char *tag = data + len - TAG_SIZE;
    if (expected_tag && CRYPTO_memcmp(tag, expected_tag, TAG_SIZE) != 0) {
        char actual[33], want[33];
        hex_encode(tag, TAG_SIZE, actual);
        hex_encode(expected_tag, TAG_SIZE, want);
        return rt_fail(err, "fspf tag mismatch (rolled back or replaced): its tag is %s but %s was expected; this fspf is older "
                            "or different from the trusted one; use the fspf that `fspf encrypt` printed this tag for", actual, want);
    }

    unsigned char *body = NULL;
    size_t body_len;
    int rc = -1;
    if (envelope == ENVELOPE_PLAIN) {
        static const unsigned char zero_key[FSPF_KEY_SIZE], zero_nonce[NONCE_SIZE];
        unsigned char check[TAG_SIZE];
        body_len = len - HEADER_SIZE - TAG_SIZE;
        if (gcm_once(1, zero_key, FSPF_KEY_SIZE, zero_nonce, data, len - TAG_SIZE, NULL, 0, NULL, 0, NULL, check))
            return rt_fail(err, "AES-GCM failed checking the fspf");
        if (CRYPTO_memcmp(check, tag, TAG_SIZE) != 0) return corrupt(err, "its integrity tag does not match its content");
        rc = decode_body(out, data + HEADER_SIZE, body_len, err);
    } else {
        const unsigned char *nonce = data + HEADER_SIZE;
        unsigned char tag_copy[TAG_SIZE];
        memcpy(tag_copy, tag, TAG_SIZE);
        body_len = len - HEADER_SIZE - NONCE_SIZE - TAG_SIZE;
        if (!(body = malloc(body_len ? body_len : 1))) return rt_fail(err, "out of memory reading the fspf");
        int ok = gcm_once(0, key, FSPF_KEY_SIZE, nonce, data, HEADER_SIZE + NONCE_SIZE, NULL, 0,
                          data + HEADER_SIZE + NONCE_SIZE, body_len, body, tag_copy);
        if (ok < 0) rt_fail(err, "AES-GCM failed decrypting the fspf");
        else if (ok == 0)
            rt_fail(err, "fspf does not decrypt (wrong key): its tag is the expected one but it does not authenticate under "
                         "this key (or its content was modified); pass the key printed by the `sconify fspf encrypt` that "
                         "produced it");
        else rc = decode_body(out, body, body_len, err);
        OPENSSL_cleanse(body, body_len ? body_len : 1);  /* it holds every file key */
        free(body);
    }
    if (rc) fspf_free(out);
    return rc;
}

int fspf_load(struct fspf *out, const unsigned char *data, size_t len, const unsigned char key[32],
              const unsigned char expected_tag[16], struct rt_error *err)
{
    return load(out, data, len, key, expected_tag, err);
}

int fspf_one_region(struct fspf *fs, const char *path, uint8_t protection, struct rt_error *err)
{
    memset(fs, 0, sizeof *fs);
    if (!path_normalised((const unsigned char *)path, strlen(path)))
        return rt_fail(err, "region path %s is not an absolute normalised path", path);
    struct fspf_region *region = calloc(1, sizeof *region);
    if (!region || !(region->path = strdup(path)) || !(region->kernel_path = strdup(path))) {
        if (region) free(region->path);
        free(region);
        return rt_fail(err, "out of memory");
    }
    region->kind = FSPF_KERNEL;  /* stored at their own paths */
    region->protection = protection;
    region->key_length = 32;
    region->chunk_size = 64 * 1024;
    fs->region_count = 1;
    fs->regions = region;
    return 0;
}

void fspf_free(struct fspf *fs)
{
    if (!fs) return;
    for (uint32_t i = 0; i < fs->region_count; i++) {
        free(fs->regions[i].path);
        free(fs->regions[i].kernel_path);
    }
    for (uint32_t i = 0; i < fs->file_count; i++) fspf_file_free(&fs->files[i]);
    free(fs->regions);
    free(fs->files);
    memset(fs, 0, sizeof *fs);
}

static size_t put_str(unsigned char *p, const char *s)
{
    size_t n = strlen(s);
    put16(p, (uint16_t)n);
    memcpy(p + 2, s, n);
    return 2 + n;
}

int fspf_save_encrypted(const struct fspf *fs, const unsigned char key[32], unsigned char **out, size_t *out_len,
                        unsigned char tag[16], struct rt_error *err)
{
    char where[304];
    *out = NULL;
    *out_len = 0;
    if (crypto_init(err)) return -1;
    /* The body, exactly as format.encode_body writes it. */
    size_t body_len = 8;
    for (uint32_t i = 0; i < fs->region_count; i++) {
        const struct fspf_region *reg = &fs->regions[i];
        if (strlen(reg->path) > UINT16_MAX || strlen(reg->kernel_path) > UINT16_MAX)
            return rt_fail(err, "region %s has a path too long for an fspf", shown(reg->path, where));
        body_len += 2 + strlen(reg->path) + REGION_FIXED + 2 + strlen(reg->kernel_path);
    }
    for (uint32_t i = 0; i < fs->file_count; i++) {
        const struct fspf_file *f = &fs->files[i];
        if (strlen(f->path) > UINT16_MAX) return rt_fail(err, "file %s has a path too long for an fspf", shown(f->path, where));
        if (!key_length_ok(f->key_len)) return rt_fail(err, "file %s has a malformed key length", shown(f->path, where));
        body_len += 2 + strlen(f->path) + FILE_FIXED + f->key_len + 4 + (size_t)f->tag_count * TAG_SIZE;
    }
    const size_t total = HEADER_SIZE + NONCE_SIZE + body_len + TAG_SIZE;
    unsigned char *data = malloc(total), *body = malloc(body_len);
    if (!data || !body) {
        free(data);
        free(body);
        return rt_fail(err, "out of memory writing the fspf");
    }
    unsigned char *p = body;
    put32(p, fs->region_count);
    p += 4;
    for (uint32_t i = 0; i < fs->region_count; i++) {
        const struct fspf_region *reg = &fs->regions[i];
        p += put_str(p, reg->path);
        p[0] = reg->kind;
        p[1] = reg->protection;
        p[2] = reg->key_length;
        put32(p + 3, reg->chunk_size);
        p += REGION_FIXED;
        p += put_str(p, reg->kernel_path);
    }
    put32(p, fs->file_count);
    p += 4;
    for (uint32_t i = 0; i < fs->file_count; i++) {
        const struct fspf_file *f = &fs->files[i];
        p += put_str(p, f->path);
        put64(p, f->size);
        p[8] = f->protection;
        put32(p + 9, f->chunk_size);
        memcpy(p + 13, f->file_id, 16);
        p[29] = f->key_len;
        p += FILE_FIXED;
        memcpy(p, f->key, f->key_len);
        p += f->key_len;
        put32(p, f->tag_count);
        p += 4;
        if (f->tag_count) memcpy(p, f->tags, (size_t)f->tag_count * TAG_SIZE);
        p += (size_t)f->tag_count * TAG_SIZE;
    }

    memcpy(data, MAGIC, 8);
    data[8] = VERSION;
    data[9] = ENVELOPE_ENCRYPTED;
    memset(data + 10, 0, 6);
    int rc = -1;
    if (RAND_bytes(data + HEADER_SIZE, NONCE_SIZE) != 1) {
        rt_fail(err, "the random generator failed; cannot draw an fspf nonce");
    } else if (gcm_once(1, key, FSPF_KEY_SIZE, data + HEADER_SIZE, data, HEADER_SIZE + NONCE_SIZE, NULL, 0, body, body_len,
                        data + HEADER_SIZE + NONCE_SIZE, data + total - TAG_SIZE)) {
        rt_fail(err, "AES-GCM failed encrypting the fspf");
    } else {
        memcpy(tag, data + total - TAG_SIZE, TAG_SIZE);
        *out = data;
        *out_len = total;
        rc = 0;
    }
    OPENSSL_cleanse(body, body_len);
    free(body);
    if (rc) free(data);
    return rc;
}

/* ---------------------------------------------------------------- lookups */

const struct fspf_region *fspf_region_for(const struct fspf *fs, const char *path)
{
    const struct fspf_region *best = NULL;
    size_t best_len = 0;
    for (uint32_t i = 0; i < fs->region_count; i++) {
        const char *rp = fs->regions[i].path;
        size_t n = strlen(rp);
        int inside = (n == 1 && rp[0] == '/') || (strncmp(path, rp, n) == 0 && (path[n] == '\0' || path[n] == '/'));
        if (inside && (!best || n > best_len)) {
            best = &fs->regions[i];
            best_len = n;
        }
    }
    return best;
}

/* Index of path, or -(insertion point) - 1. */
static long find_index(const struct fspf *fs, const char *path)
{
    size_t lo = 0, hi = fs->file_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(fs->files[mid].path, path);
        if (c == 0) return (long)mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -(long)lo - 1;
}

struct fspf_file *fspf_find(const struct fspf *fs, const char *path)
{
    long i = find_index(fs, path);
    return i >= 0 ? &fs->files[i] : NULL;
}

/* The record is checked as fspf_load checks one (so the fspf stays readable by sconify). On
 * success fs owns rec's path and tags, and *rec is cleared; on failure the caller keeps them. */
int fspf_put(struct fspf *fs, struct fspf_file *rec, struct rt_error *err)
{
    char where[304];
    if (!rec->path || !path_normalised((const unsigned char *)rec->path, strlen(rec->path)) || !strcmp(rec->path, "/"))
        return rt_fail(err, "file path %s is not an absolute normalised path", rec->path ? shown(rec->path, where) : "(null)");
    if ((rec->protection != FSPF_AUTHENTICATED && rec->protection != FSPF_ENCRYPTED && rec->protection != FSPF_SYMLINK) ||
        !key_length_ok(rec->key_len) || !chunk_size_ok(rec->chunk_size))
        return rt_fail(err, "the record of %s is malformed (protection, key length or chunk size)", shown(rec->path, where));
    uint64_t want = rec->protection != FSPF_ENCRYPTED ? chunk_count(rec->size, rec->chunk_size) : 0;
    if (rec->tag_count != want || (want && !rec->tags))
        return rt_fail(err, "the record of %s has %u chunk tags, expected %llu", shown(rec->path, where), rec->tag_count,
                       (unsigned long long)want);
    long i = find_index(fs, rec->path);
    if (i >= 0) {
        fspf_file_free(&fs->files[i]);
        fs->files[i] = *rec;
    } else {
        if (fs->file_count == UINT32_MAX) return rt_fail(err, "the fspf cannot hold more files");
        size_t at = (size_t)(-i - 1);
        struct fspf_file *files = realloc(fs->files, sizeof *files * ((size_t)fs->file_count + 1));
        if (!files) return rt_fail(err, "out of memory adding %s to the fspf", shown(rec->path, where));
        fs->files = files;
        memmove(&files[at + 1], &files[at], sizeof *files * (fs->file_count - at));
        files[at] = *rec;
        fs->file_count++;
    }
    OPENSSL_cleanse(rec, sizeof *rec);
    return 0;
}

void fspf_remove(struct fspf *fs, const char *path)
{
    long i = find_index(fs, path);
    if (i < 0) return;
    fspf_file_free(&fs->files[i]);
    memmove(&fs->files[i], &fs->files[i + 1], sizeof *fs->files * (fs->file_count - (size_t)i - 1));
    fs->file_count--;
    if (fs->file_count == 0) {
        free(fs->files);
        fs->files = NULL;
    }
}
