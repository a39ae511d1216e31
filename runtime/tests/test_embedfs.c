/* Unit tests of src/embedfs.c, run by `make check`: archives built here (a small packer of the
 * format of docs/embedfs-format.md), directory listing order, every check of embedfs_open and
 * embedfs_read, every truncation, and hostile mutations (with the root hash recomputed so that
 * they get past it) that must be refused or read safely, never crash, and directory listings
 * against brute force on random trees. Exit 1 on failure. ROUNDS=N sets the number of hostile
 * mutations (20000); worth running with -fsanitize=address,undefined after a change. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "embedfs.h"

static int failures;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

/* ---- a small packer ---------------------------------------------------------------------- */

struct entry {
    const char *path;
    int kind;               /* EMBEDFS_FILE or EMBEDFS_SYMLINK */
    const char *link;
    const unsigned char *data;
    size_t size;
};

struct buf { unsigned char *p; size_t n, cap; };

static void put(struct buf *b, const void *p, size_t n)
{
    if (!n) return;
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 4096;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void sha(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len;
    EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

/* The root hash of an index (lenient walk; returns -1 if the index cannot be walked). */
static int root_of(const unsigned char *index, size_t size, uint64_t count, unsigned char out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, "embedfs-root-v1", 16);
    size_t pos = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (size - pos < 73) { EVP_MD_CTX_free(md); return -1; }
        size_t rec = 73 + (size_t)le16(index + pos + 1) + le16(index + pos + 3);
        if (size - pos < rec) { EVP_MD_CTX_free(md); return -1; }
        EVP_DigestUpdate(md, index + pos, 25);
        EVP_DigestUpdate(md, index + pos + 41, rec - 41);
        pos += rec;
    }
    unsigned int len;
    EVP_DigestFinal_ex(md, out, &len);
    EVP_MD_CTX_free(md);
    return 0;
}

/* Entries must be given sorted. chunk: uncompressed bytes per frame. */
static unsigned char *pack(const struct entry *e, size_t n, size_t chunk, size_t *size)
{
    struct buf out = {0}, index = {0};
    unsigned char header[16] = "EMBEDFS";
    put16(header + 8, 1);
    put16(header + 10, 0);
    put32(header + 12, (uint32_t)chunk);
    put(&out, header, 16);
    for (size_t i = 0; i < n; i++) {
        uint64_t start = out.n;
        const unsigned char *content = e[i].kind == EMBEDFS_FILE ? e[i].data : (const unsigned char *)e[i].link;
        size_t size_i = e[i].kind == EMBEDFS_FILE ? e[i].size : strlen(e[i].link);
        if (e[i].kind == EMBEDFS_FILE) {
            for (size_t at = 0; at < size_i; at += chunk) {
                size_t len = size_i - at < chunk ? size_i - at : chunk;
                size_t cap = ZSTD_compressBound(len);
                unsigned char *frame = malloc(cap);
                size_t z = ZSTD_compress(frame, cap, content + at, len, 3);
                if (ZSTD_isError(z)) abort();
                put(&out, frame, z);
                free(frame);
            }
        }
        unsigned char rec[73];
        size_t plen = strlen(e[i].path), llen = e[i].kind == EMBEDFS_SYMLINK ? strlen(e[i].link) : 0;
        rec[0] = (unsigned char)e[i].kind;
        put16(rec + 1, (uint16_t)plen);
        put16(rec + 3, (uint16_t)llen);
        put32(rec + 5, e[i].kind == EMBEDFS_FILE ? 0644 : 0777);
        put32(rec + 9, 0);
        put32(rec + 13, 0);
        put64(rec + 17, size_i);
        put64(rec + 25, start);
        put64(rec + 33, out.n - start);
        sha(content, size_i, rec + 41);
        put(&index, rec, 73);
        put(&index, e[i].path, plen);
        if (llen) put(&index, e[i].link, llen);
    }
    uint64_t index_offset = out.n;
    put(&out, index.p, index.n);
    unsigned char trailer[64];
    memcpy(trailer, "EMBEDFSI", 8);
    put64(trailer + 8, index_offset);
    put64(trailer + 16, index.n);
    put64(trailer + 24, n);
    root_of(index.p, index.n, n, trailer + 32);
    put(&out, trailer, 64);
    free(index.p);
    *size = out.n;
    return out.p;
}

/* Recompute the trailer's root hash after the index was changed (a hostile archive whose
 * author also controls the root hash). */
static void reseal(unsigned char *a, size_t size)
{
    if (size < 80) return;
    unsigned char *t = a + size - 64;
    uint64_t off = le64(t + 8), isz = le64(t + 16), count = le64(t + 24);
    if (off > size - 64 || isz != size - 64 - off || count > isz / 73) return;
    root_of(a + off, isz, count, t + 32);
}

/* ---- listing ------------------------------------------------------------------------------ */

struct listing { char text[4096]; size_t n; };

static int collect(void *ctx, const char *name, size_t len, int is_dir, const struct embedfs_member *m)
{
    struct listing *l = ctx;
    int w = snprintf(l->text + l->n, sizeof l->text - l->n, "%s%.*s%s", l->n ? " " : "", (int)len, name,
                     is_dir ? "/" : (m && m->kind == EMBEDFS_SYMLINK ? "@" : ""));
    if (w > 0) l->n += (size_t)w;
    return 0;
}

static const char *list(const struct embedfs *fs, const char *dir)
{
    static struct listing l;
    l.n = 0;
    l.text[0] = '\0';
    embedfs_list_dir(fs, dir, strlen(dir), collect, &l);
    return l.text;
}

/* Exercise every query on whatever opened; must not crash. */
static void walk_all(const struct embedfs *fs)
{
    struct listing l;
    for (uint64_t i = 0; i < fs->count; i++) {
        const struct embedfs_member *m = &fs->members[i];
        l.n = 0;
        embedfs_list_dir(fs, m->path, m->path_len, collect, &l);
        for (size_t k = 0; k < m->path_len; k++)
            if (m->path[k] == '/') { embedfs_is_dir(fs, m->path, k); l.n = 0; embedfs_list_dir(fs, m->path, k, collect, &l); }
        embedfs_lookup(fs, m->path, m->path_len);
        if (m->size <= (1u << 24)) {
            unsigned char *out = malloc(m->size + 1);
            struct rt_error err;
            embedfs_read(fs, m, out, &err);
            free(out);
        }
    }
    l.n = 0;
    embedfs_list_dir(fs, "", 0, collect, &l);
}

/* ---- tests -------------------------------------------------------------------------------- */

static unsigned char big[300 * 1000 + 17];

static void test_good_archive(void)
{
    for (size_t i = 0; i < sizeof big; i++) big[i] = (unsigned char)(i * 2654435761u >> 13);
    static const unsigned char hello[] = "hello\n";
    /* sorted by bytes: '-' (0x2d) < '.' (0x2e) < '/' (0x2f) */
    const struct entry e[] = {
        {"a-b", EMBEDFS_FILE, NULL, hello, 6},
        {"a.b/x", EMBEDFS_FILE, NULL, hello, 6},
        {"a/b", EMBEDFS_FILE, NULL, hello, 5},
        {"a/c/d", EMBEDFS_SYMLINK, "../b", NULL, 0},
        {"a/c/e", EMBEDFS_FILE, NULL, hello, 0},
        {"a/c.x/f", EMBEDFS_FILE, NULL, hello, 1},
        {"a/c0", EMBEDFS_FILE, NULL, hello, 2},
        {"big", EMBEDFS_FILE, NULL, big, sizeof big},
        {"lib/python3.11/os.py", EMBEDFS_FILE, NULL, hello, 3},
        {"lib/python3/dist", EMBEDFS_FILE, NULL, hello, 4},
        {"lib/python3/x.y", EMBEDFS_FILE, NULL, hello, 4},
        {"lib/python3-x", EMBEDFS_FILE, NULL, hello, 4},
        {"z", EMBEDFS_SYMLINK, "a/b", NULL, 0},
    };
    size_t n = sizeof e / sizeof e[0];
    /* "lib/python3-x" < "lib/python3.11/..." < "lib/python3/..." by bytes: reorder */
    struct entry sorted[sizeof e / sizeof e[0]];
    memcpy(sorted, e, sizeof e);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(sorted[j - 1].path, sorted[j].path) > 0; j--) {
            struct entry t = sorted[j]; sorted[j] = sorted[j - 1]; sorted[j - 1] = t;
        }
    size_t size;
    unsigned char *a = pack(sorted, n, 1 << 16, &size); /* several frames */
    struct embedfs fs;
    struct rt_error err = {{0}};
    CHECK(embedfs_open(&fs, a, size, &err) == 0, "open: %s", err.msg);
    CHECK(fs.count == n, "count %llu", (unsigned long long)fs.count);

    CHECK(!strcmp(list(&fs, ""), "a/ a-b a.b/ big lib/ z@"), "root: %s", list(&fs, ""));
    CHECK(!strcmp(list(&fs, "a"), "b c/ c.x/ c0"), "a: %s", list(&fs, "a"));
    CHECK(!strcmp(list(&fs, "a/c"), "d@ e"), "a/c: %s", list(&fs, "a/c"));
    CHECK(!strcmp(list(&fs, "lib"), "python3/ python3-x python3.11/"), "lib: %s", list(&fs, "lib"));
    CHECK(!strcmp(list(&fs, "lib/python3"), "dist x.y"), "lib/python3: %s", list(&fs, "lib/python3"));
    CHECK(!strcmp(list(&fs, "big"), ""), "file listed: %s", list(&fs, "big"));
    CHECK(!strcmp(list(&fs, "nope"), ""), "missing listed");
    CHECK(!strcmp(list(&fs, "a/c."), ""), "partial name listed");

    CHECK(embedfs_is_dir(&fs, "", 0) && embedfs_is_dir(&fs, "a", 1) && embedfs_is_dir(&fs, "a/c", 3) &&
          embedfs_is_dir(&fs, "lib/python3", 11) && embedfs_is_dir(&fs, "a.b", 3), "is_dir");
    CHECK(!embedfs_is_dir(&fs, "a-b", 3) && !embedfs_is_dir(&fs, "a/b", 3) && !embedfs_is_dir(&fs, "a/c/d", 5) &&
          !embedfs_is_dir(&fs, "lib/python", 10) && !embedfs_is_dir(&fs, "q", 1), "not is_dir");
    CHECK(embedfs_lookup(&fs, "", 0) == NULL && embedfs_lookup(&fs, "a", 1) == NULL && embedfs_lookup(&fs, "a/c", 3) == NULL,
          "dirs are not members");
    for (size_t i = 0; i < n; i++) {
        const struct embedfs_member *m = embedfs_lookup(&fs, sorted[i].path, strlen(sorted[i].path));
        CHECK(m && m->kind == sorted[i].kind, "lookup %s", sorted[i].path);
        if (!m) continue;
        unsigned char *out = malloc(m->size + 1);
        CHECK(embedfs_read(&fs, m, out, &err) == 0, "read %s: %s", sorted[i].path, err.msg);
        const void *want = m->kind == EMBEDFS_FILE ? (const void *)sorted[i].data : sorted[i].link;
        CHECK(memcmp(out, want, m->size) == 0, "content of %s", sorted[i].path);
        free(out);
    }
    /* a corrupt data byte: zstd or sha256 error naming the path */
    const struct embedfs_member *bm = embedfs_lookup(&fs, "big", 3);
    unsigned char *out = malloc(bm->size);
    for (uint64_t at = 0; at < bm->data_length; at += bm->data_length / 7 + 1) {
        a[bm->data_offset + at] ^= 0x55;
        CHECK(embedfs_read(&fs, bm, out, &err) != 0 && strstr(err.msg, "big:") &&
              (strstr(err.msg, "zstd frame") || strstr(err.msg, "file sha256") || strstr(err.msg, "file size")),
              "corrupt big at %llu: %s", (unsigned long long)at, err.msg);
        a[bm->data_offset + at] ^= 0x55;
    }
    CHECK(embedfs_read(&fs, bm, out, &err) == 0, "big restored: %s", err.msg);
    free(out);
    embedfs_close(&fs);

    /* every truncation is refused */
    for (size_t cut = 0; cut < size; cut += cut < 4096 || size - cut < 4096 ? 1 : 997) {
        CHECK(embedfs_open(&fs, a, cut, &err) != 0, "truncated to %zu opened", cut);
    }
    /* every single index or trailer byte flipped: refused, or (data_offset/data_length, which
     * the root hash does not cover) the member's read fails */
    uint64_t index_offset = le64(a + size - 56);
    for (size_t at = index_offset; at < size; at++) {
        /* where no data is, data_offset means nothing */
        int idle = 0;
        for (size_t i = 0, rec = index_offset; i < n; rec += 73 + le16(a + rec + 1) + le16(a + rec + 3), i++)
            if (at >= rec + 25 && at < rec + 33 && le64(a + rec + 33) == 0) idle = 1;
        if (idle) continue;
        a[at] ^= 0x01;
        if (embedfs_open(&fs, a, size, &err) == 0) {
            int bad = 0;
            for (uint64_t i = 0; i < fs.count; i++) {
                unsigned char *o = malloc(fs.members[i].size + 1);
                bad |= embedfs_read(&fs, &fs.members[i], o, &err) != 0;
                free(o);
            }
            CHECK(bad, "index byte %zu flipped went unnoticed", at);
            embedfs_close(&fs);
        }
        a[at] ^= 0x01;
    }
    CHECK(embedfs_open(&fs, a, size, &err) == 0, "restored: %s", err.msg);
    embedfs_close(&fs);
    free(a);
}

static void expect_refused(const struct entry *e, size_t n, const char *what, const char *needle)
{
    size_t size;
    unsigned char *a = pack(e, n, 1 << 20, &size);
    struct embedfs fs;
    struct rt_error err = {{0}};
    int rc = embedfs_open(&fs, a, size, &err);
    CHECK(rc != 0 && strstr(err.msg, needle), "%s: rc %d, %s", what, rc, err.msg);
    if (rc == 0) embedfs_close(&fs);
    free(a);
}

static void test_refused(void)
{
    static const unsigned char x[] = "x";
#define F(p) {p, EMBEDFS_FILE, NULL, x, 1}
    const struct entry dup[] = {F("a"), F("a")};
    expect_refused(dup, 2, "duplicate", "not sorted");
    const struct entry unsorted[] = {F("b"), F("a")};
    expect_refused(unsorted, 2, "unsorted", "not sorted");
    const struct entry both[] = {F("a"), F("a/b")};
    expect_refused(both, 2, "file and dir", "both as a member and as a directory");
    const struct entry both2[] = {F("a"), F("a-b"), F("a.c/d"), F("a/b")};
    expect_refused(both2, 4, "file and dir, apart", "both as a member and as a directory");
    const char *unclean[] = {"/a", "a//b", "./a", "a/.", "a/../b", "..", "a/", ""};
    for (size_t i = 0; i < sizeof unclean / sizeof *unclean; i++) {
        const struct entry e[] = {F(unclean[i])};
        expect_refused(e, 1, unclean[i], "unclean path");
    }
    const struct entry emptylink[] = {{"l", EMBEDFS_SYMLINK, "", NULL, 0}};
    expect_refused(emptylink, 1, "empty link", "malformed");
#undef F
    /* a header, trailer or record field changed, root hash recomputed */
    const struct entry ok[] = {{"d/f", EMBEDFS_FILE, NULL, x, 1}, {"d/l", EMBEDFS_SYMLINK, "f", NULL, 0}};
    size_t size;
    unsigned char *a = pack(ok, 2, 1 << 20, &size);
    struct embedfs fs;
    struct rt_error err;
    uint64_t io = le64(a + size - 56);
    struct { size_t at; unsigned char v; const char *needle; } cases[] = {
        {0, 'X', "bad magic"}, {8, 3, "version"}, {10, 1, "flags"}, {10, 2, "flags"}, {size - 64, 'X', "trailer magic"},
        {io, 3, "unknown kind"}, {io + 5 + 1, 0x10, "mode"}, {io + 25 + 6, 1, "outside the data area"},
        {io + 33 + 5, 1, "outside the data area"}, {size - 64 + 24, 9, "more than its"},
        {size - 64 + 24, 1, "trailing bytes"}, {size - 64 + 8, 0, "outside the archive"},
        {io + 76 + 73, '/', "unclean path"}, {io + 76 + 75, 0, "unclean path"},
        {io + 76 + 73, 'a', "not sorted"}, {io + 76 + 5 + 1, 0x10, "mode"}, {io + 76 + 3, 0, "malformed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        unsigned char *b = malloc(size);
        memcpy(b, a, size);
        b[cases[i].at] = cases[i].v;
        reseal(b, size);
        int rc = embedfs_open(&fs, b, size, &err);
        CHECK(rc != 0 && strstr(err.msg, cases[i].needle), "case %zu (%s): rc %d, %s", i, cases[i].needle, rc, err.msg);
        if (rc == 0) embedfs_close(&fs);
        free(b);
    }
    /* root hash */
    a[size - 1] ^= 1;
    CHECK(embedfs_open(&fs, a, size, &err) != 0 && strstr(err.msg, "root hash"), "root hash: %s", err.msg);
    free(a);
    CHECK(embedfs_open(&fs, NULL, 0, &err) != 0, "NULL opened");
    /* the empty archive is fine */
    a = pack(NULL, 0, 1 << 20, &size);
    CHECK(embedfs_open(&fs, a, size, &err) == 0 && fs.count == 0 && !strcmp(list(&fs, ""), "") &&
          embedfs_is_dir(&fs, "", 0) && !embedfs_is_dir(&fs, "a", 1), "empty: %s", err.msg);
    embedfs_close(&fs);
    free(a);
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void test_hostile_mutations(void)
{
    static const unsigned char hello[] = "hello world hello world hello world";
    const struct entry e[] = {
        {"a-b", EMBEDFS_FILE, NULL, hello, 35}, {"a/b", EMBEDFS_FILE, NULL, hello, 12},
        {"a/c.x/f", EMBEDFS_FILE, NULL, hello, 7}, {"a/c/d", EMBEDFS_SYMLINK, "../b", NULL, 0},
        {"a/c/e", EMBEDFS_FILE, NULL, hello, 0}, {"big", EMBEDFS_FILE, NULL, big, 30000},
    };
    size_t size;
    unsigned char *a = pack(e, 6, 10000, &size);
    uint64_t io = le64(a + size - 56);
    unsigned char *b = malloc(size);
    int opened = 0;
    for (int round = 0; round < (getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 20000); round++) {
        memcpy(b, a, size);
        /* round % 3: 0 the data only (opens; reads must fail cleanly), 1 the index and trailer
         * with the root hash recomputed, 2 anywhere */
        int flips = 1 + (int)(next() % 4);
        for (int f = 0; f < flips; f++) {
            size_t at = round % 3 == 0 ? 16 + next() % (io - 16) : round % 3 == 1 ? io + next() % (size - io) : next() % size;
            b[at] = next() % 2 ? (unsigned char)next() : b[at] ^ (unsigned char)(1u << (next() % 8));
        }
        if (round % 3 == 1) reseal(b, size);
        struct embedfs fs;
        struct rt_error err;
        /* also cut the archive sometimes: a hostile size */
        size_t len = next() % 16 == 0 ? (size_t)(next() % size) : size;
        /* a cut archive in a buffer of exactly its size, so that a sanitizer sees overreads */
        unsigned char *view = len == size ? b : memcpy(malloc(len ? len : 1), b, len);
        if (embedfs_open(&fs, view, len, &err) == 0) {
            opened++;
            walk_all(&fs);
            embedfs_close(&fs);
        }
        if (view != b) free(view);
    }
    CHECK(opened > 6000, "only %d mutated archives opened: the fuzzing does not get past the checks", opened);
    free(b);
    free(a);
}

/* list_dir, is_dir and lookup against brute force on random trees over an alphabet that sorts
 * around '/' (' ', '-', '.' below it, '0', 'a' above), so that names like "a", "a-", "a.0" and
 * directories among them meet in every order. */
struct seen { char names[256][16]; int dirs[256]; int n; };

static int record(void *ctx, const char *name, size_t len, int is_dir, const struct embedfs_member *m)
{
    struct seen *s = ctx;
    (void)m;
    if (s->n < 256 && len < 16) {
        memcpy(s->names[s->n], name, len);
        s->names[s->n][len] = '\0';
        s->dirs[s->n] = is_dir;
    }
    s->n++;
    return 0;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_listing_against_brute_force(void)
{
    static const char alphabet[] = " -.0a";
    static char paths[160][16];
    for (int round = 0; round < 300; round++) {
        int n = 0;
        int want = 1 + (int)(next() % 150);
        while (n < want) {
            char p[16];
            size_t len = 0;
            int depth = 1 + (int)(next() % 3);
            for (int d = 0; d < depth; d++) {
                if (d) p[len++] = '/';
                int clen = 1 + (int)(next() % 3);
                for (int c = 0; c < clen; c++) p[len++] = alphabet[next() % 5];
            }
            p[len] = '\0';
            char padded[20];
            snprintf(padded, sizeof padded, "/%s/", p);
            if (strstr(padded, "/./") || strstr(padded, "/../")) continue; /* unclean */
            int dup = 0;
            for (int i = 0; i < n; i++) dup |= !strcmp(paths[i], p);
            if (!dup) strcpy(paths[n++], p);
        }
        /* drop members that are also directories of others */
        char *kept[160];
        int k = 0;
        for (int i = 0; i < n; i++) {
            size_t len = strlen(paths[i]);
            int conflict = 0;
            for (int j = 0; j < n; j++)
                conflict |= !strncmp(paths[j], paths[i], len) && paths[j][len] == '/';
            if (!conflict) kept[k++] = paths[i];
        }
        qsort(kept, (size_t)k, sizeof *kept, by_name);
        struct entry e[160];
        for (int i = 0; i < k; i++) e[i] = (struct entry){kept[i], EMBEDFS_FILE, NULL, (const unsigned char *)"", 0};
        size_t size;
        unsigned char *a = pack(e, (size_t)k, 1 << 20, &size);
        struct embedfs fs;
        struct rt_error err;
        if (embedfs_open(&fs, a, size, &err) != 0) {
            CHECK(0, "random tree %d: %s", round, err.msg);
            free(a);
            continue;
        }
        /* every directory: "" and each proper prefix ending before a '/' */
        char dirs[400][16];
        int nd = 0;
        strcpy(dirs[nd++], "");
        for (int i = 0; i < k; i++)
            for (size_t c = 0; kept[i][c]; c++)
                if (kept[i][c] == '/' && nd < 400) { memcpy(dirs[nd], kept[i], c); dirs[nd++][c] = '\0'; }
        for (int d = 0; d < nd; d++) {
            const char *dir = dirs[d];
            size_t dlen = strlen(dir), plen = dlen ? dlen + 1 : 0;
            char names[160][16];
            int isdir[160], nn = 0;
            for (int i = 0; i < k; i++) {
                if (dlen && (strncmp(kept[i], dir, dlen) || kept[i][dlen] != '/')) continue;
                const char *rest = kept[i] + plen, *slash = strchr(rest, '/');
                size_t len = slash ? (size_t)(slash - rest) : strlen(rest);
                int dup = 0;
                for (int j = 0; j < nn; j++) dup |= strlen(names[j]) == len && !strncmp(names[j], rest, len);
                if (dup) continue;
                memcpy(names[nn], rest, len);
                names[nn][len] = '\0';
                isdir[nn++] = slash != NULL;
            }
            for (int i = 1; i < nn; i++) /* sort by bytes, carrying the flag */
                for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
                    char t[16]; int f = isdir[j];
                    strcpy(t, names[j]); strcpy(names[j], names[j - 1]); strcpy(names[j - 1], t);
                    isdir[j] = isdir[j - 1]; isdir[j - 1] = f;
                }
            struct seen got = {.n = 0};
            embedfs_list_dir(&fs, dir, dlen, record, &got);
            int same = got.n == nn;
            for (int i = 0; same && i < nn; i++) same = !strcmp(got.names[i], names[i]) && got.dirs[i] == isdir[i];
            CHECK(same, "round %d: listing of '%s' has %d children, %d expected (first differing shown below)", round, dir, got.n, nn);
            if (!same) {
                for (int i = 0; i < nn || i < got.n; i++)
                    fprintf(stderr, "  %-8s%s | %s%s\n", i < got.n ? got.names[i] : "", i < got.n && got.dirs[i] ? "/" : "",
                            i < nn ? names[i] : "", i < nn && isdir[i] ? "/" : "");
                break;
            }
            CHECK(embedfs_is_dir(&fs, dir, dlen) && !embedfs_lookup(&fs, dir, dlen), "round %d: '%s' is a directory", round, dir);
            for (int i = 0; i < nn; i++) {
                char child[40];
                int cl = snprintf(child, sizeof child, "%s%s%s", dir, dlen ? "/" : "", names[i]);
                CHECK(embedfs_is_dir(&fs, child, (size_t)cl) == isdir[i] && (embedfs_lookup(&fs, child, (size_t)cl) == NULL) == isdir[i],
                      "round %d: '%s' kind", round, child);
                child[cl++] = '0'; /* a name no one has: neither member nor directory, mostly */
                int exists = 0;
                for (int j = 0; j < k; j++) exists |= !strncmp(kept[j], child, (size_t)cl) && (kept[j][cl] == '\0' || kept[j][cl] == '/');
                if (!exists)
                    CHECK(!embedfs_is_dir(&fs, child, (size_t)cl) && !embedfs_lookup(&fs, child, (size_t)cl), "round %d: '%.*s' exists", round, cl, child);
            }
        }
        embedfs_close(&fs);
        free(a);
    }
}

static void test_find(void)
{
    const void *arc;
    void *owned = NULL;
    size_t size;
    unsigned char root[32];
    struct rt_error err = {{0}};
    CHECK(embedfs_find_self(&arc, &size, root, &err) == 0, "this test carries no archive: %s", err.msg);
    int fd = open("/proc/self/exe", O_RDONLY);
    CHECK(embedfs_find_in_file(fd, &owned, &size, root, &err) == 0, "no archive in the file: %s", err.msg);
    close(fd);
    fd = open("/proc/self/status", O_RDONLY);
    CHECK(embedfs_find_in_file(fd, &owned, &size, root, &err) < 0, "not ELF accepted");
    close(fd);
}

int main(void)
{
    test_good_archive();
    test_refused();
    test_hostile_mutations();
    test_listing_against_brute_force();
    test_find();
    if (failures) {
        fprintf(stderr, "test_embedfs: %d failed\n", failures);
        return 1;
    }
    printf("test_embedfs: all passed\n");
    return 0;
}
