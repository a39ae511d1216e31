/* Reader of the embedfs archive format, versions 1 and 2 (docs/embedfs-format.md; the Python reference
 * is embedfs/archive.py Archive.open/read, embedfs/elf.py and embedfs/runtime.py).
 *
 * The archive may be hostile until its root hash has been compared with a trusted one, and its
 * file data until embedfs_read has checked it: every offset and length read from it is checked
 * against [base, base + size) before it is used, with overflow-free arithmetic.
 *
 * Cost: embedfs_open is one pass over the index (one malloc of the member array, the root hash
 * over the canonical records, batched into few SHA-256 updates); lookups are binary searches;
 * embedfs_read decompresses straight into the caller's buffer, frame by frame, hashing each
 * frame's output while it is still in cache. */
#include "embedfs.h"

#include <elf.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/stat.h>

/* SHA-256 through the low-level interface: no provider fetch (OpenSSL 3's first EVP fetch in
 * a process costs about 0.5 ms, more than opening an index of 5000 members), no allocation,
 * and the same SHA-NI/AVX2 code as EVP. Deprecated in OpenSSL 3.0, not removed; the pinned
 * libcrypto.a has it. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <zstd.h>
#include <zstd_errors.h>

#define HEADER_SIZE 16
#define TRAILER_SIZE 64
#define RECORD_SIZE 73          /* <BHHIIIQQQ32s */
#define CANON_HEAD 25           /* kind .. size: the canonical record's part before the digest */
#define RECORD_DIGEST 41        /* offset of the sha256 in an index record */
#define MAX_PATH_BYTES 4095     /* as embedfs/archive.py */
#define DESCRIPTOR_SIZE 88      /* <IIQQQQQHHI32s */
#define NT_EMBEDFS 0x53464245u  /* "EBFS" */
#define MAX_NOTE_SEGMENT (1u << 20)
#define KIND_ENCRYPTED_FILE 3   /* version 2 */
#define FLAG_ENCRYPTED 1u
#define NONCE_SIZE 12
#define TAG_SIZE 16

static const char MAGIC[8] = "EMBEDFS";   /* with its NUL: "EMBEDFS\0" */
static const char TRAILER_MAGIC[8] = {'E', 'M', 'B', 'E', 'D', 'F', 'S', 'I'};
static const char ROOT_DOMAIN[16] = "embedfs-root-v1"; /* with its NUL */
static const char NOTE_NAME[8] = "EMBEDFS";
/* embedfs/codecrypt.py: the HKDF-Expand label of the encryption subkey, the associated data's domain */
static const char ENCRYPTION_INFO[] = "embedfs-v2 code encryption key";
static const char AD_DOMAIN[18] = "embedfs-v2 member"; /* with its NUL */

/* ------------------------------------------------------------------------------------------ */
/* small helpers */

/* A path for an error message: at most 200 bytes, control bytes shown as '?'. */
static const char *printable(const char *p, size_t n, char out[204])
{
    size_t k = n > 200 ? 200 : n;
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)p[i];
        out[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    if (k < n) { memcpy(out + k, "...", 3); k += 3; }
    out[k] = '\0';
    return out;
}

/* A clean relative path: not empty, no leading '/', no empty, "." or ".." component, no NUL.
 * memchr per component: this runs for every member on every open. */
static int path_is_clean(const unsigned char *p, size_t n)
{
    if (n == 0 || n > MAX_PATH_BYTES || memchr(p, '\0', n)) return 0;
    const unsigned char *c = p, *end = p + n;
    for (;;) {
        const unsigned char *slash = memchr(c, '/', (size_t)(end - c));
        size_t len = (size_t)((slash ? slash : end) - c);
        if (len == 0 || (len <= 2 && c[0] == '.' && c[len - 1] == '.')) return 0;
        if (!slash) return 1;
        c = slash + 1;
    }
}

/* A per-thread zstd decompression context, reused across reads (one costs more to allocate
 * than a small file takes to decompress); freed when the thread exits. */
static pthread_key_t dctx_key;
static pthread_once_t dctx_once = PTHREAD_ONCE_INIT;
static int dctx_key_ok;

static void dctx_free(void *p) { ZSTD_freeDCtx(p); }
static void dctx_key_init(void) { dctx_key_ok = pthread_key_create(&dctx_key, dctx_free) == 0; }

/* The calling thread's context; *owned is set when the caller must free it (no TLS key). */
static ZSTD_DCtx *thread_dctx(int *owned)
{
    pthread_once(&dctx_once, dctx_key_init);
    *owned = 0;
    ZSTD_DCtx *d = dctx_key_ok ? pthread_getspecific(dctx_key) : NULL;
    if (d) return d;
    d = ZSTD_createDCtx();
    if (d && (!dctx_key_ok || pthread_setspecific(dctx_key, d) != 0)) *owned = 1;
    return d;
}

/* ------------------------------------------------------------------------------------------ */
/* path comparisons over the sorted member array */

static inline int cmp_bytes(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return (alen > blen) - (alen < blen);
}

static inline int has_prefix(const struct embedfs_member *m, const char *key, size_t klen)
{
    return m->path_len >= klen && memcmp(m->path, key, klen) == 0;
}

/* First index in [lo, hi) whose path is >= key. */
static uint64_t lower_bound(const struct embedfs *fs, uint64_t lo, uint64_t hi, const char *key, size_t klen)
{
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const struct embedfs_member *m = &fs->members[mid];
        if (cmp_bytes(m->path, m->path_len, key, klen) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* First index in [lo, hi) whose path is above key and does not start with it: the end of the
 * range of paths that start with key. */
static uint64_t prefix_end(const struct embedfs *fs, uint64_t lo, uint64_t hi, const char *key, size_t klen)
{
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const struct embedfs_member *m = &fs->members[mid];
        size_t n = m->path_len < klen ? m->path_len : klen;
        if (memcmp(m->path, key, n) <= 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* ------------------------------------------------------------------------------------------ */
/* open */

/* The root hash input, batched: canonical records are small, one SHA-256 update each costs
 * more than copying them. */
struct root_hasher {
    SHA256_CTX sha;
    size_t used;
    unsigned char buf[8192];
};

static void root_flush(struct root_hasher *h)
{
    if (h->used) SHA256_Update(&h->sha, h->buf, h->used);
    h->used = 0;
}

static void root_add(struct root_hasher *h, const void *p, size_t n)
{
    if (n > sizeof h->buf - h->used) {
        root_flush(h);
        if (n > sizeof h->buf) {
            SHA256_Update(&h->sha, p, n);
            return;
        }
    }
    memcpy(h->buf + h->used, p, n);
    h->used += n;
}

int embedfs_open(struct embedfs *fs, const void *archive, size_t size, struct rt_error *err)
{
    memset(fs, 0, sizeof *fs);
    const unsigned char *b = archive;
    char shown[204];
    if (!b || size < HEADER_SIZE + TRAILER_SIZE)
        return rt_fail(err, "embedfs archive is truncated to %zu bytes (at least %d expected); rebuild it with 'embedfs pack'",
                       b ? size : 0, HEADER_SIZE + TRAILER_SIZE);
    if (memcmp(b, MAGIC, 8) != 0)
        return rt_fail(err, "input is not an embedfs archive (bad magic); give an archive built by 'embedfs pack'");
    uint16_t version = le16(b + 8), flags = le16(b + 10);
    if (version != 1 && version != 2)
        return rt_fail(err, "embedfs archive version %u is not supported (this reader knows 1 and 2); upgrade the runtime", version);
    if ((version == 1 && flags != 0) || (flags & ~FLAG_ENCRYPTED))
        return rt_fail(err, "embedfs archive has unknown flags 0x%x; upgrade the runtime", flags);

    const unsigned char *t = b + size - TRAILER_SIZE;
    if (memcmp(t, TRAILER_MAGIC, 8) != 0)
        return rt_fail(err, "embedfs archive trailer is missing (bad trailer magic); the archive is truncated or damaged");
    uint64_t index_offset = le64(t + 8), index_size = le64(t + 16), count = le64(t + 24);
    uint64_t index_end = size - TRAILER_SIZE;
    if (index_offset < HEADER_SIZE || index_offset > index_end || index_size != index_end - index_offset)
        return rt_fail(err, "embedfs archive index lies outside the archive; the archive is damaged");
    if (count > index_size / RECORD_SIZE)
        return rt_fail(err, "embedfs archive claims %llu members, more than its %llu-byte index can hold; the archive is damaged",
                       (unsigned long long)count, (unsigned long long)index_size);

    struct embedfs_member *members = NULL;
    if (count) {
        members = malloc((size_t)count * sizeof *members);
        if (!members)
            return rt_fail(err, "out of memory for the index of %llu embedfs members", (unsigned long long)count);
    }
    struct root_hasher h;
    SHA256_Init(&h.sha);
    h.used = 0;
    root_add(&h, ROOT_DOMAIN, sizeof ROOT_DOMAIN);

    const unsigned char *index = b + index_offset;
    uint64_t pos = 0, encrypted = 0;
    int rc = -1;
    for (uint64_t i = 0; i < count; i++) {
        if (index_size - pos < RECORD_SIZE) {
            rt_fail(err, "embedfs archive index is cut short at member %llu; the archive is damaged", (unsigned long long)i);
            goto out;
        }
        const unsigned char *r = index + pos;
        struct embedfs_member *m = &members[i];
        m->kind = r[0];
        m->encrypted = 0;
        if (m->kind == KIND_ENCRYPTED_FILE && version == 2) {
            m->kind = EMBEDFS_FILE;
            m->encrypted = 1;
            encrypted++;
        }
        m->path_len = le16(r + 1);
        m->link_len = le16(r + 3);
        m->mode = le32(r + 5);
        m->uid = le32(r + 9);
        m->gid = le32(r + 13);
        m->size = le64(r + 17);
        m->data_offset = le64(r + 25);
        m->data_length = le64(r + 33);
        m->sha256 = r + RECORD_DIGEST;
        uint64_t rec_len = (uint64_t)RECORD_SIZE + m->path_len + m->link_len;
        if (index_size - pos < rec_len) {
            rt_fail(err, "embedfs archive index is cut short in member %llu; the archive is damaged", (unsigned long long)i);
            goto out;
        }
        m->path = (const char *)r + RECORD_SIZE;
        m->link = m->path + m->path_len;
        pos += rec_len;

        if (!path_is_clean((const unsigned char *)m->path, m->path_len)) {
            rt_fail(err, "embedfs archive member %llu has an unclean path '%s' (empty, absolute, '.', '..', NUL or over %d bytes); the archive is damaged",
                    (unsigned long long)i, printable(m->path, m->path_len, shown), MAX_PATH_BYTES);
            goto out;
        }
        const char *why = NULL;
        if (m->kind == EMBEDFS_FILE) {
            if (m->link_len) why = "a regular file with a link target";
            else if (m->encrypted && m->data_length < NONCE_SIZE + TAG_SIZE) why = "an encrypted file without nonce and tag";
        } else if (m->kind == EMBEDFS_SYMLINK) {
            if (!m->link_len || memchr(m->link, '\0', m->link_len)) why = "a symlink with an empty or invalid target";
            else if (m->size != m->link_len) why = "a symlink whose size is not its target's length";
            else if (m->data_length) why = "a symlink with content data";
        } else {
            why = "an unknown kind";
        }
        if (!why && m->mode > 07777) why = "a mode beyond the permission bits";
        if (why) {
            rt_fail(err, "%s: embedfs index record is malformed (%s); the archive is damaged",
                    printable(m->path, m->path_len, shown), why);
            goto out;
        }
        if (i && cmp_bytes(m[-1].path, m[-1].path_len, m->path, m->path_len) >= 0) {
            rt_fail(err, "%s: embedfs archive index is not sorted by path or repeats a path; the archive is damaged",
                    printable(m->path, m->path_len, shown));
            goto out;
        }
        if (m->data_offset < HEADER_SIZE || m->data_offset > index_offset || m->data_length > index_offset - m->data_offset) {
            rt_fail(err, "%s: content lies outside the data area; the archive is damaged", printable(m->path, m->path_len, shown));
            goto out;
        }
        /* canonical record: the index record without data_offset/data_length */
        root_add(&h, r, CANON_HEAD);
        root_add(&h, r + RECORD_DIGEST, rec_len - RECORD_DIGEST);
    }
    if (pos != index_size) {
        rt_fail(err, "embedfs archive index has %llu trailing bytes; the archive is damaged", (unsigned long long)(index_size - pos));
        goto out;
    }
    /* A member may not also be a directory ("a" and "a/b"): only possible if "a" is a byte
     * prefix of the next path, so the binary search runs only for such members. */
    for (uint64_t i = 0; i + 1 < count; i++) {
        const struct embedfs_member *m = &members[i];
        if (!has_prefix(&members[i + 1], m->path, m->path_len)) continue;
        char key[MAX_PATH_BYTES + 1];
        memcpy(key, m->path, m->path_len);
        key[m->path_len] = '/';
        uint64_t j = lower_bound(&(struct embedfs){.members = members, .count = count}, i + 1, count, key, m->path_len + 1u);
        if (j < count && has_prefix(&members[j], key, m->path_len + 1u)) {
            rt_fail(err, "%s: embedfs archive has this path both as a member and as a directory; the archive is damaged",
                    printable(m->path, m->path_len, shown));
            goto out;
        }
    }
    root_flush(&h);
    unsigned char digest[32];
    SHA256_Final(digest, &h.sha);
    if (memcmp(digest, t + 32, 32) != 0) {
        rt_fail(err, "embedfs archive index does not match its root hash (check: root hash); the archive was modified");
        goto out;
    }
    fs->base = b;
    fs->size = size;
    fs->count = count;
    fs->members = members;
    fs->encrypted_count = encrypted;
    memcpy(fs->root_hash, t + 32, 32);
    members = NULL;
    rc = 0;
out:
    free(members);
    return rc;
}

void embedfs_close(struct embedfs *fs)
{
    if (!fs) return;
    free(fs->members);
    memset(fs, 0, sizeof *fs);
}

/* ------------------------------------------------------------------------------------------ */
/* finding the archive: the PT_NOTE descriptor */

struct descriptor {
    uint64_t offset, vaddr, size;
    unsigned char root[32];
};

/* Walk the notes of one PT_NOTE segment (4-byte aligned). 1: ours, decoded into *d; 0: none;
 * -1: ours but malformed. */
static int parse_notes(const unsigned char *p, size_t len, struct descriptor *d, struct rt_error *err)
{
    size_t pos = 0;
    while (len - pos >= 12) {
        uint32_t namesz = le32(p + pos), descsz = le32(p + pos + 4), type = le32(p + pos + 8);
        uint64_t name_at = pos + 12;
        uint64_t desc_at = name_at + (((uint64_t)namesz + 3) & ~(uint64_t)3);
        uint64_t next = desc_at + (((uint64_t)descsz + 3) & ~(uint64_t)3);
        if (namesz == sizeof NOTE_NAME && type == NT_EMBEDFS && name_at + sizeof NOTE_NAME <= len &&
            memcmp(p + name_at, NOTE_NAME, sizeof NOTE_NAME) == 0) {
            if (descsz < DESCRIPTOR_SIZE || desc_at > len || len - desc_at < DESCRIPTOR_SIZE)
                return rt_fail(err, "embedfs descriptor note is too short; the executable is damaged, re-inject");
            const unsigned char *q = p + desc_at;
            uint32_t version = le32(q);
            if (version != 1)
                return rt_fail(err, "embedfs descriptor version %u is not supported (this reader knows 1); upgrade the runtime", version);
            d->offset = le64(q + 8);
            d->vaddr = le64(q + 16);
            d->size = le64(q + 24);
            memcpy(d->root, q + 56, 32);
            return 1;
        }
        if (next > len) break;
        pos = (size_t)next;
    }
    return 0;
}

/* [vaddr, vaddr + len) inside the file-backed part of a PT_LOAD. */
static int inside_load(const Elf64_Phdr *ph, size_t n, uint64_t vaddr, uint64_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (ph[i].p_type != PT_LOAD) continue;
        uint64_t lo = ph[i].p_vaddr, sz = ph[i].p_filesz;
        if (vaddr >= lo && vaddr - lo <= sz && len <= sz - (vaddr - lo)) return 1;
    }
    return 0;
}

int embedfs_find_self(const void **archive, size_t *size, unsigned char root_hash[32], struct rt_error *err)
{
    unsigned long phdr = getauxval(AT_PHDR), phent = getauxval(AT_PHENT), phnum = getauxval(AT_PHNUM);
    if (!phdr || phent != sizeof(Elf64_Phdr) || !phnum || phnum >= 0xffff)
        return rt_fail(err, "this process exposes no usable program headers (AT_PHDR); run an injected executable");
    const Elf64_Phdr *ph = (const Elf64_Phdr *)phdr;
    const Elf64_Phdr *self = NULL, *top = NULL;
    for (size_t i = 0; i < phnum; i++) {
        if (ph[i].p_type == PT_PHDR && !self) self = &ph[i];
        if (ph[i].p_type == PT_LOAD && (!top || ph[i].p_vaddr > top->p_vaddr)) top = &ph[i];
    }
    if (!top) return rt_fail(err, "the running executable has no PT_LOAD segment");
    uint64_t bias;
    const Elf64_Phdr *only_note = NULL;
    if (self) {
        bias = (uint64_t)phdr - self->p_vaddr;
    } else {
        /* No PT_PHDR (static executables): the injector put the table at the very end of the
         * highest PT_LOAD, right after the 8-aligned descriptor note. Accept that layout only
         * when it is exactly there, so that a static executable without an archive is never
         * read at a guessed address. */
        uint64_t table = (uint64_t)phnum * sizeof(Elf64_Phdr);
        if (top->p_filesz < table) return 0;
        uint64_t table_vaddr = top->p_vaddr + top->p_filesz - table;
        for (size_t i = 0; i < phnum; i++) {
            const Elf64_Phdr *n = &ph[i];
            if (n->p_type != PT_NOTE || !inside_load(top, 1, n->p_vaddr, n->p_filesz)) continue;
            if (((n->p_vaddr + n->p_filesz + 7) & ~(uint64_t)7) == table_vaddr) { only_note = n; break; }
        }
        if (!only_note) return 0;
        bias = (uint64_t)phdr + table - (top->p_vaddr + top->p_filesz);
    }
    for (size_t i = 0; i < phnum; i++) {
        const Elf64_Phdr *n = &ph[i];
        if (n->p_type != PT_NOTE || (only_note && n != only_note)) continue;
        if (n->p_filesz > MAX_NOTE_SEGMENT || !inside_load(ph, phnum, n->p_vaddr, n->p_filesz)) continue;
        struct descriptor d;
        int found = parse_notes((const unsigned char *)(uintptr_t)(bias + n->p_vaddr), n->p_filesz, &d, err);
        if (found < 0) return -1;
        if (!found) continue;
        if (d.size > SIZE_MAX || !inside_load(ph, phnum, d.vaddr, d.size))
            return rt_fail(err, "embedfs descriptor places the archive (%llu bytes at 0x%llx) outside the loaded segments; the executable is damaged, re-inject",
                           (unsigned long long)d.size, (unsigned long long)d.vaddr);
        *archive = (const void *)(uintptr_t)(bias + d.vaddr);
        *size = (size_t)d.size;
        memcpy(root_hash, d.root, 32);
        return 1;
    }
    return 0;
}

int embedfs_find_in_file(int fd, void **archive, size_t *size, unsigned char root_hash[32], struct rt_error *err)
{
    struct stat st;
    if (fstat(fd, &st) != 0) return rt_fail(err, "cannot stat the executable: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) return rt_fail(err, "the executable is not a regular file");
    uint64_t file_size = (uint64_t)st.st_size;
    Elf64_Ehdr eh;
    if (file_size < sizeof eh || pread_full(fd, &eh, sizeof eh, 0) != 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
        return rt_fail(err, "the file is not an ELF executable; give a Linux x86_64 executable");
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_machine != EM_X86_64)
        return rt_fail(err, "the file is not a 64-bit little-endian x86_64 ELF; give an x86_64 executable");
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum == 0xffff)
        return rt_fail(err, "the ELF file has no usable program-header table; give a linked executable");
    uint64_t table = (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr);
    if (eh.e_phoff > file_size || table > file_size - eh.e_phoff)
        return rt_fail(err, "the ELF file is truncated: its program headers end past the file end (%llu bytes)",
                       (unsigned long long)file_size);
    Elf64_Phdr *ph = malloc(table);
    if (!ph) return rt_fail(err, "out of memory for %u program headers", eh.e_phnum);
    if (pread_full(fd, ph, table, eh.e_phoff) != 0) {
        free(ph);
        return rt_fail(err, "cannot read the program headers: %s", strerror(errno));
    }
    int rc = 0;
    for (size_t i = 0; i < eh.e_phnum && rc == 0; i++) {
        const Elf64_Phdr *n = &ph[i];
        if (n->p_type != PT_NOTE || n->p_filesz > MAX_NOTE_SEGMENT || n->p_offset > file_size ||
            n->p_filesz > file_size - n->p_offset || n->p_filesz == 0)
            continue;
        unsigned char *notes = malloc(n->p_filesz);
        if (!notes) { rc = rt_fail(err, "out of memory for a note segment"); break; }
        if (pread_full(fd, notes, n->p_filesz, n->p_offset) != 0) {
            free(notes);
            rc = rt_fail(err, "cannot read a note segment: %s", strerror(errno));
            break;
        }
        struct descriptor d;
        int found = parse_notes(notes, n->p_filesz, &d, err);
        free(notes);
        if (found < 0) { rc = -1; break; }
        if (!found) continue;
        if (d.offset > file_size || d.size > file_size - d.offset) {
            rc = rt_fail(err, "the executable is truncated: its embedfs archive ends past the file end; re-inject");
            break;
        }
        void *buf = malloc(d.size ? d.size : 1);
        if (!buf) { rc = rt_fail(err, "out of memory for a %llu-byte embedfs archive", (unsigned long long)d.size); break; }
        if (pread_full(fd, buf, d.size, d.offset) != 0) {
            free(buf);
            rc = rt_fail(err, "cannot read the embedfs archive: %s", strerror(errno));
            break;
        }
        *archive = buf;
        *size = (size_t)d.size;
        memcpy(root_hash, d.root, 32);
        rc = 1;
    }
    free(ph);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* queries */

const struct embedfs_member *embedfs_lookup(const struct embedfs *fs, const char *path, size_t len)
{
    if (len == 0 || len > MAX_PATH_BYTES) return NULL;
    uint64_t i = lower_bound(fs, 0, fs->count, path, len);
    if (i < fs->count && fs->members[i].path_len == len && memcmp(fs->members[i].path, path, len) == 0)
        return &fs->members[i];
    return NULL;
}

int embedfs_is_dir(const struct embedfs *fs, const char *path, size_t len)
{
    if (len == 0) return 1;
    if (len >= MAX_PATH_BYTES) return 0; /* "path/" plus a name would exceed the limit */
    char key[MAX_PATH_BYTES + 1];
    memcpy(key, path, len);
    key[len] = '/';
    uint64_t i = lower_bound(fs, 0, fs->count, key, len + 1);
    return i < fs->count && has_prefix(&fs->members[i], key, len + 1);
}

static size_t common_prefix(const struct embedfs_member *a, const struct embedfs_member *b)
{
    size_t n = a->path_len < b->path_len ? a->path_len : b->path_len, i = 0;
    while (i < n && a->path[i] == b->path[i]) i++;
    return i;
}

/* Children are found in the order of their paths in the index, which is the order of "name"
 * for a member and "name/" for a directory; by name, a directory "x" sorts before "x.y" and
 * "x-y" (bytes below '/'), which the index has before "x/...". Such a directory is given just
 * before the first child whose name starts with it and continues with a byte below '/' (where
 * its name sorts), and skipped where its subtree begins. Each directory's subtree is skipped
 * with one binary search. A path that is not a directory has no children. */
int embedfs_list_dir(const struct embedfs *fs, const char *path, size_t len, embedfs_child_fn fn, void *ctx)
{
    char key[MAX_PATH_BYTES + 2];
    size_t plen = 0;
    uint64_t lo = 0, hi = fs->count;
    if (len) {
        if (len >= MAX_PATH_BYTES) return 0;
        memcpy(key, path, len);
        key[len] = '/';
        plen = len + 1;
        lo = lower_bound(fs, 0, fs->count, key, plen);
        hi = prefix_end(fs, lo, fs->count, key, plen);
    }
    uint64_t i = lo;
    while (i < hi) {
        const struct embedfs_member *m = &fs->members[i];
        const char *name = m->path + plen;
        size_t rest = m->path_len - plen;
        const char *slash = memchr(name, '/', rest);
        size_t nlen = slash ? (size_t)(slash - name) : rest;
        size_t shared = i > lo ? common_prefix(&fs->members[i - 1], m) : 0;
        /* directories whose name is a prefix of this child's, cut before a byte below '/', not
         * given yet (the previous member does not start with them) */
        size_t k = shared >= plen ? shared - plen + 1 : 1;
        for (; k < nlen; k++) {
            if ((unsigned char)name[k] >= '/') continue;
            char dkey[MAX_PATH_BYTES + 1];
            memcpy(dkey, m->path, plen + k);
            dkey[plen + k] = '/';
            uint64_t j = lower_bound(fs, i + 1, hi, dkey, plen + k + 1);
            if (j < hi && has_prefix(&fs->members[j], dkey, plen + k + 1)) {
                int r = fn(ctx, name, k, 1, NULL);
                if (r) return r;
            }
        }
        if (!slash) {
            int r = fn(ctx, name, nlen, 0, m);
            if (r) return r;
            i++;
            continue;
        }
        if (shared < plen + nlen) { /* else given before the entries it prefixes */
            int r = fn(ctx, name, nlen, 1, NULL);
            if (r) return r;
        }
        i = prefix_end(fs, i + 1, hi, m->path, plen + nlen + 1);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* read */

/* Decompress the zstd frames [src, src + len) into out (exactly cap bytes expected), hashing
 * the output into sha when it is not NULL. */
static int inflate_frames(const char *name, const unsigned char *src, size_t len, unsigned char *out, size_t cap,
                          SHA256_CTX *sha, struct rt_error *err)
{
    int owned;
    ZSTD_DCtx *dctx = thread_dctx(&owned);
    if (!dctx) return rt_fail(err, "%s: out of memory for a zstd decompression context", name);
    int rc = -1;
    size_t left = len, done = 0;
    while (left) {
        size_t fsz = ZSTD_findFrameCompressedSize(src, left);
        if (ZSTD_isError(fsz)) {
            rt_fail(err, "%s: compressed content is corrupt at byte %zu of its frames (check: zstd frame: %s); the archive was modified",
                    name, len - left, ZSTD_getErrorName(fsz));
            goto out;
        }
        size_t n = ZSTD_decompressDCtx(dctx, out + done, cap - done, src, fsz);
        if (ZSTD_isError(n)) {
            if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall)
                rt_fail(err, "%s: content is more than the %zu bytes the index says (check: file size); the archive was modified",
                        name, cap);
            else
                rt_fail(err, "%s: compressed content is corrupt (check: zstd frame: %s); the archive was modified",
                        name, ZSTD_getErrorName(n));
            goto out;
        }
        if (n && sha) SHA256_Update(sha, out + done, n);
        done += n;
        src += fsz;
        left -= fsz;
    }
    if (done != cap) {
        rt_fail(err, "%s: content is %zu bytes, index says %zu (check: file size); the archive was modified", name, done, cap);
        goto out;
    }
    rc = 0;
out:
    if (owned) ZSTD_freeDCtx(dctx);
    return rc;
}

/* AES-256-GCM open of stored = nonce || ciphertext || tag into frames (len - 28 bytes), under
 * the encryption subkey HKDF-Expand-SHA256(code_key, ENCRYPTION_INFO) (one HMAC block), with
 * associated data AD_DOMAIN || u16 path length || path (embedfs/codecrypt.py). */
static int open_sealed(const struct embedfs_member *m, const char *name, const unsigned char *stored, size_t len,
                       const unsigned char *code_key, unsigned char *frames, struct rt_error *err)
{
    unsigned char info[sizeof ENCRYPTION_INFO], subkey[32];
    memcpy(info, ENCRYPTION_INFO, sizeof ENCRYPTION_INFO - 1);
    info[sizeof ENCRYPTION_INFO - 1] = 1;  /* HKDF-Expand: T(1) = HMAC(K, info || 0x01) */
    unsigned int sublen = 0;
    if (!HMAC(EVP_sha256(), code_key, EMBEDFS_CODE_KEY_SIZE, info, sizeof info, subkey, &sublen) || sublen != 32)
        return rt_fail(err, "%s: cannot derive the code encryption key", name);
    unsigned char ad_head[sizeof AD_DOMAIN + 2];
    memcpy(ad_head, AD_DOMAIN, sizeof AD_DOMAIN);
    ad_head[sizeof AD_DOMAIN] = (unsigned char)(m->path_len & 0xff);
    ad_head[sizeof AD_DOMAIN + 1] = (unsigned char)(m->path_len >> 8);
    size_t clen = len - NONCE_SIZE - TAG_SIZE;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int outl = 0, ok = ctx != NULL;
    ok = ok && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_SIZE, NULL) == 1;
    ok = ok && EVP_DecryptInit_ex(ctx, NULL, NULL, subkey, stored) == 1;
    ok = ok && EVP_DecryptUpdate(ctx, NULL, &outl, ad_head, sizeof ad_head) == 1;
    ok = ok && EVP_DecryptUpdate(ctx, NULL, &outl, (const unsigned char *)m->path, m->path_len) == 1;
    /* in pieces: EVP takes an int length */
    for (size_t at = 0; ok && at < clen;) {
        int piece = clen - at > (1u << 30) ? 1 << 30 : (int)(clen - at);
        ok = EVP_DecryptUpdate(ctx, frames + at, &outl, stored + NONCE_SIZE + at, piece) == 1 && outl == piece;
        at += (size_t)piece;
    }
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, (void *)(stored + len - TAG_SIZE)) == 1;
    ok = ok && EVP_DecryptFinal_ex(ctx, frames + clen, &outl) == 1;
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(subkey, sizeof subkey);
    if (!ok)
        return rt_fail(err, "%s: encrypted content does not decrypt under this code key (check: code decryption; wrong key, or the archive was modified)",
                       name);
    return 0;
}

int embedfs_read(const struct embedfs *fs, const struct embedfs_member *m, unsigned char *out, struct rt_error *err)
{
    return embedfs_read_keyed(fs, m, NULL, out, err);
}

int embedfs_read_keyed(const struct embedfs *fs, const struct embedfs_member *m, const unsigned char *code_key,
                       unsigned char *out, struct rt_error *err)
{
    char shown[204];
    const char *name = printable(m->path, m->path_len, shown);
    if (m->kind == EMBEDFS_SYMLINK) {
        /* its content is its target (size == link_len, checked on open) */
        unsigned char digest[32];
        SHA256((const unsigned char *)m->link, m->link_len, digest);
        if (memcmp(digest, m->sha256, 32) != 0)
            return rt_fail(err, "%s: symlink target does not match its SHA-256 (check: file sha256); the archive was modified", name);
        memcpy(out, m->link, m->link_len);
        return 0;
    }
    if (m->kind != EMBEDFS_FILE || m->data_offset > fs->size || m->data_length > fs->size - m->data_offset)
        return rt_fail(err, "%s: not a regular file of this archive", name);
    if (m->size > SIZE_MAX) return rt_fail(err, "%s: %llu bytes do not fit in memory", name, (unsigned long long)m->size);
    const unsigned char *src = fs->base + m->data_offset;
    size_t len = (size_t)m->data_length;
    unsigned char digest[32];
    if (m->encrypted) {
        /* the stored bytes are what the root hash (and MRENCLAVE) cover: checked before the key is used */
        SHA256(src, len, digest);
        if (memcmp(digest, m->sha256, 32) != 0)
            return rt_fail(err, "%s: encrypted content does not match its SHA-256 (check: file sha256); the archive was modified", name);
        if (!code_key)
            return rt_fail(err, "%s: is encrypted code and the service has no code key (keys.json code_key)", name);
        if (len < NONCE_SIZE + TAG_SIZE) return rt_fail(err, "%s: encrypted content lacks nonce and tag", name);
        size_t flen = len - NONCE_SIZE - TAG_SIZE;
        unsigned char *frames = malloc(flen ? flen : 1);
        if (!frames) return rt_fail(err, "%s: out of memory for %zu encrypted bytes", name, flen);
        int rc = open_sealed(m, name, src, len, code_key, frames, err);
        if (rc == 0) rc = inflate_frames(name, frames, flen, out, (size_t)m->size, NULL, err);
        OPENSSL_cleanse(frames, flen);
        free(frames);
        return rc;
    }
    SHA256_CTX sha;
    SHA256_Init(&sha);
    if (inflate_frames(name, src, len, out, (size_t)m->size, &sha, err) != 0) return -1;
    SHA256_Final(digest, &sha);
    if (memcmp(digest, m->sha256, 32) != 0)
        return rt_fail(err, "%s: content does not match its SHA-256 (check: file sha256); the archive was modified", name);
    return 0;
}
