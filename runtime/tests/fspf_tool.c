/* fspf_tool: drives runtime/src/fspf.c for tests/test_runtime_fspf.py.
 *
 *   fspf_tool show FSPF KEYHEX TAGHEX                          regions and files
 *   fspf_tool cat  FSPF KEYHEX TAGHEX PATH STORED_FILE         checked plaintext to stdout
 *   fspf_tool put  FSPF KEYHEX TAGHEX PATH PLAIN_FILE STORED_OUT
 *                                                   protect PLAIN_FILE as PATH, rewrite FSPF, print the new tag
 *   fspf_tool rm   FSPF KEYHEX TAGHEX PATH                     remove a record, rewrite FSPF, print the new tag
 *   fspf_tool bench [MB [DIR]]                                 throughput of fspf_open_file vs raw AES-GCM
 *
 * Errors: "fspf_tool: <message>" on stderr; exit 1 for integrity errors (a file or the fspf does
 * not match what is trusted: tag mismatch, wrong key, tampered chunk, wrong size), 2 otherwise.
 * Nothing printed ever contains a key. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "fspf.h"

static const char *const KINDS[] = {"kernel", "ephemeral"};
static const char *const PROTECTIONS[] = {"not-protected", "authenticated", "encrypted", "symlink"};

static int is_integrity(const char *msg)
{
    static const char *const prefixes[] = {"integrity check failed", "fspf tag mismatch", "fspf does not decrypt"};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (!strncmp(msg, prefixes[i], strlen(prefixes[i]))) return 1;
    return 0;
}

static int fail(const struct rt_error *err)
{
    fprintf(stderr, "fspf_tool: %s\n", err->msg);
    return is_integrity(err->msg) ? 1 : 2;
}

static int fail_msg(int code, const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "fspf_tool: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return code;
}

static int read_file(const char *path, unsigned char **data, size_t *len, struct rt_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) return rt_fail(err, "cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return rt_fail(err, "%s is not a regular file", path);
    }
    *len = (size_t)st.st_size;
    *data = malloc(*len ? *len : 1);
    if (!*data || read_full(fd, *data, *len)) {
        close(fd);
        free(*data);
        return rt_fail(err, "cannot read %s: %s", path, strerror(errno));
    }
    close(fd);
    return 0;
}

/* Write data to path atomically (a temporary file renamed over it). */
static int write_atomic(const char *path, const unsigned char *data, size_t len, struct rt_error *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return rt_fail(err, "cannot create %s: %s", tmp, strerror(errno));
    if (write_full(fd, data, len) || fsync(fd) || close(fd) || rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return rt_fail(err, "cannot write %s: %s", path, strerror(e));
    }
    return 0;
}

struct loaded {
    const char *path;
    unsigned char key[32], tag[16];
    struct fspf fs;
};

static int load(struct loaded *l, char **argv, struct rt_error *err)
{
    unsigned char *data = NULL;
    size_t len = 0;
    l->path = argv[0];
    if (strlen(argv[1]) != 64 || hex_decode(argv[1], l->key, 32))
        return rt_fail(err, "the key must be 64 hex digits (32 bytes), as printed by `sconify fspf encrypt`");
    if (strlen(argv[2]) != 32 || hex_decode(argv[2], l->tag, 16))
        return rt_fail(err, "the tag must be 32 hex digits (16 bytes), as printed by `sconify fspf encrypt`");
    if (read_file(l->path, &data, &len, err)) return -1;
    int rc = fspf_load(&l->fs, data, len, l->key, l->tag, err);
    free(data);
    return rc;
}

static int save(struct loaded *l, struct rt_error *err)
{
    unsigned char *data, tag[16];
    size_t len;
    char hex[33];
    if (fspf_save_encrypted(&l->fs, l->key, &data, &len, tag, err)) return -1;
    int rc = write_atomic(l->path, data, len, err);
    free(data);
    if (rc) return -1;
    hex_encode(tag, 16, hex);
    printf("%s\n", hex);
    return 0;
}

static int cmd_show(struct loaded *l)
{
    for (uint32_t i = 0; i < l->fs.region_count; i++) {
        const struct fspf_region *r = &l->fs.regions[i];
        printf("region %s %s %s %u %u %s\n", r->path, KINDS[r->kind], PROTECTIONS[r->protection], r->key_length,
               r->chunk_size, r->kind == FSPF_KERNEL ? r->kernel_path : "-");
    }
    for (uint32_t i = 0; i < l->fs.file_count; i++) {
        const struct fspf_file *f = &l->fs.files[i];
        printf("file %s %llu %s %u\n", f->path, (unsigned long long)f->size, PROTECTIONS[f->protection], f->chunk_size);
    }
    return 0;
}

/* The record of path, or an error (exit code in *code). */
static struct fspf_file *record_of(struct loaded *l, const char *path, int *code)
{
    struct fspf_file *f = fspf_find(&l->fs, path);
    if (f) return f;
    const struct fspf_region *r = fspf_region_for(&l->fs, path);
    if (r && r->protection != FSPF_NOT_PROTECTED)
        *code = fail_msg(1, "integrity check failed for %s: not recorded in the fspf of its region %s", path, r->path);
    else
        *code = fail_msg(2, "%s is not recorded in the fspf%s", path, r ? " (its region is not protected)" : " (it is in no region)");
    return NULL;
}

static int cmd_cat(struct loaded *l, const char *path, const char *stored)
{
    struct rt_error err = {""};
    int code = 0;
    struct fspf_file *f = record_of(l, path, &code);
    if (!f) return code;
    int fd = open(stored, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && (errno == ENOENT || errno == ELOOP))
        return fail_msg(1, "integrity check failed for %s: stored file %s is missing or not a file", path, stored);
    if (fd < 0) return fail_msg(2, "cannot open %s: %s", stored, strerror(errno));
    /* The plaintext goes to stdout only once the whole file has been checked. */
    int mfd = memfd_create("fspf_tool-cat", MFD_CLOEXEC);
    if (mfd < 0) return fail_msg(2, "memfd_create: %s%s", strerror(errno), "");
    if (fspf_open_file(f, fd, mfd, &err)) return fail(&err);
    close(fd);
    static unsigned char buf[1 << 16];
    uint64_t off = 0;
    while (off < f->size) {
        size_t n = f->size - off < sizeof buf ? (size_t)(f->size - off) : sizeof buf;
        if (pread_full(mfd, buf, n, off) || write_full(1, buf, n)) return fail_msg(2, "cannot copy the plaintext: %s%s", strerror(errno), "");
        off += n;
    }
    close(mfd);
    return 0;
}

static int copy_fd(int from, int to)
{
    static unsigned char buf[1 << 16];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) return 0;
        if (write_full(to, buf, (size_t)n)) return -1;
    }
}

static int cmd_put(struct loaded *l, const char *path, const char *plain, const char *stored_out)
{
    struct rt_error err = {""};
    const struct fspf_region *r = fspf_region_for(&l->fs, path);
    if (!r) return fail_msg(2, "%s is in no region of the fspf%s", path, "");
    if (r->protection == FSPF_NOT_PROTECTED || r->kind != FSPF_KERNEL)
        return fail_msg(2, "%s belongs to region %s, whose files are not recorded (not protected or ephemeral)", path, r->path);
    int pfd = open(plain, O_RDONLY | O_CLOEXEC);
    if (pfd < 0) return fail_msg(2, "cannot open %s: %s", plain, strerror(errno));
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", stored_out, (int)getpid());
    int sfd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sfd < 0) return fail_msg(2, "cannot create %s: %s", tmp, strerror(errno));
    int src = pfd;
    if (r->protection == FSPF_AUTHENTICATED) {  /* tag the copy that is stored, not the input */
        if (copy_fd(pfd, sfd)) {
            unlink(tmp);
            return fail_msg(2, "cannot copy %s: %s", plain, strerror(errno));
        }
        src = sfd;
    }
    struct stat st;
    if (fstat(src, &st) < 0) return fail_msg(2, "cannot stat %s: %s", plain, strerror(errno));
    struct fspf_file rec;
    if (fspf_protect_file(path, r->protection, r->chunk_size, r->key_length, src, (uint64_t)st.st_size,
                          r->protection == FSPF_ENCRYPTED ? sfd : -1, &rec, &err)) {
        unlink(tmp);
        return fail(&err);
    }
    close(pfd);
    if (fsync(sfd) || close(sfd) || rename(tmp, stored_out)) {
        unlink(tmp);
        fspf_file_free(&rec);
        return fail_msg(2, "cannot write %s: %s", stored_out, strerror(errno));
    }
    if (fspf_put(&l->fs, &rec, &err)) {
        fspf_file_free(&rec);
        return fail(&err);
    }
    return save(l, &err) ? fail(&err) : 0;
}

static int cmd_rm(struct loaded *l, const char *path)
{
    struct rt_error err = {""};
    if (!fspf_find(&l->fs, path)) return fail_msg(2, "%s is not recorded in the fspf%s", path, "");
    fspf_remove(&l->fs, path);
    return save(l, &err) ? fail(&err) : 0;
}

/* ------------------------------------------------------------------ bench */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Raw AES-256-GCM over buf in chunks of cs bytes (one context, nonce per chunk), in place. */
static double raw_gcm(unsigned char *buf, size_t len, size_t cs, int decrypt_tags)
{
    unsigned char key[32] = {1}, nonce[12] = {0}, tag[16];
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int got;
    EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL);
    double t0 = now();
    for (size_t off = 0, i = 0; off < len; off += cs, i++) {
        size_t n = len - off < cs ? len - off : cs;
        memcpy(nonce, &i, sizeof i);
        EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce);
        EVP_EncryptUpdate(ctx, NULL, &got, nonce, 12);
        EVP_EncryptUpdate(ctx, decrypt_tags ? NULL : buf + off, &got, buf + off, (int)n);
        EVP_EncryptFinal_ex(ctx, tag, &got);
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag);
    }
    double dt = now() - t0;
    EVP_CIPHER_CTX_free(ctx);
    return dt;
}

static int cmd_bench(int mb, const char *dir)
{
    struct rt_error err = {""};
    const uint64_t size = (uint64_t)mb << 20;
    const uint32_t cs = 64 * 1024;
    char plain_path[4200], stored_path[4200];
    snprintf(plain_path, sizeof plain_path, "%s/fspf-bench-plain-%d", dir, (int)getpid());
    snprintf(stored_path, sizeof stored_path, "%s/fspf-bench-stored-%d", dir, (int)getpid());
    int pfd = open(plain_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int sfd = open(stored_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    unsigned char *buf = malloc(size);
    if (pfd < 0 || sfd < 0 || null < 0 || !buf) return fail_msg(2, "bench setup failed in %s: %s", dir, strerror(errno));
    unlink(plain_path);
    unlink(stored_path);
    for (uint64_t off = 0; off < size; off += 1 << 20) RAND_bytes(buf + off, 1 << 20);
    if (write_full(pfd, buf, size)) return fail_msg(2, "bench write failed: %s%s", strerror(errno), "");

    printf("%d MiB, 64 KiB chunks, files in %s, one core\n", mb, dir);
    double dt = raw_gcm(buf, size, cs, 0);
    printf("raw AES-256-GCM encrypt, in memory, 64 KiB chunks   %7.0f MB/s\n", (double)size / dt / 1e6);
    dt = raw_gcm(buf, size, size > (1u << 30) ? (1u << 30) : size, 0);
    printf("raw AES-256-GCM encrypt, in memory, one buffer      %7.0f MB/s\n", (double)size / dt / 1e6);
    dt = raw_gcm(buf, size, cs, 1);
    printf("raw GMAC (authenticated), in memory, 64 KiB chunks  %7.0f MB/s\n", (double)size / dt / 1e6);

    struct fspf_file rec, auth;
    double t0 = now();
    if (fspf_protect_file("/bench", FSPF_ENCRYPTED, cs, 32, pfd, size, sfd, &rec, &err)) return fail(&err);
    printf("fspf_protect_file encrypted, file -> file            %7.0f MB/s\n", (double)size / (now() - t0) / 1e6);
    t0 = now();
    if (fspf_protect_file("/bench", FSPF_AUTHENTICATED, cs, 32, pfd, size, -1, &auth, &err)) return fail(&err);
    printf("fspf_protect_file authenticated, file                %7.0f MB/s\n", (double)size / (now() - t0) / 1e6);
    for (int round = 0; round < 2; round++) {
        t0 = now();
        if (fspf_open_file(&rec, sfd, null, &err)) return fail(&err);
        printf("fspf_open_file encrypted, file -> /dev/null          %7.0f MB/s\n", (double)size / (now() - t0) / 1e6);
    }
    int mfd = memfd_create("bench-out", MFD_CLOEXEC);
    t0 = now();
    if (fspf_open_file(&rec, sfd, mfd, &err)) return fail(&err);
    printf("fspf_open_file encrypted, file -> new memfd          %7.0f MB/s\n", (double)size / (now() - t0) / 1e6);
    t0 = now();
    if (fspf_open_file(&rec, sfd, mfd, &err)) return fail(&err);
    printf("fspf_open_file encrypted, file -> memfd (rewrite)    %7.0f MB/s\n", (double)size / (now() - t0) / 1e6);
    t0 = now();
    if (fspf_open_file(&auth, pfd, null, &err)) return fail(&err);
    printf("fspf_open_file authenticated, file -> /dev/null      %7.0f MB/s\n", (double)size / (now() - t0) / 1e6);
    fspf_file_free(&rec);
    fspf_file_free(&auth);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    struct rt_error err = {""};
    struct loaded l;
    int rc;
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);  /* as src/fspf.c: no openssl.cnf */
    if (argc >= 2 && !strcmp(argv[1], "bench"))
        return cmd_bench(argc >= 3 ? atoi(argv[2]) : 256, argc >= 4 ? argv[3] : "/dev/shm");
    const char *cmd = argc >= 2 ? argv[1] : "";
    int want = !strcmp(cmd, "show") ? 5 : !strcmp(cmd, "cat") ? 7 : !strcmp(cmd, "put") ? 8 : !strcmp(cmd, "rm") ? 6 : -1;
    if (argc != want) {
        fprintf(stderr, "usage: fspf_tool show FSPF KEYHEX TAGHEX\n"
                        "       fspf_tool cat FSPF KEYHEX TAGHEX PATH STORED_FILE\n"
                        "       fspf_tool put FSPF KEYHEX TAGHEX PATH PLAIN_FILE STORED_OUT\n"
                        "       fspf_tool rm FSPF KEYHEX TAGHEX PATH\n"
                        "       fspf_tool bench [MB [DIR]]\n");
        return 2;
    }
    if (load(&l, argv + 2, &err)) return fail(&err);
    if (!strcmp(cmd, "show")) rc = cmd_show(&l);
    else if (!strcmp(cmd, "cat")) rc = cmd_cat(&l, argv[5], argv[6]);
    else if (!strcmp(cmd, "put")) rc = cmd_put(&l, argv[5], argv[6], argv[7]);
    else rc = cmd_rm(&l, argv[5]);
    fspf_free(&l.fs);
    OPENSSL_cleanse(l.key, sizeof l.key);
    if (fflush(stdout)) return fail_msg(2, "cannot write to stdout: %s%s", strerror(errno), "");
    return rc;
}
