/* sconify-run: the ENTRYPOINT of a converted image (simulation mode).
 *
 *   sconify-run [--] COMMAND [ARGS...]
 *
 * Before the service starts it enforces the policy the runtime config records (a variable that
 * chooses code, changed by the host, is refused; a command other than the recorded one runs
 * without keys) and plays the attestation SCONE's CAS performs: the keys file must bind this
 * runtime config; it recomputes the MRENCLAVE of the measured executable (parameters from the
 * image's runtime config, checked by the result, never trusted on their own), compares it with
 * the one in the keys file, and checks every volume's fspf against the key and tag recorded
 * there (a restored older copy is a rollback; a volume with no mount at or above its path is the
 * container's own copy, checked against the image's tag or the container's own state file). Then
 * it runs COMMAND with the shield preloaded (libsconify-shield.so, which serves the embedfs and
 * the volumes inside the measured process) and the keys granted to it in a sealed memfd (with
 * the key it makes for this start's ephemeral regions, whose fspf it writes empty),
 * forwards signals to it, reaps zombies when it is PID 1, and exits with its status.
 *
 * With a deployment's policy.yaml in /run/secrets/sconify (or $SCONIFY_POLICY), the policy and
 * its secrets.json stand where the keys file stood (run_with_policy; docs/deploy.md): the
 * measurements it accepts, its command, pwd and environment (secrets substituted, in the
 * service's execve only), its injection files (in the grant) and its volume keys (a volume with
 * no fspf is initialised; its tag in the state store the policy names).
 *
 *   sconify-run --measure EXE HEAP STACK THREADS SSA    print the MRENCLAVE of EXE
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "config.h"
#include "deployment.h"
#include "embedfs.h"
#include "fspf.h"
#include "measure.h"
#include "plaincache.h"
#include "policy.h"
#include "statestore.h"
#include "util.h"

extern char **environ;

#define EXIT_REFUSED 2    /* attestation or keys refused: the service never starts */
#define EXIT_NOT_RUN 127  /* the command could not be executed */

static pid_t child_pid;
static int grant_fd = -1;  /* the grant's memfd (grant_keys): the service's, closed in PID 1 once it is forked */

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

/* The measurement of the executable: its MRENCLAVE (with the image's parameters) and the
 * SHA-256 of the whole file, both hex. */
static void measure_executable(const struct rt_config *cfg, char mr_hex[65], char sha_hex[65])
{
    int fd = open(cfg->executable, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        char msg[PATH_MAX + 128];
        snprintf(msg, sizeof msg, "%s: %s", cfg->executable, strerror(errno));
        die("cannot open the measured executable %s; the image is damaged, re-convert it", msg);
    }
    unsigned char mr[32], digest[32];
    struct rt_error err;
    if (sgx_measure_fd(fd, &cfg->params, mr, &err) != 0) die("cannot measure the executable: %s", err.msg);
    hex_encode(mr, 32, mr_hex);
    if (file_sha256(fd, digest) != 0) die("cannot read the measured executable: %s", strerror(errno));
    hex_encode(digest, 32, sha_hex);
    close(fd);
}

/* Attestation, simulated: the measured executable must have the MRENCLAVE the keys were issued
 * for (or, in an image without volumes run without keys, the one the conversion recorded). */
static void check_measurement(const struct rt_config *cfg, const char *expected, const char *expected_file,
                              const char *source)
{
    char hex[65], file_hex[65];
    measure_executable(cfg, hex, file_hex);
    if (strcmp(hex, expected) != 0) {
        fprintf(stderr,
                "sconify-run: MRENCLAVE mismatch: %s measures %s but %s expects %s; the executable or its "
                "embedded code was changed, or the keys belong to another image; refusing to start\n",
                cfg->executable, hex, source, expected);
        exit(EXIT_REFUSED);
    }
    /* The whole file too: bytes no segment loads (symbols, section headers) are not in MRENCLAVE. */
    if (*expected_file && strcmp(file_hex, expected_file) != 0) {
        fprintf(stderr, "sconify-run: executable changed: %s has SHA-256 %s but %s expects %s; refusing to start\n",
                cfg->executable, file_hex, source, expected_file);
        exit(EXIT_REFUSED);
    }
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

/* A mount point from /proc/self/mountinfo, its octal escapes (\040 for a space...) decoded. */
static void unescape_mount_point(const char *in, char *out, size_t len)
{
    size_t n = 0;
    while (*in && n + 1 < len) {
        if (in[0] == '\\' && in[1] >= '0' && in[1] <= '3' && in[2] >= '0' && in[2] <= '7' && in[3] >= '0' &&
            in[3] <= '7') {
            out[n++] = (char)((in[1] - '0') * 64 + (in[2] - '0') * 8 + (in[3] - '0'));
            in += 4;
        } else {
            out[n++] = *in++;
        }
    }
    out[n] = '\0';
}

/* Is the volume's directory the container's own copy? The mount that covers it is the one with
 * the longest mount point that is the directory or a parent of it (the last such line wins: a
 * later mount at the same point hides the earlier). If that is the root mount "/", no volume is
 * mounted at or above the directory: it is the image's copy in the container's writable layer.
 * A mount there (`-v data:/app/data`) or at a parent (`-v dir:/app`) makes it external. 0 too
 * when mountinfo cannot be read (freshness then stays in the keys file, as for a volume). */
static int container_copy(const char *volume_path)
{
    char real[PATH_MAX], point[PATH_MAX], best[PATH_MAX] = "";
    if (!realpath(volume_path, real)) snprintf(real, sizeof real, "%s", volume_path);
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0;
    size_t best_len = 0;
    int found = 0;
    while (getline(&line, &cap, f) > 0) {
        /* ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS ... - TYPE SOURCE SUPER-OPTIONS */
        char *field = line, *save = NULL, *mp = NULL;
        for (int i = 0; i < 5 && (field = strtok_r(i ? NULL : line, " ", &save)) != NULL; i++) mp = field;
        if (!field || !mp) continue;
        unescape_mount_point(mp, point, sizeof point);
        size_t len = strlen(point);
        int covers = strcmp(point, "/") == 0 ||
                     (strncmp(real, point, len) == 0 && (real[len] == '\0' || real[len] == '/'));
        if (covers && len >= best_len) {
            best_len = len;
            snprintf(best, sizeof best, "%s", point);
            found = 1;
        }
    }
    free(line);
    fclose(f);
    return found && strcmp(best, "/") == 0;
}

/* The fspf of a volume, read whole (its tag is the last 16 bytes); one line and exit if it
 * cannot be read. */
static unsigned char *read_fspf(const struct rt_volume *vol, size_t *size)
{
    int fd = open(vol->fspf_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        char line[1024];
        snprintf(line, sizeof line, "volume %s: cannot open its fspf %s (%s); mount the volume written for "
                                    "this image (an empty directory is not one)",
                 vol->path, vol->fspf_path, strerror(errno));
        die("%s", line);
    }
    unsigned char *data = malloc((size_t)st.st_size + 1);
    if (!data || pread_full(fd, data, (size_t)st.st_size, 0) != 0) die("%s", "cannot read a volume's fspf");
    close(fd);
    *size = (size_t)st.st_size;
    return data;
}

/* A commit killed between its renames (docs/runtime.md, "The commit"): its record names the next
 * tag, the fspf on disk still carries the previous one, and the stored file may already be the
 * new one (renamed first), which the old fspf cannot read. The commit's new fspf is still there
 * as its temp file (written before the record named it): its stored temp files that were not
 * renamed yet are put in place, the files it removed are removed, and its fspf replaces the old
 * one, so the check below finds the next tag and promotes it. *data (size) is read again. */
static void settle_commit(const struct rt_volume *vol, const unsigned char key[32], const unsigned char next[16],
                          unsigned char **data, size_t *size)
{
    const unsigned char *tag = *size >= 16 ? *data + *size - 16 : NULL;
    if (!tag || memcmp(tag, next, 16) == 0) return;
    char prefix[PATH_MAX], tmp[PATH_MAX * 2] = "";
    snprintf(prefix, sizeof prefix, "%s" HIDDEN_TMP, base_name(vol->fspf_path));
    DIR *dir = opendir(vol->path);
    struct dirent *e;
    unsigned char *new_data = NULL;
    size_t new_size = 0;
    long pid = -1;
    while (dir && !new_data && (e = readdir(dir)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        snprintf(tmp, sizeof tmp, "%s/%s", vol->path, e->d_name);
        struct rt_volume candidate = *vol;
        candidate.fspf_path = tmp;
        int fd = open(tmp, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < 16) {
            if (fd >= 0) close(fd);
            continue;
        }
        close(fd);
        size_t n;
        unsigned char *candidate_data = read_fspf(&candidate, &n);
        if (memcmp(candidate_data + n - 16, next, 16) == 0) {
            new_data = candidate_data;
            new_size = n;
            pid = strtol(e->d_name + strlen(prefix), NULL, 10);
        } else {
            free(candidate_data);
        }
    }
    if (dir) closedir(dir);
    struct fspf was, now;
    struct rt_error err;
    if (!new_data || pid <= 0 || fspf_load(&now, new_data, new_size, key, next, &err) != 0) {
        free(new_data);
        return;  /* the commit never got to its renames: the old fspf is the volume */
    }
    free(new_data);
    int have_was = fspf_load(&was, *data, *size, key, tag, &err) == 0;
    for (uint32_t i = 0; i < now.file_count; i++) {  /* its new stored file, if not renamed yet */
        const struct fspf_file *f = &now.files[i], *old = have_was ? fspf_find(&was, f->path) : NULL;
        if (old && memcmp(old->file_id, f->file_id, 16) == 0) continue;
        char stored_tmp[PATH_MAX * 2];
        commit_tmp_name(f->path, pid, stored_tmp, sizeof stored_tmp);
        struct stat st;
        if (lstat(stored_tmp, &st) == 0) rename(stored_tmp, f->path);
    }
    for (uint32_t i = 0; have_was && i < was.file_count; i++)  /* the files it removed */
        if (!fspf_find(&now, was.files[i].path)) unlink(was.files[i].path);
    if (have_was) fspf_free(&was);
    fspf_free(&now);
    if (rename(tmp, vol->fspf_path) != 0) return;
    fsync_dir_of(vol->fspf_path);
    fprintf(stderr, "sconify-run: volume %s: completed a commit that was stopped between its renames\n", vol->path);
    free(*data);
    *data = read_fspf(vol, size);
}

/* The container's own copy of a volume: its freshness lives with the container (the state file
 * in the volume's directory), so a run that writes it and is thrown away moves nothing in the
 * keys file. Its fspf must carry the tag of the image's copy (the keys file's fspf_tag_image, or
 * its fspf_tag), or the tag this container's state records (a container started again: `docker
 * restart`), or the next one of a commit that was under way (promoted). The key's tag is set to
 * the accepted one for the grant. */
static void check_container_copy(const struct rt_volume *vol, struct rt_key *key, unsigned char **fspf_data,
                                 size_t *fspf_size)
{
    unsigned char *data = *fspf_data;
    size_t size = *fspf_size;
    struct rt_state state;
    int have_state = state_load(vol->path, key->key, &state);
    if (have_state && state.has_next) settle_commit(vol, key->key, state.next_tag, fspf_data, fspf_size);
    data = *fspf_data;
    size = *fspf_size;
    const unsigned char *tag = size >= 16 ? data + size - 16 : NULL;
    const unsigned char *accepted = fresh_tag(key, 1, have_state ? &state : NULL, tag);
    char line[1024];
    struct fspf fs;
    struct rt_error err;
    if (!accepted) {
        char got[33] = "none";
        if (tag) hex_encode(tag, 16, got);
        snprintf(line, sizeof line,
                 "volume %s (the container's own copy, no volume mounted there): its fspf tag is %s, neither the "
                 "image's nor the one this container recorded: it was replaced by an older or another copy; "
                 "remove the container and run the image again", vol->path, got);
        die("%s", line);
    }
    if (fspf_load(&fs, data, size, key->key, accepted, &err) != 0) {
        snprintf(line, sizeof line, "volume %s: %s", vol->path, err.msg);
        die("%s", line);
    }
    fspf_free(&fs);
    if (have_state && state.has_next && accepted == state.next_tag && state_record(vol->path, key->key, tag, NULL, 1, &err) != 0)
        die("%s", err.msg);
    memcpy(key->tag, tag, 16);
    key->has_next = 0;
    key->container_copy = 1;
    fprintf(stderr, "sconify-run: volume %s is the container's own copy (no volume mounted there): its writes last "
                    "as long as this container; mount a volume there to keep them\n", vol->path);
}

/* A volume's lock (<volume>/.sconify.lock, the one the shield's commits hold: shield/commit.c),
 * taken exclusively: the fspf and its record are read between two commits. The fd to close, or
 * -1 (a read-only volume without one: nothing commits to it). */
static int lock_volume(const struct rt_volume *vol)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s%s" VOLUME_LOCK_NAME, vol->path, strcmp(vol->path, "/") == 0 ? "" : "/");
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fd = open(path, O_RDONLY | O_CLOEXEC);
    while (fd >= 0 && flock(fd, LOCK_EX) != 0 && errno == EINTR) {}
    return fd;
}

/* A mounted volume whose tag a state store keeps (the keys file's "state"; the keys file is only
 * read). The record is read; absent, it is made from the keys file's tag (the volume's first
 * start with this store). The fspf must carry the record's tag or its next one; a record with a
 * next tag is settled (the next one if the fspf carries it, else the tag: that commit never
 * renamed), so the service's commits swap from one tag, which the grant carries. */
static void check_volume_in_store(const struct rt_volume *vol, struct rt_key *key, struct store *store)
{
    struct store_record rec, seed = {0};
    struct rt_error err = {{0}};
    char line[1400], where[600];
    store_describe(store, where, sizeof where);
    const char *name = key_record_name(key);
    int found = store_read(store, name, &rec, &err);
    if (found == 0) {
        memcpy(seed.tag, key->tag, 16);
        seed.has_next = key->has_next;
        memcpy(seed.next_tag, key->next_tag, 16);
        int rc = store_cas(store, name, NULL, &seed, &err);
        if (rc == STORE_SWAPPED) rec = seed;
        found = rc == STORE_SWAPPED ? 1 : rc == STORE_MOVED ? store_read(store, name, &rec, &err) : -1;
    }
    if (found != 1) {
        snprintf(line, sizeof line, "volume %s: cannot read its freshness record: %s", vol->path,
                 found == 0 ? "it vanished while being made" : err.msg);
        die("%s", line);
    }
    size_t size;
    unsigned char *data = read_fspf(vol, &size);
    if (rec.has_next) settle_commit(vol, key->key, rec.next_tag, &data, &size);
    const unsigned char *tag = size >= 16 ? data + size - 16 : NULL;
    const unsigned char *accepted = store_fresh_tag(&rec, tag);
    struct fspf fs;
    if (!accepted) {
        char got[33] = "none", want[33];
        if (tag) hex_encode(tag, 16, got);
        hex_encode(rec.tag, 16, want);
        snprintf(line, sizeof line,
                 "volume %s: its fspf tag is %s but %s records %s: an older copy of the volume was restored "
                 "(rollback), another container moved it on, or it belongs to another deployment; restore the "
                 "latest copy of the volume", vol->path, got, where, want);
        die("%s", line);
    }
    if (fspf_load(&fs, data, size, key->key, accepted, &err) != 0) {
        snprintf(line, sizeof line, "volume %s: %s", vol->path, err.msg);
        die("%s", line);
    }
    fspf_free(&fs);
    free(data);
    if (rec.has_next) {
        struct store_record settled = {0};
        memcpy(settled.tag, accepted, 16);
        if (store_cas(store, name, &rec, &settled, &err) != STORE_SWAPPED) {
            snprintf(line, sizeof line, "volume %s: cannot settle its freshness record: %s", vol->path, err.msg);
            die("%s", line);
        }
    }
    memcpy(key->tag, accepted, 16);
    key->has_next = 0;
}

/* Every volume must open with its key and carry the recorded tag (or the tag of a commit that
 * was under way when the last container stopped, which then becomes the recorded one). A volume
 * that is the container's own copy is checked against the image's tag or the container's state
 * instead (check_container_copy), unless SCONIFY_FRESHNESS=keys. */
static void check_volumes(const struct rt_config *cfg, struct rt_keys *keys, const char *keys_path, int persist,
                          int detect, struct store *store)
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
        key->container_copy = 0;  /* the launcher decides, never the keys file */
        if (store && !(detect && container_copy(vol->path))) {
            int lock = lock_volume(vol);
            check_volume_in_store(vol, key, store);
            if (lock >= 0) close(lock);
            continue;
        }
        size_t size;
        unsigned char *data = read_fspf(vol, &size);
        if (persist && detect && container_copy(vol->path)) {
            check_container_copy(vol, key, &data, &size);
            free(data);
            continue;
        }
        if (key->has_next) settle_commit(vol, key->key, key->next_tag, &data, &size);
        const unsigned char *tag = size >= 16 ? data + size - 16 : NULL;
        const unsigned char *accepted = fresh_tag(key, 0, NULL, tag);
        int next = accepted && accepted == key->next_tag;
        struct fspf fs;
        struct rt_error err;
        if (fspf_load(&fs, data, size, key->key, accepted ? accepted : key->tag, &err) != 0) {
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
            if (keys_record_tag(keys_path, vol->path, key->next_tag, 0, 1, &e2) != 0) die("%s", e2.msg);
        }
    }
}

/* The keys file's state store (its "state": docs/runtime.md, "Freshness state: a directory or
 * etcd"). A state directory that is the container's own copy while a volume is mounted is
 * refused: the state would go with the container, and the volume's next start would look like a
 * rollback. */
static void open_state_store(const struct rt_config *cfg, const struct rt_keys *keys, struct store *store, int detect,
                             const char *whose)
{
    struct rt_error err;
    char refusal[sizeof err.msg + 64];
    if (store_open_keys_state(keys->state, store, &err) != 0) {
        snprintf(refusal, sizeof refusal, "%s state store: %s", whose, err.msg);
        die("%s", refusal);
    }
    if (store->kind != STORE_DIR || !detect || !container_copy(store->dir)) return;
    for (size_t i = 0; i < cfg->volume_count; i++)
        if (!container_copy(cfg->volumes[i].path)) {
            char line[PATH_MAX * 2 + 256];
            snprintf(line, sizeof line, "the state directory %s is the container's own copy (no volume mounted there) "
                                        "while volume %s is mounted: its tags would be lost with the container and "
                                        "the volume's next start would look like a rollback; mount a volume there",
                     store->dir, cfg->volumes[i].path);
            die("%s", line);
        }
}

static void forward(int sig)
{
    if (child_pid > 0) kill(child_pid, sig);
}

/* SIGCHLD wakes the poll loop (serve_and_reap) through a pipe. */
static int child_pipe[2] = {-1, -1};

static void child_exited(int sig)
{
    (void)sig;
    int saved = errno;
    if (write(child_pipe[1], "c", 1) < 0) {}
    errno = saved;
}

static int exit_status(int status)
{
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

/* The shield in front of LD_PRELOAD, once (the image's Env already names it, so that any
 * start of the measured executable, a `docker exec` too, gets its embedded code served). */
static void set_preload(const char *lib)
{
    const char *old = getenv("LD_PRELOAD");
    char rest[4096];
    policy_preload_without(old ? old : "", lib, rest, sizeof rest);
    unsetenv("LD_PRELOAD");  /* every entry of it, then the one value */
    if (*rest) {
        size_t len = strlen(rest) + strlen(lib) + 2;
        char *value = malloc(len);
        snprintf(value, len, "%s:%s", lib, rest);
        setenv("LD_PRELOAD", value, 1);
        free(value);
    } else {
        setenv("LD_PRELOAD", lib, 1);
    }
}

/* The program COMMAND starts (name looked up in PATH as execvp does, into program): 1 if it is
 * the measured executable or one of the scripts check_scripts compares with their measured
 * copies, the same file, else 0. A derived layer can put another program at `python3` while
 * the measured python3.11 stays intact; that program must not inherit the grant. */
static int executable_file(const char *candidate)
{
    struct stat st;
    return stat(candidate, &st) == 0 && S_ISREG(st.st_mode) && access(candidate, X_OK) == 0;
}

static int measured_program(const struct rt_config *cfg, const char *name, char *program, size_t len)
{
    struct stat got, want;
    if (!policy_lookup(name, getenv("PATH"), executable_file, program, len) || stat(program, &got) != 0) return 0;
    if (stat(cfg->executable, &want) == 0 && got.st_dev == want.st_dev && got.st_ino == want.st_ino) return 1;
    for (size_t i = 0; i < cfg->script_count; i++)
        if (stat(cfg->scripts[i], &want) == 0 && got.st_dev == want.st_dev && got.st_ino == want.st_ino) return 1;
    return 0;
}

/* The runtime config must be the one the keys were issued for: its policy says which command
 * the keys are granted to, its volumes which data they open. */
static void check_config_binding(const struct rt_config *cfg, const struct rt_keys *keys, const char *config_path)
{
    char line[1024];
    if (!*keys->runtime_config_sha256) {
        snprintf(line, sizeof line, "the keys file does not bind the runtime config %s (it was written by an older "
                                    "sconify-image); re-convert the image", config_path);
        die("%s", line);
    }
    if (strcmp(keys->runtime_config_sha256, cfg->source_sha256) != 0) {
        snprintf(line, sizeof line, "runtime config %s has SHA-256 %s but the keys file expects %s: it was changed "
                                    "(a derived image?) or the keys belong to another conversion; refusing to start",
                 config_path, cfg->source_sha256, keys->runtime_config_sha256);
        die("%s", line);
    }
}

/* As PID 1 (a container start: no other process of the container runs yet), the fspfs that
 * earlier starts left in an ephemeral region: their keys are gone with those starts. */
static void remove_earlier_starts(const char *region)
{
    DIR *dir = opendir(region);
    if (!dir) return;
    for (struct dirent *e; (e = readdir(dir)) != NULL;)
        if (strncmp(e->d_name, EPHEMERAL_FSPF_PREFIX, strlen(EPHEMERAL_FSPF_PREFIX)) == 0) unlinkat(dirfd(dir), e->d_name, 0);
    closedir(dir);
}

/* The ephemeral regions (/tmp) of this start, shared by the measured processes of the service:
 * each one gets an empty fspf, <region>/.sconify.fspf.<start id>, encrypted with a key made
 * here for this start. The key is in the launcher's memory and in the grant only (never on
 * disk, never in the environment): nothing an earlier start left in the region is recorded in
 * the new fspf, so the service does not see it, and nobody can read it. A region that cannot
 * hold the fspf (missing, read-only) is left out: each process keeps a region of its own there.
 * The grant's "ephemeral" array (a new json_t *): path, fspf_path, key (hex). */
static json_t *start_ephemeral_regions(const struct rt_config *cfg)
{
    json_t *regions = json_array();
    unsigned char id[8];
    char id_hex[17];
    if (RAND_bytes(id, sizeof id) != 1) die("%s", "cannot draw random bytes for the ephemeral regions' key");
    hex_encode(id, sizeof id, id_hex);
    for (size_t i = 0; i < cfg->ephemeral_count; i++) {
        const char *region = cfg->ephemeral[i];
        int volume = 0;
        for (size_t j = 0; j < cfg->volume_count; j++) volume |= strcmp(cfg->volumes[j].path, region) == 0;
        if (volume) continue;  /* a volume's fspf serves it */
        if (getpid() == 1) remove_earlier_starts(region);
        char path[PATH_MAX], key_hex[65];
        unsigned char key[32], tag[16], *sealed = NULL;
        size_t len = 0;
        struct fspf fs;
        struct rt_error err;
        if (snprintf(path, sizeof path, "%s%s" EPHEMERAL_FSPF_PREFIX "%s", region, strcmp(region, "/") == 0 ? "" : "/",
                     id_hex) >= (int)sizeof path)
            continue;
        if (fspf_one_region(&fs, region, FSPF_ENCRYPTED, &err) != 0) continue;  /* not a path the shield serves */
        if (RAND_bytes(key, sizeof key) != 1) die("%s", "cannot draw random bytes for the ephemeral regions' key");
        int rc = fspf_save_encrypted(&fs, key, &sealed, &len, tag, &err);
        fspf_free(&fs);
        if (rc != 0) die("%s", err.msg);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        int written = fd >= 0 && write_full(fd, sealed, len) == 0;
        if (fd >= 0) close(fd);
        free(sealed);
        if (written) {
            hex_encode(key, sizeof key, key_hex);
            json_t *entry = json_object();
            json_object_set_new(entry, "path", json_string(region));
            json_object_set_new(entry, "fspf_path", json_string(path));
            json_object_set_new(entry, "key", json_string(key_hex));
            json_array_append_new(regions, entry);
        } else if (fd >= 0) {
            unlink(path);
        }
        OPENSSL_cleanse(key, sizeof key);
        OPENSSL_cleanse(key_hex, sizeof key_hex);
    }
    return regions;
}

/* Keys are granted, not found: the launcher hands the checked keys, the checked runtime config
 * and this start's ephemeral regions (start_ephemeral_regions) to the shield in a sealed memfd
 * the command inherits (SCONIFY_GRANT=<fd>). A process
 * the launcher did not start this way (docker exec, a preload by hand, a command the policy
 * refused) has no grant and gets no keys, whatever keys file it can read. */
static void grant_keys(const struct rt_config *cfg, const struct rt_keys *keys, const char *keys_path, int persist,
                       json_t *deployment, json_t *ephemeral, const struct plaincache *cache)
{
    json_t *doc = json_object();
    if (deployment) json_object_update(doc, deployment);  /* policy mode: "files", "state" */
    json_object_set_new(doc, "schema", json_string("sconify.grant/v1"));
    json_object_set_new(doc, "keys_path", json_string(keys_path));
    json_object_set_new(doc, "persist", json_boolean(persist));
    json_object_set_new(doc, "runtime_config", json_stringn(cfg->source, cfg->source_len));
    json_object_set_new(doc, "keys", keys_to_json(keys));
    json_object_set_new(doc, "ephemeral", ephemeral);
    if (cache && cache->listener >= 0) {  /* the shared plaintext cache: where, and the token it asks for */
        char token[2 * CACHE_TOKEN_LEN + 1];
        hex_encode(cache->token, CACHE_TOKEN_LEN, token);
        json_t *c = json_object();
        json_object_set_new(c, "socket", json_string(cache->name));
        json_object_set_new(c, "token", json_string(token));
        json_object_set_new(doc, "cache", c);
        OPENSSL_cleanse(token, sizeof token);
    }
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    int fd = memfd_create("sconify-grant", MFD_ALLOW_SEALING);
    if (!text || fd < 0) die("%s", "cannot create the memfd that grants the keys to the service");
    size_t len = strlen(text);
    if (len > GRANT_MAX_SIZE) {
        char line[256];
        snprintf(line, sizeof line, "the grant (keys, runtime config, injection files) is %zu bytes, more than the "
                                    "%d the shield reads; make the policy's injection files smaller", len, GRANT_MAX_SIZE);
        die("%s", line);
    }
    int ok = write_full(fd, text, len) == 0 &&
             fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0;
    OPENSSL_cleanse(text, len);
    free(text);
    if (!ok) die("cannot write the memfd that grants the keys to the service: %s", strerror(errno));
    int high = fcntl(fd, F_DUPFD, GRANT_FD);  /* inherited: no close-on-exec */
    if (high >= 0) {
        close(fd);
        fd = high;
    }
    char number[16];
    snprintf(number, sizeof number, "%d", fd);
    setenv("SCONIFY_GRANT", number, 1);
    grant_fd = fd;
}

/* One round of the cache's poll loop: waits up to a second for wake_fd or a request, answers
 * what came, and once a second drops the memfds nobody holds any more. 1 if wake_fd is
 * readable. Never waits for a client. */
static int serve_once(struct plaincache *cache, int wake_fd)
{
    static struct pollfd fds[2 + CACHE_MAX_CLIENTS];
    static time_t swept;
    fds[0] = (struct pollfd){.fd = wake_fd, .events = POLLIN};
    size_t n = plaincache_pollfds(cache, fds + 1);
    int ready = poll(fds, n + 1, 1000);
    if (ready > 0) plaincache_serve(cache, fds + 1, n);  /* (< 0: EINTR, a forwarded signal) */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec != swept) {
        plaincache_sweep(cache);
        swept = now.tv_sec;
    }
    return ready > 0 && fds[0].revents != 0;
}

/* PID 1 with the shared plaintext cache: one poll loop answers the service's processes, reaps
 * every zombie (SIGCHLD wakes it through child_pipe) and returns the service's exit status.
 * Signals are forwarded by their handlers as before. Called with every signal blocked (old: the
 * mask to restore). */
static int serve_and_reap(struct plaincache *cache, const sigset_t *old)
{
    struct sigaction sa = {0};
    sa.sa_handler = child_exited;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    if (pipe2(child_pipe, O_CLOEXEC | O_NONBLOCK) != 0 || sigaction(SIGCHLD, &sa, NULL) != 0)
        die("%s", "cannot watch the service (pipe, SIGCHLD)");
    sigprocmask(SIG_SETMASK, old, NULL);
    for (;;) {
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
            if (pid == child_pid) return exit_status(status);
        if (pid < 0 && errno == ECHILD) return 1;
        if (serve_once(cache, child_pipe[0])) {
            char drain[64];
            while (read(child_pipe[0], drain, sizeof drain) > 0) {}
        }
    }
}

/* Not PID 1, the launcher execs the service, which keeps its pid: the cache is served by a
 * keeper, a grandchild of the launcher (orphaned at once, so never the service's child: its
 * wait() does not see it), in a session of its own (a terminal's ^C is for the service), with
 * its stdio on /dev/null (a caller reading the service's output to its end does not wait for
 * it). It serves until the service exits (a pidfd of the launcher's pid). 0, or -1: no keeper. */
static int start_keeper(struct plaincache *cache)
{
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0) return -1;
    pid_t first = fork();
    if (first == 0) {
        if (fork() != 0) _exit(0);
        setsid();
        if (cache->listener <= 2) cache->listener = fcntl(cache->listener, F_DUPFD_CLOEXEC, 3);  /* stdio: /dev/null */
        if (pidfd <= 2) pidfd = fcntl(pidfd, F_DUPFD_CLOEXEC, 3);
        /* only the socket and the pidfd: not the grant, not the service's descriptors */
        int low = cache->listener < pidfd ? cache->listener : pidfd, high = cache->listener ^ pidfd ^ low;
        close_range(3, (unsigned)low - 1, 0);
        close_range((unsigned)low + 1, (unsigned)high - 1, 0);
        close_range((unsigned)high + 1, ~0U, 0);
        int null = open("/dev/null", O_RDWR);
        for (int fd = 0; null >= 0 && fd <= 2; fd++) dup2(null, fd);
        if (null > 2) close(null);
        while (!serve_once(cache, pidfd)) {}
        _exit(0);
    }
    close(pidfd);
    if (first < 0) return -1;
    while (waitpid(first, NULL, 0) < 0 && errno == EINTR) {}
    return 0;
}

/* The shared plaintext cache of cfg's volumes and ephemeral regions (plaincache.h), its socket
 * opened before the grant names it; the owner is the launcher as PID 1, else a keeper
 * (start_keeper, once the keys are cleared). Without it every process of the service keeps a
 * private copy of each file it opens. */
static void open_cache(const struct rt_config *cfg, struct plaincache *cache)
{
    cache->listener = -1;
    size_t count = cfg->volume_count + cfg->ephemeral_count;
    if (!count) return;
    char **paths = calloc(count, sizeof *paths);
    for (size_t i = 0; paths && i < cfg->volume_count; i++) paths[i] = cfg->volumes[i].path;
    for (size_t i = 0; paths && i < cfg->ephemeral_count; i++) paths[cfg->volume_count + i] = cfg->ephemeral[i];
    if (!paths || plaincache_start(cache, cfg->executable, paths, count) != 0)
        fprintf(stderr, "sconify-run: cannot open the socket of the shared plaintext cache (%s); each process of "
                        "the service keeps its own copy of the volume files it opens\n", strerror(errno));
    free(paths);
}

static void own_cache(struct plaincache *cache)
{
    /* (forked after the keys are cleared: the keeper holds none; without it the requests fail
     * and the service's processes keep private copies) */
    if (cache->listener >= 0 && getpid() != 1 && start_keeper(cache) != 0)
        fprintf(stderr, "sconify-run: cannot start the keeper of the shared plaintext cache (%s); each process of "
                        "the service keeps its own copy of the volume files it opens\n", strerror(errno));
}

/* Run the service: exec it (not PID 1), or as PID 1 run it as a child, forward signals, reap
 * every zombie and exit with its status (serving cache, if it has a socket). envp is the service's environment (policy mode: the
 * only place the substituted one exists, never the launcher's own environ). */
static int run_service(const char *run, char **argv, char **envp, struct plaincache *cache)
{
    if (getpid() != 1) {
        execvpe(run, argv, envp);
        fprintf(stderr, "sconify-run: cannot run %s: %s\n", argv[0], strerror(errno));
        return errno == ENOENT ? EXIT_NOT_RUN : 126;
    }
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    child_pid = fork();
    if (child_pid < 0) die("%s", "cannot fork");
    if (child_pid == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        execvpe(run, argv, envp);
        fprintf(stderr, "sconify-run: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(errno == ENOENT ? EXIT_NOT_RUN : 126);
    }
    if (envp != environ)  /* the substituted environment: the child has its copy, the launcher none */
        for (char **e = envp; *e; e++) OPENSSL_cleanse(*e, strlen(*e));
    if (grant_fd >= 0) {  /* nor the grant: PID 1 lives as long as the container, and `docker exec` could
                           * read the keys and the injection files at /proc/1/fd/N */
        close(grant_fd);
        grant_fd = -1;
        unsetenv("SCONIFY_GRANT");
    }
    static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};
    struct sigaction sa = {0};
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaction(forwarded[i], &sa, NULL);
    if (cache && cache->listener >= 0) return serve_and_reap(cache, &old);
    sigprocmask(SIG_SETMASK, &old, NULL);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0 && errno == EINTR) continue;
        if (pid < 0) return 1;
        if (pid == child_pid) return exit_status(status);
    }
}

/* SCONIFY_FRESHNESS=keys: every volume's freshness in the keys file (or the state store), as for
 * a mounted one (the stricter choice, for a run outside a container); unset or "auto": detected
 * (1). It is the launcher's: unset for the service. */
static int freshness_detect(void)
{
    const char *freshness = getenv("SCONIFY_FRESHNESS");
    int detect = !freshness || !*freshness || strcmp(freshness, "auto") == 0;
    if (!detect && strcmp(freshness, "keys") != 0)
        die("%s", "SCONIFY_FRESHNESS is neither auto (the default) nor keys; refusing to start");
    unsetenv("SCONIFY_FRESHNESS");
    return detect;
}

/* ------------------------------------------------------------------ a deployment's policy */

/* Converted with --generic: its volumes are declared, their keys are each deployment's. */
static int generic_image(const struct rt_config *cfg)
{
    for (size_t i = 0; i < cfg->volume_count; i++)
        if (cfg->volumes[i].generic) return 1;
    return 0;
}

/* The directory of a deployment's policy: $SCONIFY_POLICY (which must hold one), else
 * /run/secrets/sconify when policy.yaml is there. 1 and dir filled, or 0 (today's keys file). */
static int find_policy(char *dir, size_t len)
{
    const char *given = getenv("SCONIFY_POLICY");
    char file[PATH_MAX + 32];
    snprintf(dir, len, "%s", given && *given ? given : DEFAULT_POLICY_DIR);
    unsetenv("SCONIFY_POLICY");
    snprintf(file, sizeof file, "%s/" POLICY_NAME, dir);
    if (access(file, F_OK) == 0) return 1;
    if (errno == EACCES) {  /* `sconify deploy init` makes the directory 0700: a non-root service cannot look */
        char line[PATH_MAX + 400];
        snprintf(line, sizeof line, "cannot look into %s (%s): the container's user (uid %ld) cannot tell whether "
                                    "it holds a deployment's policy.yaml or a keys.json; make the directory and its "
                                    "files readable by that user (chown them to it); refusing to start",
                 dir, strerror(EACCES), (long)getuid());
        die("%s", line);
    }
    if (given && *given) die("SCONIFY_POLICY names %s, which holds no policy.yaml; refusing to start", dir);
    return 0;
}

/* The argv the granted service runs with in policy mode, or NULL when the host's command is not
 * the one the policy grants (it then runs as given, without keys; why says so). The host's argv
 * must be the image's recorded command, or with @@1 in the policy's command its prefix. What
 * runs: the host's argv when the policy's command is the image's (the entrypoint and console
 * scripts it starts through lead there, as the conversion checked), else the policy's command
 * (secrets substituted) followed by the host's extra arguments. */
static char **policy_command(struct rt_config *cfg, const struct deployment *d, int argc, char **argv, char *why,
                             size_t len)
{
    char **words = NULL;
    size_t count = 0;
    int host_args = cfg->allow_args;
    struct rt_error err;
    if (d->command && command_split(d->command, &words, &count, &host_args, &err) != 0) die("%s", err.msg);
    if (d->command && !count) die("%s", "the policy's command is empty; refusing to start");
    cfg->allow_args = host_args;  /* the policy's @@1, not the conversion's --allow-args */
    if (!cfg->command_count || policy_check_command(cfg, argc, argv, why, len) != 0) {
        if (!cfg->command_count) snprintf(why, len, "the conversion recorded no command");
        free_words(words);
        return NULL;
    }
    int same = !d->command || count == cfg->service_command_count;
    for (size_t i = 0; same && d->command && i < count; i++) same = strcmp(words[i], cfg->service_command[i]) == 0;
    size_t extra = (size_t)argc - cfg->command_count;
    char **run = calloc((same ? (size_t)argc : count + extra) + 1, sizeof *run);
    if (same) {
        for (int i = 0; i < argc; i++) run[i] = strdup(argv[i]);
    } else {
        for (size_t i = 0; i < count; i++)
            if (deployment_substitute(d, words[i], &run[i], &err) != 0) die("%s", err.msg);
        for (size_t i = 0; i < extra; i++) run[count + i] = strdup(argv[cfg->command_count + i]);
    }
    free_words(words);
    return run;
}

/* The key of a volume as the policy gives it: 64 hex digits, after substitution. */
static void policy_volume_key(const struct deployment *d, const struct dep_volume *dv, unsigned char key[32])
{
    char *hex = NULL;
    struct rt_error err;
    if (deployment_substitute(d, dv->fspf_key, &hex, &err) != 0) die("%s", err.msg);
    int bad = strlen(hex) != 64 || hex_decode(hex, key, 32) != 0;
    OPENSSL_cleanse(hex, strlen(hex));
    free(hex);
    if (bad) {
        char line[512];
        snprintf(line, sizeof line, "the policy's key of volume %s is not 64 hex digits (fspf_key: "
                                    "$$SCONE::NAME:hex$$ of a 32-byte binary secret); refusing to start", dv->name);
        die("%s", line);
    }
}

/* A new volume: an empty fspf (one kernel region, the volume's protection) sealed with the
 * deployment's key, written atomically; its tag into tag. */
static void initialise_volume(const struct rt_volume *vol, const unsigned char key[32], unsigned char tag[16])
{
    struct fspf_region region = {vol->path, FSPF_KERNEL, vol->protection, 32, 64 * 1024, vol->path};
    struct fspf fs = {1, &region, 0, NULL};
    unsigned char *sealed = NULL;
    size_t len = 0;
    struct rt_error err;
    char tmp[PATH_MAX + 64], line[PATH_MAX * 2];
    if (fspf_save_encrypted(&fs, key, &sealed, &len, tag, &err) != 0) die("%s", err.msg);
    mkdir(vol->path, 0755);  /* a declared volume the image has no directory for (else EEXIST) */
    snprintf(tmp, sizeof tmp, "%s.sconify-tmp-%ld", vol->fspf_path, (long)getpid());
    int e = replace_file(vol->fspf_path, tmp, sealed, len, 0, 0644, 1);
    free(sealed);
    if (e != 0) {
        snprintf(line, sizeof line, "volume %s is new but its fspf %s cannot be written (%s); mount the volume "
                                    "read-write", vol->path, vol->fspf_path, strerror(e));
        die("%s", line);
    }
    fsync_dir_of(vol->fspf_path);
}

/* A volume's fspf, read whole; it must open with the deployment's key at the tag it carries (its
 * last 16 bytes), else it belongs to another deployment: one line and exit. *empty: it lists no
 * file (a first start that stopped before its tag was recorded). */
static unsigned char *read_deployment_fspf(const struct rt_volume *vol, const unsigned char key[32], size_t *size,
                                           int *empty)
{
    unsigned char *data = read_fspf(vol, size);
    struct fspf fs;
    struct rt_error err = {{0}};
    if (*size < 16 || fspf_load(&fs, data, *size, key, data + *size - 16, &err) != 0) {
        char line[PATH_MAX + 256];
        snprintf(line, sizeof line, "volume %s: its fspf does not open with the deployment's key: it belongs to "
                                    "another deployment or key%s; refusing to start", vol->path,
                 vol->generic ? "" : " (the image's own copy, converted without --generic?)");
        die("%s", line);
    }
    *empty = fs.file_count == 0;
    fspf_free(&fs);
    return data;
}

/* A volume that is the container's own copy (no volume mounted there) in policy mode: its
 * freshness lives with the container (the state file in its directory), as the own copy's of a
 * keys file, never in the state store. The store outlives the container: a record made for a copy
 * that `docker run --rm` throws away would be one no later container's copy carries, and the
 * deployment would no longer start. The image's copy of a generic volume has no fspf: the
 * container's first start initialises it with the deployment's key; a restarted container finds
 * the tag its state records (or an empty fspf whose state was not recorded yet). */
static void policy_container_copy(const struct rt_volume *vol, struct rt_key *k)
{
    struct rt_error err = {{0}};
    int fd = open(vol->fspf_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        initialise_volume(vol, k->key, k->tag);
        if (state_record(vol->path, k->key, k->tag, NULL, 1, &err) != 0) die("%s", err.msg);
        k->container_copy = 1;
        fprintf(stderr, "sconify-run: volume %s is the container's own copy (no volume mounted there): its writes "
                        "last as long as this container; mount a volume there to keep them\n", vol->path);
        return;
    }
    if (fd >= 0) close(fd);
    size_t size;
    int empty;
    unsigned char *data = read_deployment_fspf(vol, k->key, &size, &empty);
    struct rt_state state;
    if (empty && !state_load(vol->path, k->key, &state)) memcpy(k->tag, data + size - 16, 16);
    check_container_copy(vol, k, &data, &size);  /* judged by the container's state; says where writes go */
    free(data);
}

/* Each volume of the image opened with the deployment's key (docs/deploy.md, step 5), its tag in
 * the state store the policy names (sconify.state, as a keys file's "state"; keys->state is set
 * to it, so the grant takes it to the shield's commits): a volume with no fspf and no record is
 * new (initialised, its record made); an fspf that does not open with the key belongs to another
 * deployment; an fspf with no record is refused (the state was lost), unless it is empty (its
 * first start stopped before the record was made); then check_volume_in_store as for a keys
 * file's store (rollback refused, a commit under way settled). The container's own copy of a
 * volume is kept apart from the store (policy_container_copy); with every volume one, no store
 * is opened. */
static void check_policy_volumes(const struct rt_config *cfg, const struct deployment *d, struct rt_keys *keys,
                                 int detect)
{
    struct store store;
    char where[600] = "", line[PATH_MAX * 2 + 600];
    int *own = calloc(cfg->volume_count + 1, sizeof *own), mounted = 0;
    if (!own) die("%s", "out of memory");
    for (size_t i = 0; i < cfg->volume_count; i++) {
        own[i] = detect && container_copy(cfg->volumes[i].path);
        mounted += !own[i];
    }
    if (mounted) {
        keys->state = strdup(d->state);
        open_state_store(cfg, keys, &store, detect, "the policy's (sconify.state)");
        store_describe(&store, where, sizeof where);
    }
    keys->count = cfg->volume_count;
    keys->keys = calloc(cfg->volume_count + 1, sizeof *keys->keys);
    for (size_t i = 0; i < cfg->volume_count; i++) {
        const struct rt_volume *vol = &cfg->volumes[i];
        const struct dep_volume *dv = NULL;
        struct rt_error err = {{0}};
        for (size_t j = 0; j < d->volume_count; j++)
            if (strcmp(d->volumes[j].path, vol->path) == 0) dv = &d->volumes[j];
        if (!dv) {
            snprintf(line, sizeof line, "the policy has no volume mounted at %s (volumes:, services[0].volumes), a "
                                        "volume of this image; refusing to start", vol->path);
            die("%s", line);
        }
        struct rt_key *k = &keys->keys[i];
        k->path = strdup(vol->path);
        k->name = strdup(dv->name);
        policy_volume_key(d, dv, k->key);
        int lock = lock_volume(vol);
        if (own[i]) {
            policy_container_copy(vol, k);
            if (lock >= 0) close(lock);
            continue;
        }
        struct store_record rec;
        int recorded = store_read(&store, dv->name, &rec, &err);
        if (recorded < 0) {
            snprintf(line, sizeof line, "volume %s: cannot read its freshness record: %s", vol->path, err.msg);
            die("%s", line);
        }
        int fd = open(vol->fspf_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
            if (recorded) {
                snprintf(line, sizeof line, "volume %s has no fspf but %s records one for it: this is not the "
                                            "deployment's volume (an empty directory is not it); mount the volume it "
                                            "wrote", vol->path, where);
                die("%s", line);
            }
            initialise_volume(vol, k->key, k->tag);
            struct store_record first = {0};
            memcpy(first.tag, k->tag, 16);
            if (store_cas(&store, dv->name, NULL, &first, &err) != STORE_SWAPPED) {
                snprintf(line, sizeof line, "volume %s is new but its record cannot be made in %s: %s", vol->path,
                         where, err.msg);
                die("%s", line);
            }
            fprintf(stderr, "sconify-run: volume %s is new: initialised with the deployment's key\n", vol->path);
            if (lock >= 0) close(lock);
            continue;
        }
        if (fd >= 0) close(fd);
        size_t size;
        int empty;
        unsigned char *data = read_deployment_fspf(vol, k->key, &size, &empty);
        const unsigned char *tag = data + size - 16;
        if (!recorded && !empty) {
            snprintf(line, sizeof line, "volume %s: %s records no tag for it: the state was lost or is not mounted "
                                        "(mount the one this deployment wrote); refusing to start", vol->path, where);
            die("%s", line);
        }
        if (!recorded) memcpy(k->tag, tag, 16);  /* an empty fspf: check_volume_in_store makes its record */
        free(data);
        check_volume_in_store(vol, k, &store);
        if (lock >= 0) close(lock);
    }
    if (mounted) store_close(&store);
    free(own);
}

/* What the grant carries besides the keys in policy mode: the injection files (path, content
 * with the secrets substituted). (The keys carry the state store: keys->state.) */
static json_t *policy_grant(const struct deployment *d)
{
    json_t *extra = json_object(), *files = json_array();
    struct rt_error err;
    for (size_t i = 0; i < d->file_count; i++) {
        char *content;
        if (deployment_substitute(d, d->files[i].content, &content, &err) != 0) die("%s", err.msg);
        json_t *f = json_object();
        json_object_set_new(f, "path", json_string(d->files[i].path));
        json_t *text = json_string(content);
        OPENSSL_cleanse(content, strlen(content));
        free(content);
        if (!text) die("injection file %s: its content is not UTF-8 text", d->files[i].path);
        json_object_set_new(f, "content", text);
        json_array_append_new(files, f);
    }
    json_object_set_new(extra, "files", files);
    return extra;
}

/* The service's environment: the launcher's (the host's, checked, with the runtime's own
 * variables) overlaid with the policy's, secrets substituted; a value "@@NAME" keeps the host's
 * (SCONE's form for a variable the host may set). A new array: never the launcher's environ. */
static char **policy_environment(const struct deployment *d)
{
    size_t n = 0;
    while (environ[n]) n++;
    char **envp = calloc(n + d->env_count + 1, sizeof *envp);
    size_t count = 0;
    struct rt_error err;
    for (size_t i = 0; i < n; i++) {
        size_t name_len = strcspn(environ[i], "=");
        int replaced = 0;
        for (size_t j = 0; j < d->env_count && !replaced; j++) {
            char host_ref[256];
            snprintf(host_ref, sizeof host_ref, "@@%s", d->env_names[j]);
            replaced = strlen(d->env_names[j]) == name_len && strncmp(environ[i], d->env_names[j], name_len) == 0 &&
                       strcmp(d->env_values[j], host_ref) != 0;
        }
        if (!replaced) envp[count++] = strdup(environ[i]);
    }
    for (size_t j = 0; j < d->env_count; j++) {
        const char *name = d->env_names[j];
        char host_ref[256], *value;
        snprintf(host_ref, sizeof host_ref, "@@%s", name);
        if (strcmp(d->env_values[j], host_ref) == 0) continue;
        if (strcmp(name, "LD_PRELOAD") == 0 || strncmp(name, "SCONIFY_", 8) == 0) {
            char line[512];
            snprintf(line, sizeof line, "the policy's environment sets %.128s, which the runtime sets itself; "
                                        "refusing to start", name);
            die("%s", line);
        }
        if (deployment_substitute(d, d->env_values[j], &value, &err) != 0) die("%s", err.msg);
        size_t len = strlen(name) + strlen(value) + 2;
        envp[count] = malloc(len);
        snprintf(envp[count++], len, "%s=%s", name, value);
        OPENSSL_cleanse(value, strlen(value));
        free(value);
    }
    return envp;
}

/* Policy mode (docs/deploy.md, "The runtime with a policy"): the deployment's policy and secrets
 * stand where the keys file stood. The environment was checked already (main). */
static int run_with_policy(struct rt_config *cfg, const char *config_path, const char *shield, int argc,
                           char **command, const char *dir)
{
    struct deployment d;
    struct rt_error err;
    char why[1024];
    if (deployment_load(dir, &d, &err) != 0 || deployment_check_references(&d, &err) != 0) die("%s", err.msg);
    char **run_argv = policy_command(cfg, &d, argc, command, why, sizeof why);
    char program[PATH_MAX] = "";
    if (run_argv && !measured_program(cfg, run_argv[0], program, sizeof program)) {
        snprintf(why, sizeof why, "%.200s is %.200s, neither the measured executable %.200s nor a script the "
                                  "conversion measured (another program at that name: a derived image?)",
                 run_argv[0], *program ? program : "not found", cfg->executable);
        free_words(run_argv);
        run_argv = NULL;
    }
    unsetenv("SCONE_FSPF_KEY");
    unsetenv("SCONE_FSPF_TAG");
    unsetenv("SCONE_FSPF");
    unsetenv("SCONIFY_KEYS");
    int detect = freshness_detect();
    if (!run_argv) {  /* another command: no keys, no secrets, the host's environment */
        fprintf(stderr, "sconify-run: %s: the deployment's keys and secrets are granted only to the command its "
                        "policy names, so this one runs without them%s\n", why,
                cfg->volume_count ? " and its volumes are unreadable" : "");
        check_measurement(cfg, cfg->mrenclave, cfg->executable_sha256, "the image's runtime config");
        check_scripts(cfg);
        deployment_free(&d);
        setenv("SCONIFY_RUNTIME_CONFIG", config_path, 1);
        set_preload(shield);
        return run_service(command[0], command, environ, NULL);
    }
    char mr[65], file_sha[65];
    measure_executable(cfg, mr, file_sha);
    if (!deployment_accepts(&d, mr, file_sha, cfg->source_sha256)) {
        fprintf(stderr, "sconify-run: %s measures MRENCLAVE %s (executable SHA-256 %s, runtime config %s SHA-256 "
                        "%s): not a measurement this policy accepts (%s: services[0].mrenclaves, "
                        "sconify.measurements); another version of the image (sconify deploy add), or it was changed; "
                        "refusing to start\n",
                cfg->executable, mr, file_sha, config_path, cfg->source_sha256, d.name);
        exit(EXIT_REFUSED);
    }
    check_scripts(cfg);
    struct rt_keys keys;
    memset(&keys, 0, sizeof keys);
    memcpy(keys.mrenclave, mr, 65);
    memcpy(keys.executable_sha256, file_sha, 65);
    memcpy(keys.runtime_config_sha256, cfg->source_sha256, 65);
    check_policy_volumes(cfg, &d, &keys, detect);
    json_t *extra = policy_grant(&d);
    static struct plaincache cache;
    open_cache(cfg, &cache);
    grant_keys(cfg, &keys, "", 1, extra, start_ephemeral_regions(cfg), &cache);
    json_t *file;
    size_t i;
    json_array_foreach(json_object_get(extra, "files"), i, file) {  /* jansson frees, never clears */
        json_t *content = json_object_get(file, "content");
        OPENSSL_cleanse((char *)json_string_value(content), json_string_length(content));
    }
    json_decref(extra);
    keys_free(&keys);
    own_cache(&cache);
    setenv("SCONIFY_RUNTIME_CONFIG", config_path, 1);
    set_preload(shield);
    char **envp = policy_environment(&d);
    if (d.pwd && chdir(d.pwd) != 0) {
        char line[PATH_MAX + 128];
        snprintf(line, sizeof line, "cannot change to the policy's pwd %s (%s); refusing to start", d.pwd,
                 strerror(errno));
        die("%s", line);
    }
    deployment_free(&d);
    return run_service(program, run_argv, envp, &cache);
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
    char **command = argv + first;

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

    /* The policy: the environment may not choose other code (refused), and the keys go only to
     * the recorded command (another command runs, without keys). */
    char why[1024];
    unsetenv("SCONIFY_GRANT");
    if (policy_check_environment(&cfg, environ, shield, why, sizeof why) != 0) die("%s", why);
    /* A deployment's policy (docs/deploy.md) when there is one; else the keys file, as before. */
    char policy_dir[PATH_MAX];
    if (find_policy(policy_dir, sizeof policy_dir))
        return run_with_policy(&cfg, config_path, shield, argc - first, command, policy_dir);
    int granted = cfg.command_count > 0 && policy_check_command(&cfg, argc - first, command, why, sizeof why) == 0;
    const char *hint = granted || !cfg.command_count ? "" : " (to let the host append arguments, re-convert with --allow-args)";
    if (!cfg.command_count) snprintf(why, sizeof why, "the conversion recorded no command");
    char program[PATH_MAX];
    if (granted && !measured_program(&cfg, command[0], program, sizeof program)) {
        granted = 0;
        hint = "";
        snprintf(why, sizeof why, "%.200s is %.200s, neither the measured executable %.200s nor a script the "
                                  "conversion measured (another program at that name: a derived image?)",
                 command[0], *program ? program : "not found", cfg.executable);
    }
    if (!granted && cfg.volume_count)  /* an image without volumes has no keys to withhold: nothing to say */
        fprintf(stderr, "sconify-run: %s: the keys are granted only to the command the conversion recorded, so this "
                        "one runs without keys and its volumes are unreadable%s\n", why, hint);

    /* Keys: SCONE's debug-mode variables, else the keys file (a secret mount). */
    const char *scone_fspf = getenv("SCONE_FSPF");
    const char *scone_key = getenv("SCONE_FSPF_KEY");
    const char *keys_env = getenv("SCONIFY_KEYS");
    const char *keys_path = keys_env && *keys_env ? keys_env : DEFAULT_KEYS_PATH;
    struct rt_keys keys;
    int have_keys = 0, from_env = 0;
    if (granted && scone_key && *scone_key) {
        if (keys_from_scone_env(&cfg, scone_fspf ? scone_fspf : "", scone_key, getenv("SCONE_FSPF_TAG"), &keys,
                                &err) != 0)
            die("%s", err.msg);
        have_keys = from_env = 1;
    } else if (granted && (access(keys_path, F_OK) == 0 || cfg.volume_count > 0 || (keys_env && *keys_env))) {
        if (!(keys_env && *keys_env) && access(keys_path, F_OK) != 0 && errno == ENOENT && generic_image(&cfg))
            die("no deployment policy at %s/" POLICY_NAME ": this is a generic image (its curator made no keys); "
                "make a deployment with `sconify deploy init IMAGE --name NAME` and mount its directory there "
                "(docker run -v \"$PWD/NAME:" DEFAULT_POLICY_DIR ":ro\"), docs/deploy.md", DEFAULT_POLICY_DIR);
        if (keys_load(keys_path, &keys, &err) != 0) die("%s", err.msg);
        have_keys = 1;
    }
    /* Key bytes and key paths never reach the service's environment. */
    unsetenv("SCONE_FSPF_KEY");
    unsetenv("SCONE_FSPF_TAG");
    unsetenv("SCONE_FSPF");
    unsetenv("SCONIFY_KEYS");
    int detect = freshness_detect();

    if (have_keys) check_config_binding(&cfg, &keys, config_path);
    if (have_keys) check_measurement(&cfg, keys.mrenclave, keys.executable_sha256, "the keys file");
    else check_measurement(&cfg, cfg.mrenclave, cfg.executable_sha256, "the image's runtime config");
    check_scripts(&cfg);
    struct store store = {0};
    int have_store = have_keys && !from_env && keys.state;
    if (have_store) open_state_store(&cfg, &keys, &store, detect, "the keys file's");
    if (have_keys) check_volumes(&cfg, &keys, keys_path, !from_env, detect, have_store ? &store : NULL);
    if (have_store) store_close(&store);

    static struct plaincache cache = {.listener = -1};
    if (have_keys) open_cache(&cfg, &cache);
    if (have_keys) {
        grant_keys(&cfg, &keys, from_env ? "" : keys_path, !from_env, NULL, start_ephemeral_regions(&cfg), &cache);
        keys_free(&keys);
    }
    own_cache(&cache);
    setenv("SCONIFY_RUNTIME_CONFIG", config_path, 1);
    set_preload(shield);

    const char *run = granted ? program : command[0];  /* the file checked above, not a second lookup */
    return run_service(run, command, environ, &cache);
}
