/* Start-up, in the measured executable only: the runtime config, the embedfs, the keys and
 * each volume's fspf, the ephemeral regions, and the seccomp filter.
 *
 * Keys are granted, not found: only a process that inherited the launcher's grant (a sealed
 * memfd, SCONIFY_GRANT=<fd>, holding the keys and the runtime config the launcher checked)
 * and whose own executable is the one the keys were issued for serves volumes. Any other
 * start of the measured executable (docker exec, a command the policy refused) gets its
 * embedded code served and finds its volumes locked (EACCES). */
#include <dlfcn.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "measure.h"
#include "policy.h"
#include "shield.h"

#define GRANT_SCHEMA "sconify.grant/v1"
#define GRANT_SEALS (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* The grant this process inherited, as read (NULL: none), and the descriptor number it came
 * in: passed on to the programs the service executes (see execve below). */
static char *grant_text;
static size_t grant_len;
/* The measured executable the grant belongs to: only an exec of it inherits the grant. */
static char grant_exe[PATH_MAX];

struct grant_region {        /* an ephemeral region of this start (launcher.c, start_ephemeral_regions) */
    char *path;
    char *fspf_path;        /* its fspf, shared by the service's processes */
    unsigned char key[32];  /* made by the launcher for this start: in grants only */
};

struct grant {
    struct rt_keys keys;
    json_t *files;          /* policy mode: the injection files [{path, content}] (a new reference) */
    char *config;           /* the runtime config's bytes the launcher checked */
    size_t config_len;
    char *keys_path;        /* where tags are recorded ("" for SCONE_FSPF debug keys) */
    int persist;
    struct grant_region *ephemeral;
    size_t ephemeral_count;
    char cache_socket[64];  /* the launcher's shared plaintext cache, "" if none (cache.c) */
    unsigned char cache_token[32];
};

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

/* The grant's ephemeral regions (an array of {path, fspf_path, key}; absent: none). An entry
 * that is not one is left out: that region stays the process's own. */
static void read_grant_regions(json_t *regions, struct grant *g)
{
    g->ephemeral = calloc(json_array_size(regions) + 1, sizeof *g->ephemeral);
    for (size_t i = 0; g->ephemeral && i < json_array_size(regions); i++) {
        json_t *entry = json_array_get(regions, i);
        const char *path = json_string_value(json_object_get(entry, "path"));
        const char *fspf_path = json_string_value(json_object_get(entry, "fspf_path"));
        const char *key = json_string_value(json_object_get(entry, "key"));
        struct grant_region *r = &g->ephemeral[g->ephemeral_count];
        if (!path || path[0] != '/' || strlen(path) >= PATH_MAX || !fspf_path || fspf_path[0] != '/' || !key ||
            strlen(key) != 64 || hex_decode(key, r->key, sizeof r->key) != 0) {
            OPENSSL_cleanse(r->key, sizeof r->key);
            continue;
        }
        r->path = strdup(path);
        r->fspf_path = strdup(fspf_path);
        normalise(r->path);
        g->ephemeral_count++;
    }
}

/* The grant the launcher handed down, if any: 1 and g filled, else 0 (no grant, or something
 * that is not one: a number that names no sealed memfd, another document). */
static int read_grant(struct grant *g)
{
    const char *number = getenv("SCONIFY_GRANT");
    char *end;
    if (!number || !*number) return 0;
    long fd = strtol(number, &end, 10);
    struct stat64 st;
    if (*end || fd < 0 || fd > INT_MAX || fcntl((int)fd, F_GET_SEALS) != GRANT_SEALS || RESOLVE(fstat64)((int)fd, &st) != 0 ||
        st.st_size <= 0 || st.st_size > GRANT_MAX_SIZE)
        return 0;
    char *text = malloc((size_t)st.st_size);
    json_t *doc = NULL;
    if (text && pread_full((int)fd, text, (size_t)st.st_size, 0) == 0)
        doc = json_loadb(text, (size_t)st.st_size, JSON_REJECT_DUPLICATES, NULL);
    const char *schema = json_string_value(json_object_get(doc, "schema"));
    json_t *config = json_object_get(doc, "runtime_config");
    const char *keys_path = json_string_value(json_object_get(doc, "keys_path"));
    struct rt_error err;
    int ok = schema && strcmp(schema, GRANT_SCHEMA) == 0 && json_is_string(config) && keys_path &&
             keys_from_json(json_object_get(doc, "keys"), "granted by sconify-run", &g->keys, &err) == 0;
    if (ok) {
        g->config_len = json_string_length(config);
        g->config = malloc(g->config_len + 1);
        memcpy(g->config, json_string_value(config), g->config_len + 1);
        g->keys_path = strdup(keys_path);
        g->persist = json_is_true(json_object_get(doc, "persist"));
        g->files = json_incref(json_object_get(doc, "files"));
        read_grant_regions(json_object_get(doc, "ephemeral"), g);
        json_t *cache = json_object_get(doc, "cache");
        const char *socket = json_string_value(json_object_get(cache, "socket"));
        const char *token = json_string_value(json_object_get(cache, "token"));
        if (socket && token && strlen(socket) < sizeof g->cache_socket &&
            hex_decode(token, g->cache_token, sizeof g->cache_token) == 0)
            snprintf(g->cache_socket, sizeof g->cache_socket, "%s", socket);
        grant_text = text;  /* kept to pass the grant on (execve below) */
        grant_len = (size_t)st.st_size;
        /* Read, it is closed: no other program this one executes (a shell, a tool) inherits it,
         * the service does not see it among its descriptors (CPython's test_subprocess lists
         * them), and /proc/PID/fd does not show it. pass_grant_on writes it again at its number
         * only for an exec of the measured executable. */
        RESOLVE(close)((int)fd);
    } else if (text) {
        OPENSSL_cleanse(text, (size_t)st.st_size);
        free(text);
    }
    json_decref(doc);  /* the key strings are freed with it; jansson does not clear them */
    return ok;
}

static void grant_free(struct grant *g)
{
    for (size_t i = 0; i < g->ephemeral_count; i++) {
        free(g->ephemeral[i].path);
        free(g->ephemeral[i].fspf_path);
    }
    if (g->ephemeral) OPENSSL_cleanse(g->ephemeral, g->ephemeral_count * sizeof *g->ephemeral);
    free(g->ephemeral);
    keys_free(&g->keys);
    json_decref(g->files);
    free(g->config);
    free(g->keys_path);
    OPENSSL_cleanse(g->cache_token, sizeof g->cache_token);
    memset(g, 0, sizeof *g);
}

/* The runtime config of a start without a grant: SCONIFY_RUNTIME_CONFIG, else runtime.json
 * beside the shield's lib/ directory (/.sconify/lib/libsconify-shield.so -> /.sconify/runtime.json). */
static int ungranted_config(struct rt_config *cfg, struct rt_error *err)
{
    const char *configured = getenv("SCONIFY_RUNTIME_CONFIG");
    if (configured && *configured) return config_load(configured, cfg, err);
    Dl_info self;
    char path[PATH_MAX];
    if (!dladdr((void *)ungranted_config, &self) || !self.dli_fname || strlen(self.dli_fname) >= sizeof path)
        return rt_fail(err, "cannot find the shield's own path");
    strcpy(path, self.dli_fname);
    char *slash = strrchr(path, '/');
    if (slash) *slash = '\0';           /* .../lib */
    slash = strrchr(path, '/');
    if (!slash) return rt_fail(err, "the shield is not in a lib/ directory");
    snprintf(slash, sizeof path - (size_t)(slash - path), "/runtime.json");
    return config_load(path, cfg, err);
}

/* With a grant: the keys serve volumes only in the executable they were issued for (this
 * process is not the launcher, which measured the file: it checks its own /proc/self/exe, once
 * per process start, ~10 ms for 17 MB) and with the runtime config they bind. */
static int grant_fits(const struct grant *g)
{
    if (strcmp(g->keys.runtime_config_sha256, S.cfg.source_sha256) != 0) {
        shield_log("the granted runtime config is not the one the keys bind; no keys: volumes are unreadable");
        return 0;
    }
    const char *expected = *g->keys.executable_sha256 ? g->keys.executable_sha256 : S.cfg.executable_sha256;
    unsigned char digest[32];
    char hex[65];
    int fd = RESOLVE(open)("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    int rc = fd >= 0 ? file_sha256(fd, digest) : -1;
    if (fd >= 0) RESOLVE(close)(fd);
    if (rc != 0) {
        shield_log("cannot read this process's executable to check it; no keys: volumes are unreadable");
        return 0;
    }
    hex_encode(digest, 32, hex);
    if (strcmp(hex, expected) != 0) {
        shield_log("this process's executable %s has SHA-256 %s but the keys were issued for %s; no keys: volumes "
                   "are unreadable", S.cfg.executable, hex, expected);
        return 0;
    }
    return 1;
}

/* A volume without keys: its files are refused (EACCES, one line the first time). */
int locked_volume_file(const char *path)
{
    if (run_time_mount(path)) return 0;  /* /proc, /dev...: never a volume's */
    for (size_t i = 0; i < S.cfg.volume_count; i++) {
        /* an authenticated volume is plaintext on disk: locking it would protect nothing */
        if (S.cfg.volumes[i].protection != FSPF_ENCRYPTED) continue;
        const char *v = S.cfg.volumes[i].path;
        size_t len = strlen(v);
        if (strncmp(path, v, len) == 0 && (path[len] == '/' || len == 1) && path[len + (len > 1)] != '\0') {
            struct stat64 st;
            if (RESOLVE(stat64)(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
            static int told;
            if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
                shield_log("%s: volume %s is unreadable: no keys were granted to this process (only the command "
                           "the conversion recorded, started by sconify-run, gets them)", path, v);
            return 1;
        }
    }
    return 0;
}

/* The injection files of the grant (policy mode), kept for this process's life. */
static void take_injected(const struct grant *g)
{
    size_t n = json_array_size(g->files);
    S.injected = calloc(n + 1, sizeof *S.injected);
    if (!S.injected) fatal("out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *f = json_array_get(g->files, i);
        const char *path = json_string_value(json_object_get(f, "path"));
        json_t *content = json_object_get(f, "content");
        if (!path || path[0] != '/' || strlen(path) >= PATH_MAX || !json_is_string(content)) continue;
        struct injected *inj = &S.injected[S.ninjected++];
        inj->path = strdup(path);
        normalise(inj->path);
        inj->len = json_string_length(content);
        inj->content = malloc(inj->len + 1);
        if (!inj->path || !inj->content) fatal("out of memory");
        memcpy(inj->content, json_string_value(content), inj->len + 1);
    }
}

/* Read the fspf open at fd and, if its tag is fresh, make it sv->fs (freed first when loaded:
 * sv->seen.st_nlink). Fresh at start-up (start): a tag the grant accepts (what the launcher
 * checked); else, and always later, a tag that the keys file (or the container copy's state
 * file) records now, by the launcher's rule (fresh_tag): another process of the service
 * committed since. 1 loaded, 0 the tag is sv->tag already, -1 refused (err). */
static int load_fspf(struct svol *sv, int fd, int start, struct rt_error *err)
{
    struct stat64 st;
    if (RESOLVE(fstat64)(fd, &st) != 0) return rt_fail(err, "cannot read the fspf of %s %s", region_word(sv), sv->v->path);
    unsigned char *data = malloc((size_t)st.st_size + 1);
    if (!data || pread_full(fd, data, (size_t)st.st_size, 0) != 0) {
        free(data);
        return rt_fail(err, "cannot read the fspf of %s %s", region_word(sv), sv->v->path);
    }
    const unsigned char *tag = st.st_size >= 16 ? data + st.st_size - 16 : NULL;
    if (!start && tag && memcmp(tag, sv->tag, 16) == 0) {
        sv->seen = st;
        free(data);
        return 0;
    }
    struct rt_state state;
    int have_state = sv->container_copy && state_load(sv->v->path, sv->key, &state);
    /* An ephemeral region's fspf is this start's: the key made for this start alone
     * authenticates it (no tag is recorded anywhere). */
    const unsigned char *want = sv->ephemeral ? tag
                                : start ? fresh_tag(&sv->granted, sv->container_copy, have_state ? &state : NULL, tag)
                                        : NULL;
    struct rt_keys keys = {0};
    struct store_record rec;
    if (!want && !sv->ephemeral && S.has_store && !sv->container_copy) {
        int found = store_read(&S.store, sv->record, &rec, err);
        if (found < 0) {
            free(data);
            return -1;
        }
        want = found ? store_fresh_tag(&rec, tag) : NULL;
    } else if (!want && !sv->ephemeral && S.keys_persist && keys_load(S.keys_path, &keys, err) == 0) {
        struct rt_key *k = keys_find(&keys, sv->v->path);
        if (k && CRYPTO_memcmp(k->key, sv->key, 32) == 0) want = fresh_tag(k, sv->container_copy, have_state ? &state : NULL, tag);
    }
    struct fspf fs;
    int rc = -1;
    if (!want && sv->ephemeral) {
        rt_fail(err, "ephemeral region %s: its fspf %s is too short", sv->v->path, sv->v->fspf_path);
    } else if (!want) {
        char got[33] = "none";
        if (tag) hex_encode(tag, 16, got);
        rt_fail(err, "volume %s: its fspf on disk carries tag %s, which %s does not record: an older or another "
                     "copy was put there (rollback); refused", sv->v->path, got,
                sv->container_copy ? "the container's state" : S.has_store ? "the state store" : "the keys file");
    } else if (fspf_load(&fs, data, (size_t)st.st_size, sv->key, want, err) == 0) {
        if (fs.region_count != 1 || strcmp(fs.regions[0].path, sv->v->path) != 0) {
            fspf_free(&fs);
            rt_fail(err, "the fspf of %s %s does not describe it", region_word(sv), sv->v->path);
        } else {
            if (sv->seen.st_nlink) fspf_free(&sv->fs);
            sv->fs = fs;
            memcpy(sv->tag, tag, 16);
            sv->seen = st;
            for (uint32_t i = 0; i < sv->fs.file_count; i++) sv->has_links |= sv->fs.files[i].protection == FSPF_SYMLINK;
            sv->foreign = 1;  /* commits this process did not make: its next sync flushes them too */
            rc = 1;
        }
    }
    keys_free(&keys);
    free(data);
    return rc;
}

int volume_refresh(struct svol *vol, int locked)
{
    /* a region of this process's own has no fspf file; debug-mode keys record no tags to judge by */
    if (vol->ephemeral ? !vol->shared : !S.keys_persist) return 0;
    struct stat64 st;
    in_shield++;
    pthread_mutex_lock(&S.lock);
    int rc = 0;
    if (RESOLVE(stat64)(vol->v->fspf_path, &st) == 0 && st.st_dev == vol->seen.st_dev && st.st_ino == vol->seen.st_ino &&
        st.st_size == vol->seen.st_size && st.st_mtim.tv_sec == vol->seen.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == vol->seen.st_mtim.tv_nsec)
        goto out;
    int lock = locked ? -1 : volume_lock(vol, LOCK_SH);  /* no half-recorded commit in between */
    int fd = RESOLVE(open)(vol->v->fspf_path, O_RDONLY | O_CLOEXEC);
    /* an ephemeral region's fspf removed behind the service's back: the next commit writes it again */
    int gone = fd < 0 && errno == ENOENT && vol->ephemeral;
    struct rt_error err = {{0}};
    rc = fd >= 0 ? load_fspf(vol, fd, 0, &err) : gone ? 0 : (rt_fail(&err, "%s %s: cannot open its fspf: %s",
                                                                      region_word(vol), vol->v->path, strerror(errno)), -1);
    if (fd >= 0) RESOLVE(close)(fd);
    if (lock >= 0) RESOLVE(close)(lock);
    if (rc < 0) shield_log("%s", err.msg);
out:
    pthread_mutex_unlock(&S.lock);
    in_shield--;
    return rc;
}

/* fork() waits for a commit under way in another thread of this process (S.lock): a child must
 * not inherit a half-changed fspf, nor the descriptor of a volume lock it would hold as long as
 * it lives. The child's own S.lock is a new one (its thread is not the owner the parent's had). */
static void fork_prepare(void) { pthread_mutex_lock(&S.lock); }
static void fork_parent(void) { pthread_mutex_unlock(&S.lock); }
static void fork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
    S.lock = fresh;
}

/* The volumes, each with its fspf opened with the granted key and tag (or a newer one another
 * process of the service committed since the launcher's check: the keys file records it). */
static void open_volumes(const struct grant *g)
{
    S.keys_path = strdup(g->keys_path);
    S.keys_persist = g->persist;
    if (g->persist && g->keys.state) {
        struct rt_error err = {{0}};
        if (store_open_keys_state(g->keys.state, &S.store, &err) != 0) fatal(err.msg);
        S.has_store = 1;
    }
    for (size_t i = 0; i < S.cfg.volume_count; i++) {
        const struct rt_volume *v = &S.cfg.volumes[i];
        struct rt_key *k = keys_find((struct rt_keys *)&g->keys, v->path);
        if (!k) continue;  /* sconify-run checked every volume; a SCONE_FSPF debug key covers one */
        struct svol *sv = &S.vols[S.nvols];
        struct rt_error err = {{0}};
        sv->v = v;
        sv->len = strlen(v->path);
        memcpy(sv->key, k->key, 32);
        sv->granted = *k;
        sv->granted.path = NULL;
        sv->granted.name = NULL;
        sv->record = strdup(key_record_name(k));
        sv->container_copy = k->container_copy;
        int fd = RESOLVE(open)(v->fspf_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) fatal("a volume's fspf disappeared after start-up");
        int rc = load_fspf(sv, fd, 1, &err);
        RESOLVE(close)(fd);
        if (rc != 1 && S.keys_persist) {  /* again between two commits: the fspf and its record agree */
            int lock = volume_lock(sv, LOCK_SH);
            if ((fd = RESOLVE(open)(v->fspf_path, O_RDONLY | O_CLOEXEC)) >= 0) rc = load_fspf(sv, fd, 1, &err);
            if (fd >= 0) RESOLVE(close)(fd);
            if (lock >= 0) RESOLVE(close)(lock);
        }
        if (rc != 1) fatal(err.msg);
        S.nvols++;
    }
}

/* An ephemeral region (/tmp): served like an encrypted volume that starts empty, without fsyncs
 * and without tags. Its fspf is
 *  - with a grant that names the region: the file the launcher wrote for this start, encrypted
 *    with the key the grant carries (in no file, in no environment), shared by the processes of
 *    the service as a volume's is (commit.c, volume_refresh): a child sees what its parent wrote;
 *  - else (no grant: docker exec, a command the policy refused, a start without keys; or a
 *    region the launcher could not prepare): in this process's memory only, with no key: the
 *    per-file keys it will hold never leave the process.
 * A region that is a volume too, or a run-time mount (/proc, /dev, ...), is not one. */
static void add_ephemeral(const char *config_path, const struct grant *g)
{
    char path[PATH_MAX];
    if (!config_path || config_path[0] != '/' || strlen(config_path) >= sizeof path) return;
    strcpy(path, config_path);
    normalise(path);
    if (run_time_mount(path)) return;
    for (size_t i = 0; i < S.nvols; i++)
        if (strcmp(S.vols[i].v->path, path) == 0) return;
    struct svol *sv = &S.vols[S.nvols];
    struct rt_error err = {{0}};
    sv->own.path = strdup(path);
    sv->own.protection = FSPF_ENCRYPTED;
    sv->v = &sv->own;
    sv->len = strlen(path);
    sv->ephemeral = 1;
    if (!sv->own.path) fatal("out of memory");
    for (size_t i = 0; g && i < g->ephemeral_count && !sv->shared; i++) {
        if (strcmp(g->ephemeral[i].path, path) != 0) continue;
        if (!(sv->own.fspf_path = strdup(g->ephemeral[i].fspf_path))) fatal("out of memory");
        memcpy(sv->key, g->ephemeral[i].key, sizeof sv->key);
        sv->shared = 1;
    }
    int fd = sv->shared ? RESOLVE(open)(sv->own.fspf_path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd >= 0) {
        int rc = load_fspf(sv, fd, 1, &err);
        RESOLVE(close)(fd);
        if (rc != 1) fatal(err.msg);
    } else {
        /* none, or removed behind the service's back: empty; the first commit writes it */
        if (fspf_one_region(&sv->fs, path, FSPF_ENCRYPTED, &err) != 0) fatal(err.msg);
        sv->seen.st_nlink = 1;  /* sv->fs is loaded */
    }
    S.nvols++;
}

__attribute__((constructor)) static void shield_init(void)
{
    in_shield++;
    struct rt_error err;
    struct grant g;
    memset(&g, 0, sizeof g);
    int granted = read_grant(&g);
    if ((granted ? config_parse(g.config, g.config_len, "granted by sconify-run", &S.cfg, &err)
                 : ungranted_config(&S.cfg, &err)) != 0 ||
        !same_file("/proc/self/exe", S.cfg.executable)) {
        /* not the measured executable (sh, perl...): passive, it sees what is on disk */
        if (granted && S.cfg.executable) snprintf(grant_exe, sizeof grant_exe, "%s", S.cfg.executable);
        if (S.cfg.executable) config_free(&S.cfg);
        if (granted) grant_free(&g);
        in_shield--;
        return;
    }
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    const void *archive;
    size_t size;
    unsigned char root[32];
    int found = embedfs_find_self(&archive, &size, root, &err);
    if (found < 0) fatal(err.msg);
    if (found == 1) {
        if (embedfs_open(&S.emb, archive, size, &err) != 0) fatal(err.msg);
        if (memcmp(root, S.emb.root_hash, 32) != 0) fatal("the embedfs root hash differs from its descriptor's");
        S.has_emb = 1;
        /* Embedded entries show the executable's modification time, as the files of its image
         * layer would (a package's files share its date): CPython's pycs compiled in the image
         * from a source of that date stay valid, and zipfile takes the time (not 1970). */
        struct stat64 exe;
        if (RESOLVE(stat64)("/proc/self/exe", &exe) == 0) S.emb_time = exe.st_mtim;
    }
    S.vols = calloc(S.cfg.volume_count + S.cfg.ephemeral_count + 1, sizeof *S.vols);
    if (!S.vols) fatal("out of memory");
    if (granted) snprintf(grant_exe, sizeof grant_exe, "%s", S.cfg.executable);
    int fits = granted && grant_fits(&g);
    if (fits) {
        open_volumes(&g);
        take_injected(&g);
        memcpy(S.cache_socket, g.cache_socket, sizeof S.cache_socket);
        memcpy(S.cache_token, g.cache_token, sizeof S.cache_token);
        if (g.keys.has_code_key) {  /* --encrypted-code: without it its members are EACCES (embedded.c) */
            memcpy(S.code_key, g.keys.code_key, sizeof S.code_key);
            S.has_code_key = 1;
        }
    } else {
        S.locked = S.cfg.volume_count > 0;
    }
    for (size_t i = 0; i < S.cfg.ephemeral_count; i++) add_ephemeral(S.cfg.ephemeral[i], fits ? &g : NULL);
    if (granted) grant_free(&g);
    install_seccomp();
    if (S.nvols) pthread_atfork(fork_prepare, fork_parent, fork_child);
    S.active = S.has_emb || S.nvols || S.locked || S.ninjected;
    if (fits && S.nvols) cache_adopt_inherited();
    in_shield--;
}

/* ------------------------------------------------------------------ passing the grant on */

/* Whether exec of program (a path, or a name looked up in envp's PATH as execvp does) starts
 * the measured executable: any other program (a shell, a tool, something a derived layer put
 * at a name) gets no grant, its descriptor being close-on-exec. Only system calls here. */
static int executable_file(const char *candidate)
{
    struct stat64 st;
    return RESOLVE(stat64)(candidate, &st) == 0 && S_ISREG(st.st_mode) && RESOLVE(access)(candidate, X_OK) == 0;
}

static int executes_measured(const char *program, char *const envp[])
{
    struct stat64 want, got;
    if (!program || !*program || !*grant_exe || RESOLVE(stat64)(grant_exe, &want) != 0) return 0;
    const char *path = NULL;
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
    char found[PATH_MAX];  /* the first one execvp runs */
    return policy_lookup(program, path, executable_file, found, sizeof found) &&
           RESOLVE(stat64)(found, &got) == 0 && got.st_dev == want.st_dev && got.st_ino == want.st_ino;
}

/* Programs the granted service executes inherit its grant (its code chose them), also when the
 * caller closed every other descriptor first (Python's subprocess and multiprocessing's spawn:
 * close_fds=True). Just before the exec, in the child, a grant named in the new environment
 * whose descriptor is gone (closed, or marked close-on-exec: Node marks the descriptors it
 * inherits) is written again into a new sealed memfd at that number. A caller
 * that leaves SCONIFY_GRANT out of the environment gives the program no grant; a number taken
 * by another descriptor is left alone (no grant). Only system calls here: this runs between
 * fork and exec. */
static void pass_grant_on(const char *program, char *const envp[])
{
    static const char name[] = "SCONIFY_GRANT=";
    if (!grant_text || !envp || !executes_measured(program, envp)) return;
    long number = -1;
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, name, sizeof name - 1) == 0) {
            char *end;
            number = strtol(*e + sizeof name - 1, &end, 10);
            if (*end || number < 0 || number > INT_MAX) return;
        }
    if (number < 0) return;
    int flags = fcntl((int)number, F_GETFD);
    if (flags >= 0 && fcntl((int)number, F_GET_SEALS) == GRANT_SEALS) {
        if (flags & FD_CLOEXEC) fcntl((int)number, F_SETFD, flags & ~FD_CLOEXEC);  /* keep it across the exec */
        return;
    }
    if (flags >= 0) return;  /* the number names another descriptor: no grant */
    int fd = memfd_create("sconify-grant", MFD_ALLOW_SEALING);
    if (fd < 0) return;
    if (write_full(fd, grant_text, grant_len) == 0 && fcntl(fd, F_ADD_SEALS, GRANT_SEALS) == 0 && fd != (int)number)
        dup2(fd, (int)number);
    if (fd != (int)number) RESOLVE(close)(fd);
}

extern char **environ;

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    pass_grant_on(path, envp);
    return RESOLVE(execve)(path, argv, envp);
}

EXPORT int execv(const char *path, char *const argv[])
{
    pass_grant_on(path, environ);
    return RESOLVE(execv)(path, argv);
}

/* libuv (Node's child_process) sets environ to the child's environment and calls execvp. */
EXPORT int execvp(const char *file, char *const argv[])
{
    pass_grant_on(file, environ);
    return RESOLVE(execvp)(file, argv);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    pass_grant_on(file, envp);
    return RESOLVE(execvpe)(file, argv, envp);
}

/* posix_spawn, posix_spawnp: glibc's run the file actions and the exec inside glibc, past the
 * shield, so a measured program spawned that way got no grant (CPython's subprocess spawns
 * this way with close_fds=False) and an action opening an embedded file gave ENOENT. A spawn of
 * the measured executable is made here instead: fork, the attributes and the file actions
 * applied through the shield (open, dup2, close are the interposed ones), then the exec, which
 * passes the grant on; a failure in the child comes back through a close-on-exec pipe as the
 * errno posix_spawn returns. Any other program, or file actions of a kind this does not know,
 * is glibc's spawn as before. */

/* glibc's struct __spawn_action (posix/spawn_int.h, unchanged from 2.29 to 2.39 but for the
 * kinds appended): the public posix_spawn_file_actions_t holds an array of them. */
struct spawn_action {
    enum { SPAWN_CLOSE, SPAWN_DUP2, SPAWN_OPEN, SPAWN_CHDIR, SPAWN_FCHDIR, SPAWN_CLOSEFROM, SPAWN_TCSETPGRP,
           SPAWN_KINDS } tag;
    union {
        struct { int fd; } close_action;
        struct { int fd, newfd; } dup2_action;
        struct { int fd; char *path; int oflag; mode_t mode; } open_action;
        struct { char *path; } chdir_action;
        struct { int fd; } fchdir_action;
        struct { int from; } closefrom_action;
        struct { int fd; } setpgrp_action;
    } action;
};

static const struct spawn_action *spawn_actions(const posix_spawn_file_actions_t *fa, int *count)
{
    *count = fa ? fa->__used : 0;
    return fa ? (const struct spawn_action *)(const void *)fa->__actions : NULL;
}

static int spawn_actions_known(const posix_spawn_file_actions_t *fa)
{
    int count;
    const struct spawn_action *a = spawn_actions(fa, &count);
    for (int i = 0; i < count; i++)
        if ((unsigned)a[i].tag >= SPAWN_KINDS) return 0;
    return 1;
}

/* In the child: the attributes, then the file actions in order. 0, or the errno of the first
 * that failed. */
static int spawn_setup(const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *attr)
{
    short flags = 0;
    if (attr) posix_spawnattr_getflags(attr, &flags);
    if (flags & POSIX_SPAWN_SETSIGMASK) {
        sigset_t mask;
        posix_spawnattr_getsigmask(attr, &mask);
        sigprocmask(SIG_SETMASK, &mask, NULL);
    }
    if (flags & POSIX_SPAWN_SETSIGDEF) {
        sigset_t def;
        posix_spawnattr_getsigdefault(attr, &def);
        for (int sig = 1; sig < NSIG; sig++)
            if (sigismember(&def, sig) == 1) signal(sig, SIG_DFL);
    }
    if ((flags & POSIX_SPAWN_SETSID) && setsid() < 0) return errno;
    if (flags & POSIX_SPAWN_SETPGROUP) {
        pid_t group = 0;
        posix_spawnattr_getpgroup(attr, &group);
        if (setpgid(0, group) != 0) return errno;
    }
    if (flags & (POSIX_SPAWN_SETSCHEDULER | POSIX_SPAWN_SETSCHEDPARAM)) {
        int policy = 0;
        struct sched_param param;
        posix_spawnattr_getschedpolicy(attr, &policy);
        posix_spawnattr_getschedparam(attr, &param);
        if ((flags & POSIX_SPAWN_SETSCHEDULER ? sched_setscheduler(0, policy, &param) : sched_setparam(0, &param)) < 0)
            return errno;
    }
    if ((flags & POSIX_SPAWN_RESETIDS) && (setgid(getgid()) != 0 || setuid(getuid()) != 0)) return errno;
    int count;
    const struct spawn_action *a = spawn_actions(fa, &count);
    for (int i = 0; i < count; i++) {
        int rc = 0;
        switch (a[i].tag) {
        case SPAWN_CLOSE:
            rc = close(a[i].action.close_action.fd) != 0 && errno != EBADF ? -1 : 0;
            break;
        case SPAWN_DUP2: {
            int from = a[i].action.dup2_action.fd, to = a[i].action.dup2_action.newfd;
            if (from == to) {  /* the descriptor stays, inherited */
                int fdflags = fcntl(from, F_GETFD);
                rc = fdflags < 0 ? -1 : fcntl(from, F_SETFD, fdflags & ~FD_CLOEXEC);
            } else {
                rc = dup2(from, to) < 0 ? -1 : 0;
            }
            break;
        }
        case SPAWN_OPEN: {
            int want = a[i].action.open_action.fd;
            int fd = open(a[i].action.open_action.path, a[i].action.open_action.oflag, a[i].action.open_action.mode);
            if (fd >= 0 && fd != want) {
                rc = dup2(fd, want) < 0 ? -1 : 0;
                int saved = errno;
                close(fd);
                errno = saved;
            } else if (fd < 0) {
                rc = -1;
            }
            break;
        }
        case SPAWN_CHDIR: rc = chdir(a[i].action.chdir_action.path); break;
        case SPAWN_FCHDIR: rc = fchdir(a[i].action.fchdir_action.fd); break;
        case SPAWN_CLOSEFROM: rc = close_range((unsigned)a[i].action.closefrom_action.from, ~0U, 0); break;
        case SPAWN_TCSETPGRP: rc = tcsetpgrp(a[i].action.setpgrp_action.fd, getpgrp()); break;
        default: errno = ENOSYS; rc = -1; break;
        }
        if (rc != 0) return errno;
    }
    return 0;
}

static int shield_spawn(pid_t *pid, const char *file, int search, const posix_spawn_file_actions_t *fa,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return errno;
    pid_t child = fork();
    if (child < 0) {
        int e = errno;
        RESOLVE(close)(report[0]);
        RESOLVE(close)(report[1]);
        return e;
    }
    if (child == 0) {
        RESOLVE(close)(report[0]);
        int e = spawn_setup(fa, attr);
        if (!e) {
            (search ? execvpe : execve)(file, argv, envp);
            e = errno;
        }
        write_full(report[1], &e, sizeof e);
        _exit(127);
    }
    RESOLVE(close)(report[1]);
    int e = 0;
    ssize_t n;
    while ((n = read(report[0], &e, sizeof e)) < 0 && errno == EINTR) {}
    RESOLVE(close)(report[0]);
    if (n == (ssize_t)sizeof e) {  /* the child failed before its exec: reaped here, as glibc's */
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {}
        return e;
    }
    if (pid) *pid = child;
    return 0;
}

/* search: posix_spawnp (file looked up in PATH). */
static int spawn(pid_t *pid, const char *file, int search, const posix_spawn_file_actions_t *fa,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    char *const *env = envp ? envp : environ;
    if (ACTIVE() && grant_text && spawn_actions_known(fa) && executes_measured(file, env))
        return shield_spawn(pid, file, search, fa, attr, argv, env);
    return (search ? RESOLVE(posix_spawnp) : RESOLVE(posix_spawn))(pid, file, fa, attr, argv, envp);
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *attr,
                       char *const argv[], char *const envp[])
{
    return spawn(pid, path, 0, fa, attr, argv, envp);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *attr,
                        char *const argv[], char *const envp[])
{
    return spawn(pid, file, 1, fa, attr, argv, envp);
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
