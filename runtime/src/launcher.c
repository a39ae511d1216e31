/* sconify-run: the ENTRYPOINT of a converted image (simulation mode).
 *
 *   sconify-run [--] COMMAND [ARGS...]
 *
 * Before the service starts it plays the attestation SCONE's CAS performs: it recomputes the
 * MRENCLAVE of the measured executable (parameters from the image's runtime config, checked by
 * the result, never trusted on their own), compares it with the one in the keys file, and checks
 * every volume's fspf against the key and tag recorded there (a restored older copy is a
 * rollback). Then it runs COMMAND with the shield preloaded (libsconify-shield.so, which serves
 * the embedfs and the volumes inside the measured process), forwards signals to it, reaps
 * zombies when it is PID 1, and exits with its status.
 *
 *   sconify-run --measure EXE HEAP STACK THREADS SSA    print the MRENCLAVE of EXE
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "config.h"
#include "embedfs.h"
#include "fspf.h"
#include "measure.h"
#include "util.h"

#define EXIT_REFUSED 2    /* attestation or keys refused: the service never starts */
#define EXIT_NOT_RUN 127  /* the command could not be executed */

static pid_t child_pid;

static void die(const char *fmt, const char *msg) __attribute__((noreturn));
static void die(const char *fmt, const char *msg)
{
    fprintf(stderr, "sconify-run: ");
    fprintf(stderr, fmt, msg);
    fputc('\n', stderr);
    exit(EXIT_REFUSED);
}

/* The runtime's own directory: /.sconify/bin/sconify-run -> /.sconify */
static void runtime_root(const char *argv0, char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) snprintf(self, sizeof self, "%s", argv0);
    else self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) *slash = '\0';              /* .../bin */
    slash = strrchr(self, '/');
    if (slash && slash != self) *slash = '\0';  /* ... */
    else if (slash) slash[1] = '\0';
    snprintf(out, len, "%s", self);
}

static int measure_main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: sconify-run --measure EXE HEAP STACK THREADS SSA\n");
        return 2;
    }
    struct sgx_params p = {strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0),
                           (uint32_t)strtoul(argv[5], NULL, 0), (uint32_t)strtoul(argv[6], NULL, 0)};
    int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "sconify-run: cannot open %s: %s\n", argv[2], strerror(errno));
        return 2;
    }
    unsigned char mr[32];
    struct rt_error err;
    if (sgx_measure_fd(fd, &p, mr, &err) != 0) {
        fprintf(stderr, "sconify-run: %s\n", err.msg);
        return 2;
    }
    char hex[65];
    hex_encode(mr, 32, hex);
    printf("%s\n", hex);
    return 0;
}

static int file_sha256(int fd, unsigned char digest[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    static unsigned char buf[1 << 20];
    uint64_t off = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (ssize_t n; ok && (n = pread(fd, buf, sizeof buf, (off_t)off)) != 0; off += (uint64_t)n) {
        if (n < 0) {
            if (errno == EINTR) { n = 0; continue; }
            ok = 0;
            break;
        }
        ok = EVP_DigestUpdate(ctx, buf, (size_t)n);
    }
    ok = ok && EVP_DigestFinal_ex(ctx, digest, NULL);
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* Attestation, simulated: the measured executable must have the MRENCLAVE the keys were issued
 * for (or, in an image without volumes run without keys, the one the conversion recorded). */
static void check_measurement(const struct rt_config *cfg, const char *expected, const char *expected_file,
                              const char *source)
{
    int fd = open(cfg->executable, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        char msg[PATH_MAX + 128];
        snprintf(msg, sizeof msg, "%s: %s", cfg->executable, strerror(errno));
        die("cannot open the measured executable %s; the image is damaged, re-convert it", msg);
    }
    unsigned char mr[32];
    struct rt_error err;
    if (sgx_measure_fd(fd, &cfg->params, mr, &err) != 0) die("cannot measure the executable: %s", err.msg);
    char hex[65];
    hex_encode(mr, 32, hex);
    if (strcmp(hex, expected) != 0) {
        fprintf(stderr,
                "sconify-run: MRENCLAVE mismatch: %s measures %s but %s expects %s; the executable or its "
                "embedded code was changed, or the keys belong to another image; refusing to start\n",
                cfg->executable, hex, source, expected);
        exit(EXIT_REFUSED);
    }
    /* The whole file too: bytes no segment loads (symbols, section headers) are not in MRENCLAVE. */
    if (*expected_file) {
        unsigned char digest[32];
        if (file_sha256(fd, digest) != 0) die("cannot read the measured executable: %s", strerror(errno));
        hex_encode(digest, 32, hex);
        if (strcmp(hex, expected_file) != 0) {
            fprintf(stderr, "sconify-run: executable changed: %s has SHA-256 %s but %s expects %s; refusing to start\n",
                    cfg->executable, hex, source, expected_file);
            exit(EXIT_REFUSED);
        }
    }
    close(fd);
}

/* The scripts crossed to start the service (entrypoint and console scripts) run from disk: the
 * kernel and the shell read them before any shield does. Each must be its measured copy. */
static void check_scripts(const struct rt_config *cfg)
{
    if (!cfg->script_count) return;
    int fd = open(cfg->executable, O_RDONLY | O_CLOEXEC);
    void *archive = NULL;
    size_t size = 0;
    unsigned char root[32];
    struct rt_error err;
    struct embedfs fs;
    if (fd < 0 || embedfs_find_in_file(fd, &archive, &size, root, &err) != 1 || embedfs_open(&fs, archive, size, &err) != 0)
        die("cannot read the embedfs of the measured executable to check the service's scripts: %s", err.msg);
    close(fd);
    for (size_t i = 0; i < cfg->script_count; i++) {
        const char *path = cfg->scripts[i];
        const struct embedfs_member *m = embedfs_lookup(&fs, path + 1, strlen(path + 1));
        int sfd = open(path, O_RDONLY | O_CLOEXEC);
        unsigned char digest[32];
        struct stat st;
        int same = m && m->kind == EMBEDFS_FILE && sfd >= 0 && fstat(sfd, &st) == 0 && (uint64_t)st.st_size == m->size &&
                   file_sha256(sfd, digest) == 0 && memcmp(digest, m->sha256, 32) == 0;
        if (sfd >= 0) close(sfd);
        if (!same) {
            char line[PATH_MAX + 128];
            snprintf(line, sizeof line, "%s, a script the service starts through, is not its measured copy (changed, "
                                        "replaced or missing); refusing to start", path);
            die("%s", line);
        }
    }
    embedfs_close(&fs);
    free(archive);
}

/* Every volume must open with its key and carry the recorded tag (or the tag of a commit that
 * was under way when the last container stopped, which then becomes the recorded one). */
static void check_volumes(const struct rt_config *cfg, struct rt_keys *keys, const char *keys_path, int persist)
{
    for (size_t i = 0; i < cfg->volume_count; i++) {
        const struct rt_volume *vol = &cfg->volumes[i];
        struct rt_key *key = keys_find(keys, vol->path);
        char line[1024];
        if (!key) {
            snprintf(line, sizeof line, "the keys file has no key for volume %s; mount the keys.json written by "
                                        "sconify-image for this image", vol->path);
            die("%s", line);
        }
        int fd = open(vol->fspf_path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            snprintf(line, sizeof line, "volume %s: cannot open its fspf %s (%s); mount the volume written for "
                                        "this image (an empty directory is not one)",
                     vol->path, vol->fspf_path, strerror(errno));
            die("%s", line);
        }
        unsigned char *data = malloc((size_t)st.st_size + 1);
        if (!data || pread_full(fd, data, (size_t)st.st_size, 0) != 0) die("%s", "cannot read a volume's fspf");
        close(fd);
        const unsigned char *tag = st.st_size >= 16 ? data + st.st_size - 16 : NULL;
        int next = tag && key->has_next && memcmp(tag, key->next_tag, 16) == 0;
        struct fspf fs;
        struct rt_error err;
        if (fspf_load(&fs, data, (size_t)st.st_size, key->key, next ? key->next_tag : key->tag, &err) != 0) {
            char got[33] = "none", want[33];
            if (tag) hex_encode(tag, 16, got);
            hex_encode(key->tag, 16, want);
            if (tag && memcmp(tag, key->tag, 16) != 0 && !next)
                snprintf(line, sizeof line,
                         "volume %s: its fspf tag is %s but the keys record %s: an older copy of the volume was "
                         "restored (rollback) or it belongs to another deployment; restore the latest copy of the "
                         "volume, or use the keys it was written with", vol->path, got, want);
            else
                snprintf(line, sizeof line, "volume %s: %s", vol->path, err.msg);
            die("%s", line);
        }
        fspf_free(&fs);
        free(data);
        if (next && persist) {
            struct rt_error e2;
            if (keys_record_tag(keys_path, vol->path, key->next_tag, 0, &e2) != 0) die("%s", e2.msg);
        }
    }
}

static void forward(int sig)
{
    if (child_pid > 0) kill(child_pid, sig);
}

static int exit_status(int status)
{
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

static void set_preload(const char *lib)
{
    const char *old = getenv("LD_PRELOAD");
    if (old && *old) {
        size_t len = strlen(old) + strlen(lib) + 2;
        char *value = malloc(len);
        snprintf(value, len, "%s:%s", lib, old);
        setenv("LD_PRELOAD", value, 1);
        free(value);
    } else {
        setenv("LD_PRELOAD", lib, 1);
    }
}

int main(int argc, char **argv)
{
    /* The image's openssl.cnf is the service's business, not the runtime's. */
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    if (argc >= 2 && strcmp(argv[1], "--measure") == 0) return measure_main(argc, argv);
    int first = 1;
    if (argc > first && strcmp(argv[first], "--") == 0) first++;
    if (first >= argc) {
        fprintf(stderr, "sconify-run: no command to run; the image's CMD is empty, pass one: docker run IMAGE COMMAND\n");
        return EXIT_NOT_RUN;
    }

    char root[PATH_MAX], config_path[PATH_MAX + 32], shield[PATH_MAX + 32];
    runtime_root(argv[0], root, sizeof root);
    const char *cfg_env = getenv("SCONIFY_RUNTIME_CONFIG");
    snprintf(config_path, sizeof config_path, "%s", cfg_env && *cfg_env ? cfg_env : "");
    if (!*config_path) snprintf(config_path, sizeof config_path, "%s/runtime.json", root);
    snprintf(shield, sizeof shield, "%s/lib/libsconify-shield.so", root);

    struct rt_config cfg;
    struct rt_error err;
    if (config_load(config_path, &cfg, &err) != 0) die("%s", err.msg);
    if (access(shield, R_OK) != 0) die("the shield library %s is missing; the image is damaged, re-convert it", shield);

    /* Keys: SCONE's debug-mode variables, else the keys file (a secret mount). */
    const char *scone_fspf = getenv("SCONE_FSPF");
    const char *scone_key = getenv("SCONE_FSPF_KEY");
    const char *keys_env = getenv("SCONIFY_KEYS");
    const char *keys_path = keys_env && *keys_env ? keys_env : DEFAULT_KEYS_PATH;
    struct rt_keys keys;
    int have_keys = 0, from_env = 0;
    if (scone_key && *scone_key) {
        if (keys_from_scone_env(&cfg, scone_fspf ? scone_fspf : "", scone_key, getenv("SCONE_FSPF_TAG"), &keys,
                                &err) != 0)
            die("%s", err.msg);
        have_keys = from_env = 1;
    } else if (access(keys_path, F_OK) == 0 || cfg.volume_count > 0 || (keys_env && *keys_env)) {
        if (keys_load(keys_path, &keys, &err) != 0) die("%s", err.msg);
        have_keys = 1;
    }
    /* Key bytes never reach the service's environment. */
    unsetenv("SCONE_FSPF_KEY");
    unsetenv("SCONE_FSPF_TAG");
    unsetenv("SCONE_FSPF");

    if (have_keys) check_measurement(&cfg, keys.mrenclave, keys.executable_sha256, "the keys file");
    else check_measurement(&cfg, cfg.mrenclave, cfg.executable_sha256, "the image's runtime config");
    check_scripts(&cfg);
    if (have_keys) check_volumes(&cfg, &keys, keys_path, !from_env);

    if (from_env) {
        /* Hand the debug-mode keys to the shield through an inherited memfd, never the environment. */
        int mfd = memfd_create("sconify-keys", 0);
        if (mfd < 0) die("%s", "cannot create a memfd for the keys");
        FILE *out = fdopen(dup(mfd), "w");
        char key_hex[65], tag_hex[33];
        hex_encode(keys.keys[0].key, 32, key_hex);
        hex_encode(keys.keys[0].tag, 16, tag_hex);
        fprintf(out, "{\"schema\": \"%s\", \"mrenclave\": \"%s\", \"volumes\": [{\"path\": \"%s\", \"fspf_key\": "
                     "\"%s\", \"fspf_tag\": \"%s\"}]}\n", KEYS_SCHEMA, keys.mrenclave, keys.keys[0].path, key_hex,
                tag_hex);
        fclose(out);
        memset(key_hex, 0, sizeof key_hex);
        char fdpath[64];
        snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", mfd);
        setenv("SCONIFY_KEYS", fdpath, 1);
    } else if (have_keys) {
        setenv("SCONIFY_KEYS", keys_path, 1);
    }
    if (have_keys) keys_free(&keys);
    setenv("SCONIFY_RUNTIME_CONFIG", config_path, 1);
    set_preload(shield);

    char **command = argv + first;
    if (getpid() != 1) {
        execvp(command[0], command);
        fprintf(stderr, "sconify-run: cannot run %s: %s\n", command[0], strerror(errno));
        return errno == ENOENT ? EXIT_NOT_RUN : 126;
    }

    /* PID 1: run the service as a child, forward signals, reap every zombie. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    child_pid = fork();
    if (child_pid < 0) die("%s", "cannot fork");
    if (child_pid == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        execvp(command[0], command);
        fprintf(stderr, "sconify-run: cannot run %s: %s\n", command[0], strerror(errno));
        _exit(errno == ENOENT ? EXIT_NOT_RUN : 126);
    }
    static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};
    struct sigaction sa = {0};
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaction(forwarded[i], &sa, NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0 && errno == EINTR) continue;
        if (pid < 0) return 1;
        if (pid == child_pid) return exit_status(status);
    }
}
