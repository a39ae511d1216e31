/* Unit tests of src/fspf.c (make check): protect/open round trips for edge sizes in every
 * protection and key length, save/load, lookups, tamper detection, and a mutation fuzz of the
 * fspf body (sealed with the key so that it reaches the field checks). Build it with
 * CFLAGS="-O1 -g -fsanitize=address,undefined" to check memory safety on hostile input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "fspf.h"

static int failures;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            fprintf(stderr, "%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int memfd_with(const unsigned char *data, size_t len)
{
    int fd = memfd_create("test", 0);
    if (fd < 0 || write_full(fd, data, len)) abort();
    return fd;
}

static unsigned char *fd_bytes(int fd, size_t len)
{
    unsigned char *out = malloc(len ? len : 1);
    if (!out || pread_full(fd, out, len, 0)) abort();
    return out;
}

static void add_region(struct fspf *fs, const char *path, uint8_t kind, uint8_t prot, uint8_t keylen, uint32_t chunk)
{
    fs->regions = realloc(fs->regions, sizeof *fs->regions * (fs->region_count + 1));
    struct fspf_region *r = &fs->regions[fs->region_count++];
    r->path = strdup(path);
    r->kind = kind;
    r->protection = prot;
    r->key_length = keylen;
    r->chunk_size = chunk;
    r->kernel_path = strdup(kind == FSPF_KERNEL ? path : "");
}

/* AES-256-GCM with a 12-byte nonce, as the fspf envelope uses it. */
static int gcm(int enc, const unsigned char *key, const unsigned char *nonce, const unsigned char *aad, size_t aad_len,
               const unsigned char *in, size_t n, unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len, ok = EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce, enc) &&
                  EVP_CipherUpdate(ctx, NULL, &len, aad, (int)aad_len) && (n == 0 || EVP_CipherUpdate(ctx, out, &len, in, (int)n));
    if (ok && !enc) ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag);
    unsigned char scratch[16];
    ok = ok && EVP_CipherFinal_ex(ctx, scratch, &len) > 0;
    if (ok && enc) ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag);
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

static void test_region_for(struct fspf *fs)
{
    static const char *const cases[][2] = {
        {"/a/x", "/a"}, {"/a", "/a"}, {"/ab/x/y", "/ab"}, {"/abc", "/"}, {"/e/q", "/e"}, {"/t/q", "/t"}, {"/", "/"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const struct fspf_region *r = fspf_region_for(fs, cases[i][0]);
        CHECK(r && !strcmp(r->path, cases[i][1]), "%s -> %s", cases[i][0], r ? r->path : "NULL");
    }
}

static void test_round_trips(struct fspf *fs)
{
    static const uint64_t sizes[] = {0, 1, 15, 16, 17, 4095, 4096, 4097, 100000, 3 * 65536 + 1};
    struct rt_error err = {""};
    for (uint32_t ri = 0; ri < fs->region_count; ri++) {
        const struct fspf_region *r = &fs->regions[ri];
        if (r->protection == FSPF_NOT_PROTECTED || r->kind != FSPF_KERNEL) continue;
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            uint64_t size = sizes[si];
            unsigned char *plain = malloc(size + 1);
            RAND_bytes(plain, (int)size + 1);
            char path[64];
            snprintf(path, sizeof path, "%s/f%llu", r->path, (unsigned long long)size);
            int pfd = memfd_with(plain, size), sfd = memfd_create("stored", 0), ofd = memfd_create("out", 0);
            struct fspf_file rec;
            int rc = fspf_protect_file(path, r->protection, r->chunk_size, r->key_length, pfd, size, sfd, &rec, &err);
            CHECK(rc == 0, "protect %s: %s", path, err.msg);
            uint64_t stored = fspf_stored_size(size, r->chunk_size, r->protection);
            CHECK((uint64_t)lseek(sfd, 0, SEEK_END) == (r->protection == FSPF_ENCRYPTED ? stored : 0), "stored size of %s", path);
            int from = r->protection == FSPF_ENCRYPTED ? sfd : pfd;
            rc = fspf_open_file(&rec, from, ofd, &err);
            CHECK(rc == 0, "open %s: %s", path, err.msg);
            unsigned char *back = fd_bytes(ofd, size);
            CHECK(!memcmp(back, plain, size), "plaintext of %s", path);
            free(back);
            if (size > r->chunk_size) {  /* a flipped bit in chunk 1 is refused, naming chunk 1 */
                unsigned char byte;
                uint64_t at = (uint64_t)r->chunk_size + (r->protection == FSPF_ENCRYPTED ? 16 : 0);
                pread_full(from, &byte, 1, at);
                byte ^= 4;
                pwrite_full(from, &byte, 1, at);
                rc = fspf_open_file(&rec, from, ofd, &err);
                CHECK(rc < 0 && strstr(err.msg, "integrity check failed for ") && strstr(err.msg, " chunk 1: "), "%s", err.msg);
                byte ^= 4;
                pwrite_full(from, &byte, 1, at);
                CHECK(ftruncate(from, (off_t)stored - 1) == 0, "truncate");
                rc = fspf_open_file(&rec, from, ofd, &err);
                CHECK(rc < 0 && strstr(err.msg, "(truncated)"), "%s", err.msg);
                /* The last chunk dropped and the record shortened to match: the chunk before
                 * was sealed as not final, so it is refused. */
                struct fspf_file shorter = rec;
                uint64_t n = (size + r->chunk_size - 1) / r->chunk_size;
                shorter.size = (n - 1) * r->chunk_size;
                shorter.tag_count = r->protection == FSPF_AUTHENTICATED ? (uint32_t)(n - 1) : 0;
                CHECK(ftruncate(from, (off_t)fspf_stored_size(shorter.size, r->chunk_size, r->protection)) == 0, "truncate");
                char want[64];
                snprintf(want, sizeof want, " chunk %llu: ", (unsigned long long)(n - 2));
                rc = fspf_open_file(&shorter, from, ofd, &err);
                CHECK(rc < 0 && strstr(err.msg, want) && strstr(err.msg, "tag mismatch"), "%s", err.msg);
            }
            CHECK(fspf_put(fs, &rec, &err) == 0, "put %s: %s", path, err.msg);
            CHECK(rec.path == NULL, "put takes the path");
            close(pfd);
            close(sfd);
            close(ofd);
            free(plain);
        }
    }
    for (uint32_t i = 1; i < fs->file_count; i++)
        CHECK(strcmp(fs->files[i - 1].path, fs->files[i].path) < 0, "files sorted at %u", i);
}

static void same_records(const struct fspf *a, const struct fspf *b)
{
    CHECK(a->region_count == b->region_count && a->file_count == b->file_count, "counts");
    for (uint32_t i = 0; i < a->region_count && i < b->region_count; i++)
        CHECK(!strcmp(a->regions[i].path, b->regions[i].path) && !strcmp(a->regions[i].kernel_path, b->regions[i].kernel_path) &&
              a->regions[i].chunk_size == b->regions[i].chunk_size, "region %u", i);
    for (uint32_t i = 0; i < a->file_count && i < b->file_count; i++) {
        const struct fspf_file *x = &a->files[i], *y = &b->files[i];
        CHECK(!strcmp(x->path, y->path) && x->size == y->size && x->key_len == y->key_len && !memcmp(x->key, y->key, x->key_len) &&
              !memcmp(x->file_id, y->file_id, 16) && x->tag_count == y->tag_count &&
              (!x->tag_count || !memcmp(x->tags, y->tags, 16 * (size_t)x->tag_count)), "file %s", x->path);
    }
}

static void test_save_load(struct fspf *fs, const unsigned char key[32], unsigned char **body_out, size_t *body_len)
{
    struct rt_error err = {""};
    unsigned char *data, *again, tag[16], tag2[16];
    size_t len, len2;
    CHECK(fspf_save_encrypted(fs, key, &data, &len, tag, &err) == 0, "%s", err.msg);
    CHECK(fspf_save_encrypted(fs, key, &again, &len2, tag2, &err) == 0, "%s", err.msg);
    CHECK(len == len2 && memcmp(tag, tag2, 16) && memcmp(data + 16, again + 16, 12), "a fresh nonce per save");
    struct fspf loaded;
    CHECK(fspf_load(&loaded, data, len, key, tag, &err) == 0, "%s", err.msg);
    same_records(fs, &loaded);
    fspf_free(&loaded);
    CHECK(fspf_load(&loaded, data, len, key, tag2, &err) < 0 && !strncmp(err.msg, "fspf tag mismatch (rolled back or replaced)", 43),
          "%s", err.msg);
    unsigned char wrong[32];
    memcpy(wrong, key, 32);
    wrong[7] ^= 1;
    CHECK(fspf_load(&loaded, data, len, wrong, tag, &err) < 0 && !strncmp(err.msg, "fspf does not decrypt (wrong key)", 33),
          "%s", err.msg);
    CHECK(fspf_load(&loaded, data, len, key, NULL, &err) < 0, "a key without a tag is refused");
    /* The body, for the fuzz. */
    *body_len = len - 44;
    *body_out = malloc(*body_len);
    CHECK(gcm(0, key, data + 16, data, 28, data + 28, *body_len, *body_out, data + len - 16) == 0, "decrypt the body");
    free(data);
    free(again);
}

static void test_put_remove(struct fspf *fs)
{
    struct rt_error err = {""};
    uint32_t before = fs->file_count;
    const char *victim = fs->files[before / 2].path;
    char *copy = strdup(victim);
    CHECK(fspf_find(fs, copy) != NULL, "find %s", copy);
    fspf_remove(fs, copy);
    CHECK(fspf_find(fs, copy) == NULL && fs->file_count == before - 1, "remove %s", copy);
    fspf_remove(fs, copy);
    CHECK(fs->file_count == before - 1, "removing an absent path is a no-op");
    struct fspf_file bad = {0};
    bad.path = strdup("/e/../x");
    bad.protection = FSPF_ENCRYPTED;
    bad.chunk_size = 4096;
    bad.key_len = 32;
    CHECK(fspf_put(fs, &bad, &err) < 0 && strstr(err.msg, "normalised"), "%s", err.msg);
    fspf_file_free(&bad);
    int pfd = memfd_with((const unsigned char *)"abc", 3), sfd = memfd_create("s", 0);
    struct fspf_file rec;
    CHECK(fspf_protect_file(copy, FSPF_ENCRYPTED, 4096, 32, pfd, 3, sfd, &rec, &err) == 0, "%s", err.msg);
    CHECK(fspf_put(fs, &rec, &err) == 0 && fs->file_count == before && fspf_find(fs, copy), "put back %s", copy);
    CHECK(fspf_protect_file(copy, FSPF_ENCRYPTED, 4096, 32, pfd, 3, sfd, &rec, &err) == 0, "%s", err.msg);
    CHECK(fspf_put(fs, &rec, &err) == 0 && fs->file_count == before, "replace %s", copy);
    CHECK(fspf_protect_file(copy, FSPF_ENCRYPTED, 4096, 32, pfd, 4, sfd, &rec, &err) < 0 && strstr(err.msg, "input ended after 3 of 4"),
          "%s", err.msg);
    close(pfd);
    close(sfd);
    free(copy);
}

static void test_fuzz(const unsigned char *body, size_t body_len, const unsigned char key[32], int rounds)
{
    unsigned char *mutant = malloc(body_len + 64), *sealed = malloc(body_len + 64 + 44);
    int accepted = 0;
    for (int round = 0; round < rounds; round++) {
        size_t n = body_len;
        memcpy(mutant, body, n);
        int edits = 1 + (int)(rnd() % 3);
        for (int e = 0; e < edits && n > 0; e++) {
            size_t at = rnd() % n;
            switch (rnd() % 5) {
            case 0: mutant[at] ^= (unsigned char)(1 << (rnd() % 8)); break;
            case 1: mutant[at] = (unsigned char)rnd(); break;
            case 2: n = at; break;  /* cut */
            case 3: {  /* count or length set to an extreme */
                static const unsigned char extremes[][4] = {{0xff, 0xff, 0xff, 0xff}, {0, 0, 0, 0}, {0x10, 0, 0, 0}, {0xff, 0xff, 0, 0}};
                size_t k = n - at < 4 ? n - at : 4;
                memcpy(mutant + at, extremes[rnd() % 4], k);
                break;
            }
            default:
                if (n + 16 <= body_len + 64) {
                    memmove(mutant + at + 16, mutant + at, n - at);
                    for (int i = 0; i < 16; i++) mutant[at + i] = (unsigned char)rnd();
                    n += 16;
                }
            }
        }
        memcpy(sealed, "SCNFSPF\0\x01\x01\0\0\0\0\0\0", 16);
        for (int i = 0; i < 12; i++) sealed[16 + i] = (unsigned char)rnd();
        gcm(1, key, sealed + 16, sealed, 28, mutant, n, sealed + 28, sealed + 28 + n);
        struct fspf fs;
        struct rt_error err = {""};
        if (fspf_load(&fs, sealed, n + 44, key, sealed + 28 + n, &err) == 0) {
            accepted++;
            unsigned char *out, tag[16];
            size_t out_len;
            CHECK(fspf_save_encrypted(&fs, key, &out, &out_len, tag, &err) == 0 && out_len == n + 44, "re-save an accepted mutant");
            free(out);
            if (fs.file_count) fspf_region_for(&fs, fs.files[0].path);
            fspf_free(&fs);
        } else {
            CHECK(!strncmp(err.msg, "corrupt fspf: ", 14), "%s", err.msg);
        }
    }
    printf("fuzz: %d mutants, %d accepted\n", rounds, accepted);
    free(mutant);
    free(sealed);
}

/* A file name that is not UTF-8 (any bytes but NUL, as the kernel takes them: a volume's or an
 * ephemeral region's fspf) is kept, saved and read back. */
static void test_any_bytes(const unsigned char key[32])
{
    struct fspf fs;
    struct rt_error err = {""};
    CHECK(fspf_one_region(&fs, "/tmp", FSPF_ENCRYPTED, &err) == 0, "%s", err.msg);
    CHECK(fs.region_count == 1 && !strcmp(fs.regions[0].kernel_path, "/tmp") && fs.file_count == 0, "one empty region");
    int pfd = memfd_with((const unsigned char *)"abc", 3), sfd = memfd_create("s", 0);
    struct fspf_file rec;
    CHECK(fspf_protect_file("/tmp/\xff\xfe", FSPF_ENCRYPTED, 65536, 32, pfd, 3, sfd, &rec, &err) == 0, "%s", err.msg);
    CHECK(fspf_put(&fs, &rec, &err) == 0, "%s", err.msg);
    unsigned char *data, tag[16];
    size_t len;
    struct fspf loaded;
    CHECK(fspf_save_encrypted(&fs, key, &data, &len, tag, &err) == 0, "%s", err.msg);
    CHECK(fspf_load(&loaded, data, len, key, tag, &err) == 0 && loaded.file_count == 1 &&
          !strcmp(loaded.files[0].path, "/tmp/\xff\xfe"), "%s", err.msg);
    same_records(&fs, &loaded);
    fspf_free(&loaded);
    free(data);
    fspf_free(&fs);
    close(pfd);
    close(sfd);
}

int main(int argc, char **argv)
{
    struct fspf fs = {0};
    unsigned char key[32], *body;
    size_t body_len;
    RAND_bytes(key, 32);
    add_region(&fs, "/", FSPF_KERNEL, FSPF_NOT_PROTECTED, 32, 65536);
    add_region(&fs, "/a", FSPF_KERNEL, FSPF_AUTHENTICATED, 16, 16);
    add_region(&fs, "/ab", FSPF_KERNEL, FSPF_ENCRYPTED, 32, 65536);
    add_region(&fs, "/e", FSPF_KERNEL, FSPF_ENCRYPTED, 24, 4096);
    add_region(&fs, "/t", FSPF_EPHEMERAL, FSPF_NOT_PROTECTED, 32, 65536);
    test_region_for(&fs);
    test_round_trips(&fs);
    test_put_remove(&fs);
    test_any_bytes(key);
    test_save_load(&fs, key, &body, &body_len);
    test_fuzz(body, body_len, key, 300);
    free(body);
    fspf_free(&fs);

    /* A small fspf, so that most mutations hit structure rather than keys and tags. */
    struct fspf small = {0};
    struct rt_error err = {""};
    add_region(&small, "/", FSPF_KERNEL, FSPF_NOT_PROTECTED, 32, 65536);
    add_region(&small, "/a", FSPF_KERNEL, FSPF_AUTHENTICATED, 16, 16);
    add_region(&small, "/e", FSPF_KERNEL, FSPF_ENCRYPTED, 24, 4096);
    add_region(&small, "/t", FSPF_EPHEMERAL, FSPF_NOT_PROTECTED, 32, 65536);
    static const char *const paths[] = {"/a/x", "/a/\xc3\xa9t\xc3\xa9", "/e/y"};
    for (int i = 0; i < 3; i++) {
        int pfd = memfd_with((const unsigned char *)"0123456789012345678901234567890123456789", 40), sfd = memfd_create("s", 0);
        struct fspf_file rec;
        uint8_t prot = paths[i][1] == 'a' ? FSPF_AUTHENTICATED : FSPF_ENCRYPTED;
        CHECK(fspf_protect_file(paths[i], prot, prot == FSPF_AUTHENTICATED ? 16 : 4096, 16, pfd, 40, sfd, &rec, &err) == 0, "%s", err.msg);
        CHECK(fspf_put(&small, &rec, &err) == 0, "%s", err.msg);
        close(pfd);
        close(sfd);
    }
    test_save_load(&small, key, &body, &body_len);
    test_fuzz(body, body_len, key, argc > 1 ? atoi(argv[1]) : 20000);
    free(body);
    fspf_free(&small);
    if (failures) {
        fprintf(stderr, "test_fspf: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_fspf: ok\n");
    return 0;
}
