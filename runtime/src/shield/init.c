/* Start-up, in the measured executable only: the runtime config, the embedfs, the keys and
 * each volume's fspf, the ephemeral regions, and the seccomp filter. */
#include <dlfcn.h>
#include <openssl/crypto.h>
#include <seccomp.h>

#include "shield.h"

static int same_file(const char *a, const char *b)
{
    struct stat64 sa, sb;
    return RESOLVE(stat64)(a, &sa) == 0 && RESOLVE(stat64)(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* libuv calls statx through syscall(), past any interposition: answer ENOSYS so it falls back
 * to stat(), which the shield serves. io_uring would bypass every libc entry point. */
static void install_seccomp(void)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) return;
    if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(statx), 0) == 0 &&
        seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(io_uring_setup), 0) == 0 && seccomp_load(ctx) != 0)
        shield_log("cannot install the seccomp filter (statx -> ENOSYS); embedded files may be invisible to libuv");
    seccomp_release(ctx);
}

static void fatal(const char *msg) __attribute__((noreturn));
static void fatal(const char *msg)
{
    shield_refusal("%s; the service cannot start", msg);
    _exit(2);
}

/* An ephemeral region: a volume whose fspf (one encrypted kernel region, no files) exists in
 * this process's memory only. It has no fspf key: it is never serialised, and the per-file keys
 * it will hold (fresh from RAND_bytes on every write) never leave the process. A region that
 * is a volume too, or a run-time mount (/proc, /dev, ...), is not one. */
static void add_ephemeral(const char *config_path)
{
    char path[PATH_MAX];
    if (!config_path || config_path[0] != '/' || strlen(config_path) >= sizeof path) return;
    strcpy(path, config_path);
    normalise(path);
    if (run_time_mount(path)) return;
    for (size_t i = 0; i < S.nvols; i++)
        if (strcmp(S.vols[i].v->path, path) == 0) return;
    struct svol *sv = &S.vols[S.nvols];
    struct fspf_region *region = calloc(1, sizeof *region);
    sv->own.path = strdup(path);
    sv->own.fspf_path = NULL;
    sv->own.protection = FSPF_ENCRYPTED;
    if (!region || !sv->own.path || !(region->path = strdup(path)) || !(region->kernel_path = strdup(path)))
        fatal("out of memory");
    region->kind = FSPF_KERNEL;  /* stored at their own paths */
    region->protection = FSPF_ENCRYPTED;
    region->key_length = 32;
    region->chunk_size = 64 * 1024;
    sv->fs.region_count = 1;
    sv->fs.regions = region;
    sv->v = &sv->own;
    sv->len = strlen(path);
    sv->ephemeral = 1;
    S.nvols++;
}

__attribute__((constructor)) static void shield_init(void)
{
    const char *config_path = getenv("SCONIFY_RUNTIME_CONFIG");
    if (!config_path) return;
    in_shield++;
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    struct rt_error err;
    if (config_load(config_path, &S.cfg, &err) != 0) {
        in_shield--;
        return;
    }
    if (!same_file("/proc/self/exe", S.cfg.executable)) {
        config_free(&S.cfg);
        in_shield--;
        return;  /* not the measured executable: it gets no keys and sees what is on disk */
    }
    const void *archive;
    size_t size;
    unsigned char root[32];
    int found = embedfs_find_self(&archive, &size, root, &err);
    if (found < 0) fatal(err.msg);
    if (found == 1) {
        if (embedfs_open(&S.emb, archive, size, &err) != 0) fatal(err.msg);
        if (memcmp(root, S.emb.root_hash, 32) != 0) fatal("the embedfs root hash differs from its descriptor's");
        S.has_emb = 1;
    }
    const char *keys_path = getenv("SCONIFY_KEYS");
    S.vols = calloc(S.cfg.volume_count + S.cfg.ephemeral_count + 1, sizeof *S.vols);
    if (!S.vols) fatal("out of memory");
    /* Encrypted code without volumes runs without keys too: its members are then refused
     * (EACCES, embedded.c), every other file served as usual. */
    if (S.cfg.volume_count || (S.emb.encrypted_count && keys_path)) {
        struct rt_keys keys;
        if (!keys_path) fatal("no keys: start the service through sconify-run");
        if (keys_load(keys_path, &keys, &err) != 0) fatal(err.msg);
        if (keys.has_code_key) {
            memcpy(S.code_key, keys.code_key, sizeof S.code_key);
            S.has_code_key = 1;
        }
        S.keys_path = strdup(keys_path);
        S.keys_persist = strncmp(keys_path, "/proc/", 6) != 0;
        for (size_t i = 0; i < S.cfg.volume_count; i++) {
            const struct rt_volume *v = &S.cfg.volumes[i];
            struct rt_key *k = keys_find(&keys, v->path);
            if (!k) continue;  /* sconify-run checked every volume; a SCONE_FSPF debug key covers one */
            struct svol *sv = &S.vols[S.nvols];
            sv->v = v;
            sv->len = strlen(v->path);
            memcpy(sv->key, k->key, 32);
            int fd = RESOLVE(open)(v->fspf_path, O_RDONLY | O_CLOEXEC);
            struct stat64 st;
            if (fd < 0 || fstat64(fd, &st) != 0) fatal("a volume's fspf disappeared after start-up");
            unsigned char *data = malloc((size_t)st.st_size + 1);
            if (!data || pread_full(fd, data, (size_t)st.st_size, 0) != 0) fatal("cannot read a volume's fspf");
            RESOLVE(close)(fd);
            const unsigned char *tag = st.st_size >= 16 ? data + st.st_size - 16 : k->tag;
            int next = k->has_next && memcmp(tag, k->next_tag, 16) == 0;
            if (fspf_load(&sv->fs, data, (size_t)st.st_size, k->key, next ? k->next_tag : k->tag, &err) != 0)
                fatal(err.msg);
            if (sv->fs.region_count != 1 || strcmp(sv->fs.regions[0].path, v->path) != 0)
                fatal("a volume's fspf does not describe that volume");
            memcpy(sv->tag, tag, 16);
            free(data);
            S.nvols++;
        }
        keys_free(&keys);
    }
    for (size_t i = 0; i < S.cfg.ephemeral_count; i++) add_ephemeral(S.cfg.ephemeral[i]);
    install_seccomp();
    S.active = S.has_emb || S.nvols;
    in_shield--;
}

/* Debian's libjansson.a is built as position-dependent code: its json_loadf path refers to
 * stdin with a PC-relative relocation, which a shared object cannot resolve against libc. The
 * shield never loads JSON from stdin; this hidden definition satisfies that one relocation and
 * is pointed at libc's stream at start-up for completeness. */
__attribute__((visibility("hidden"))) FILE *stdin;
__attribute__((constructor(101))) static void bind_stdin(void)
{
    FILE **libc_stdin = dlsym(RTLD_NEXT, "stdin");
    stdin = libc_stdin ? *libc_stdin : NULL;
}
