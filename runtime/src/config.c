#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fspf.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

static int compare_volumes(const void *a, const void *b)
{
    return strcmp(((const struct rt_volume *)a)->path, ((const struct rt_volume *)b)->path);
}

static int get_u64(json_t *obj, const char *name, uint64_t *out)
{
    json_t *v = json_object_get(obj, name);
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int protection_of(const char *name)
{
    if (name && strcmp(name, "encrypted") == 0) return FSPF_ENCRYPTED;
    if (name && strcmp(name, "authenticated") == 0) return FSPF_AUTHENTICATED;
    return -1;
}

static int is_hex(const char *s, size_t len)
{
    if (!s || strlen(s) != len) return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A JSON array of absolute paths as a NULL-terminated copy (an entry that is not one: "/"). */
static char **absolute_paths(json_t *array, size_t *count)
{
    *count = json_array_size(array);
    char **paths = calloc(*count + 1, sizeof *paths);
    for (size_t i = 0; i < *count; i++) {
        const char *p = json_string_value(json_array_get(array, i));
        paths[i] = strdup(p && p[0] == '/' ? p : "/");
    }
    return paths;
}

/* A JSON array of strings as a NULL-terminated copy; -1 if it is not one. */
static int string_array(json_t *array, char ***out, size_t *count)
{
    if (!json_is_array(array)) return -1;
    *count = json_array_size(array);
    *out = calloc(*count + 1, sizeof **out);
    for (size_t i = 0; i < *count; i++) {
        const char *s = json_string_value(json_array_get(array, i));
        (*out)[i] = strdup(s ? s : "");
        if (!s) return -1;
    }
    return 0;
}

/* "policy": the recorded command, whether the host may append arguments, the image's
 * environment and the variables the host may set. */
static int parse_policy(json_t *policy, struct rt_config *cfg)
{
    json_t *env = json_object_get(policy, "environment");
    json_t *allow_args = json_object_get(policy, "allow_args");
    if (!json_is_object(policy) || !json_is_object(env) || !json_is_boolean(allow_args) ||
        string_array(json_object_get(policy, "command"), &cfg->command, &cfg->command_count) != 0 ||
        string_array(json_object_get(policy, "allow_env"), &cfg->allow_env, &cfg->allow_env_count) != 0)
        return -1;
    cfg->allow_args = json_is_true(allow_args);
    json_t *service = json_object_get(policy, "service_command");
    if (service && string_array(service, &cfg->service_command, &cfg->service_command_count) != 0) return -1;
    cfg->env_count = json_object_size(env);
    cfg->env_names = calloc(cfg->env_count + 1, sizeof *cfg->env_names);
    cfg->env_values = calloc(cfg->env_count + 1, sizeof *cfg->env_values);
    size_t i = 0;
    const char *name;
    json_t *value;
    json_object_foreach(env, name, value) {
        if (!json_is_string(value)) return -1;
        cfg->env_names[i] = strdup(name);
        cfg->env_values[i++] = strdup(json_string_value(value));
    }
    return 0;
}

int config_load(const char *path, struct rt_config *cfg, struct rt_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    FILE *f = fopen(path, "re");
    char *text = NULL;
    size_t len = 0;
    if (f) {
        FILE *mem = open_memstream(&text, &len);
        char buf[8192];
        size_t n;
        while (mem && (n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, mem);
        int bad = ferror(f);
        fclose(f);
        if (mem) fclose(mem);
        if (bad || !text) {
            free(text);
            text = NULL;
        }
    }
    if (!text)
        return rt_fail(err, "cannot read the runtime config %s (%s); the image was not converted by this "
                            "sconify-image, re-convert it", path, strerror(errno));
    int rc = config_parse(text, len, path, cfg, err);
    free(text);
    return rc;
}

int config_parse(const char *text, size_t len, const char *path, struct rt_config *cfg, struct rt_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc)
        return rt_fail(err, "cannot read the runtime config %s (%s); the image was not converted by this "
                            "sconify-image, re-convert it", path, jerr.text);
    const char *schema = json_string_value(json_object_get(doc, "schema"));
    const char *exe = json_string_value(json_object_get(doc, "executable"));
    const char *mr = json_string_value(json_object_get(doc, "mrenclave"));
    const char *file_sha = json_string_value(json_object_get(doc, "executable_sha256"));
    json_t *m = json_object_get(doc, "measurement");
    json_t *vols = json_object_get(doc, "volumes");
    json_t *eph = json_object_get(doc, "ephemeral");
    uint64_t heap, stack, threads, ssa;
    if (!schema || strcmp(schema, RUNTIME_CONFIG_SCHEMA) != 0 || !exe || exe[0] != '/' || !is_hex(mr, 64) ||
        !is_hex(file_sha, 64) || !json_is_object(m) || get_u64(m, "heap_size", &heap) || get_u64(m, "stack_size", &stack) ||
        get_u64(m, "threads", &threads) || get_u64(m, "ssa_frame_size", &ssa) || !json_is_array(vols) ||
        !json_is_array(eph) || threads == 0 || threads > UINT32_MAX || ssa == 0 || ssa > UINT32_MAX) {
        json_decref(doc);
        return rt_fail(err, "runtime config %s is malformed (expected schema %s); re-convert the image", path,
                       RUNTIME_CONFIG_SCHEMA);
    }
    cfg->executable = strdup(exe);
    cfg->params = (struct sgx_params){heap, stack, (uint32_t)threads, (uint32_t)ssa};
    memcpy(cfg->mrenclave, mr, 65);
    memcpy(cfg->executable_sha256, file_sha, 65);
    cfg->volume_count = json_array_size(vols);
    cfg->volumes = calloc(cfg->volume_count + 1, sizeof *cfg->volumes);
    for (size_t i = 0; i < cfg->volume_count; i++) {
        json_t *v = json_array_get(vols, i);
        const char *vp = json_string_value(json_object_get(v, "path"));
        const char *fp = json_string_value(json_object_get(v, "fspf_path"));
        /* read leniently (a generic volume is declared: its fspf path and protection may be left
         * to their defaults, <path>/.sconify.fspf and encrypted) */
        json_t *given = json_object_get(v, "protection");
        int prot = given ? protection_of(json_string_value(given)) : FSPF_ENCRYPTED;
        char fspf_default[PATH_MAX];
        if (!json_object_get(v, "fspf_path") && vp) {
            snprintf(fspf_default, sizeof fspf_default, "%s/" VOLUME_FSPF_NAME, strcmp(vp, "/") == 0 ? "" : vp);
            fp = fspf_default;
        }
        if (!vp || vp[0] != '/' || !fp || fp[0] != '/' || prot < 0) {
            cfg->volume_count = i;
            config_free(cfg);
            json_decref(doc);
            return rt_fail(err, "runtime config %s: volume %zu is malformed; re-convert the image", path, i);
        }
        cfg->volumes[i] = (struct rt_volume){strdup(vp), strdup(fp), (uint8_t)prot,
                                             json_is_true(json_object_get(v, "generic"))};
    }
    qsort(cfg->volumes, cfg->volume_count, sizeof *cfg->volumes, compare_volumes);
    cfg->ephemeral = absolute_paths(eph, &cfg->ephemeral_count);
    /* "scripts" is absent in the configs of older conversions: none then. */
    cfg->scripts = absolute_paths(json_object_get(doc, "scripts"), &cfg->script_count);
    /* "code_roots", "code_left": absent in older conversions (nothing sealed). Sorted, for the
     * shield's lookups; an entry that is not an absolute path would be "/": dropped. */
    cfg->code_roots = absolute_paths(json_object_get(doc, "code_roots"), &cfg->code_root_count);
    cfg->code_left = absolute_paths(json_object_get(doc, "code_left"), &cfg->code_left_count);
    qsort(cfg->code_roots, cfg->code_root_count, sizeof *cfg->code_roots, compare_strings);
    qsort(cfg->code_left, cfg->code_left_count, sizeof *cfg->code_left, compare_strings);
    cfg->code_shallow = absolute_paths(json_object_get(doc, "code_shallow"), &cfg->code_shallow_count);
    json_t *extensions = json_object_get(doc, "code_extensions");
    cfg->code_extension_count = json_array_size(extensions);
    cfg->code_extensions = calloc(cfg->code_extension_count + 1, sizeof *cfg->code_extensions);
    for (size_t i = 0; i < cfg->code_extension_count; i++) {
        const char *ext = json_string_value(json_array_get(extensions, i));
        cfg->code_extensions[i] = strdup(ext && ext[0] == '.' ? ext : ".");
    }
    while (cfg->code_root_count && strcmp(cfg->code_roots[0], "/") == 0) {
        free(cfg->code_roots[0]);
        memmove(cfg->code_roots, cfg->code_roots + 1, cfg->code_root_count-- * sizeof *cfg->code_roots);
    }
    if (parse_policy(json_object_get(doc, "policy"), cfg) != 0) {
        config_free(cfg);
        json_decref(doc);
        return rt_fail(err, "runtime config %s has no valid policy (command, environment), it was written by an "
                            "older sconify-image; re-convert the image", path);
    }
    json_decref(doc);
    cfg->source = malloc(len + 1);
    memcpy(cfg->source, text, len);
    cfg->source[len] = '\0';
    cfg->source_len = len;
    unsigned char digest[32];
    SHA256((const unsigned char *)text, len, digest);
    hex_encode(digest, 32, cfg->source_sha256);
    return 0;
}

static void free_strings(char **list, size_t count)
{
    for (size_t i = 0; list && i < count; i++) free(list[i]);
    free(list);
}

void config_free(struct rt_config *cfg)
{
    free(cfg->executable);
    for (size_t i = 0; i < cfg->volume_count; i++) {
        free(cfg->volumes[i].path);
        free(cfg->volumes[i].fspf_path);
    }
    free(cfg->volumes);
    free_strings(cfg->ephemeral, cfg->ephemeral_count);
    free_strings(cfg->scripts, cfg->script_count);
    free_strings(cfg->code_roots, cfg->code_root_count);
    free_strings(cfg->code_left, cfg->code_left_count);
    free_strings(cfg->code_shallow, cfg->code_shallow_count);
    free_strings(cfg->code_extensions, cfg->code_extension_count);
    free_strings(cfg->command, cfg->command_count);
    free_strings(cfg->service_command, cfg->service_command_count);
    free_strings(cfg->env_names, cfg->env_count);
    free_strings(cfg->env_values, cfg->env_count);
    free_strings(cfg->allow_env, cfg->allow_env_count);
    free(cfg->source);
    memset(cfg, 0, sizeof *cfg);
}

static const char *malformed_keys(const char *path)
{
    (void)path;
    return "is not a sconify keys file (schema " KEYS_SCHEMA "); mount the keys.json written by sconify-image";
}

int keys_load(const char *path, struct rt_keys *keys, struct rt_error *err)
{
    memset(keys, 0, sizeof *keys);
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        if (e == ENOENT)
            return rt_fail(err, "no keys file at %s; mount the directory holding the keys.json written by "
                                "sconify-image at /run/secrets/sconify (docker run -v DIR:/run/secrets/sconify) "
                                "or set SCONIFY_KEYS", path);
        return rt_fail(err, "cannot read the keys file %s (%s); make it readable by the container's user", path,
                       strerror(e));
    }
    json_error_t jerr;
    json_t *doc = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    int rc = keys_from_json(doc, path, keys, err);
    json_decref(doc);
    return rc;
}

int keys_from_json(void *document, const char *path, struct rt_keys *keys, struct rt_error *err)
{
    json_t *doc = document;
    memset(keys, 0, sizeof *keys);
    const char *schema = doc ? json_string_value(json_object_get(doc, "schema")) : NULL;
    const char *mr = doc ? json_string_value(json_object_get(doc, "mrenclave")) : NULL;
    json_t *vols = doc ? json_object_get(doc, "volumes") : NULL;
    if (!schema || strcmp(schema, KEYS_SCHEMA) != 0 || !is_hex(mr, 64) || !json_is_array(vols))
        return rt_fail(err, "keys file %s %s", path, malformed_keys(path));
    memcpy(keys->mrenclave, mr, 65);
    const char *file_sha = json_string_value(json_object_get(doc, "executable_sha256"));
    const char *config_sha = json_string_value(json_object_get(doc, "runtime_config_sha256"));
    if ((file_sha && !is_hex(file_sha, 64)) || (config_sha && !is_hex(config_sha, 64)))
        return rt_fail(err, "keys file %s %s", path, malformed_keys(path));
    if (file_sha) memcpy(keys->executable_sha256, file_sha, 65);
    /* "code_key" (--encrypted-code): absent when the image has no encrypted code */
    json_t *code = json_object_get(doc, "code_key");
    if (code) {
        const char *code_hex = json_string_value(code);
        if (!is_hex(code_hex, 64)) return rt_fail(err, "keys file %s %s", path, malformed_keys(path));
        hex_decode(code_hex, keys->code_key, 32);
        keys->has_code_key = 1;
    }
    if (config_sha) memcpy(keys->runtime_config_sha256, config_sha, 65);
    /* "state" (issue 24): the volumes' tags are kept in a state store, the keys file is only read */
    json_t *state = json_object_get(doc, "state");
    if (state && !json_is_object(state)) return rt_fail(err, "keys file %s: \"state\" is not an object", path);
    if (state) keys->state = json_dumps(state, JSON_COMPACT | JSON_SORT_KEYS);
    keys->count = json_array_size(vols);
    keys->keys = calloc(keys->count + 1, sizeof *keys->keys);
    for (size_t i = 0; i < keys->count; i++) {
        json_t *v = json_array_get(vols, i);
        const char *vp = json_string_value(json_object_get(v, "path"));
        const char *key = json_string_value(json_object_get(v, "fspf_key"));
        const char *tag = json_string_value(json_object_get(v, "fspf_tag"));
        const char *next = json_string_value(json_object_get(v, "fspf_tag_next"));
        const char *image = json_string_value(json_object_get(v, "fspf_tag_image"));
        struct rt_key *k = &keys->keys[i];
        if (!vp || vp[0] != '/' || !is_hex(key, 64) || !is_hex(tag, 32) || (next && !is_hex(next, 32)) ||
            (image && !is_hex(image, 32))) {
            keys->count = i;
            keys_free(keys);
            return rt_fail(err, "keys file %s: volume entry %zu is malformed; mount the keys.json written by "
                                "sconify-image", path, i);
        }
        k->path = strdup(vp);
        hex_decode(key, k->key, 32);
        hex_decode(tag, k->tag, 16);
        if (next) {
            k->has_next = 1;
            hex_decode(next, k->next_tag, 16);
        }
        if (image) {
            k->has_image = 1;
            hex_decode(image, k->image_tag, 16);
        }
        k->container_copy = json_is_true(json_object_get(v, "container_copy"));
        const char *name = json_string_value(json_object_get(v, "name"));
        if (name && *name) k->name = strdup(name);
    }
    return 0;
}

void *keys_to_json(const struct rt_keys *keys)
{
    json_t *doc = json_object(), *vols = json_array();
    json_object_set_new(doc, "schema", json_string(KEYS_SCHEMA));
    json_object_set_new(doc, "mrenclave", json_string(keys->mrenclave));
    if (*keys->executable_sha256) json_object_set_new(doc, "executable_sha256", json_string(keys->executable_sha256));
    if (*keys->runtime_config_sha256)
        json_object_set_new(doc, "runtime_config_sha256", json_string(keys->runtime_config_sha256));
    if (keys->has_code_key) {
        char code_hex[65];
        hex_encode(keys->code_key, 32, code_hex);
        json_object_set_new(doc, "code_key", json_string(code_hex));
        OPENSSL_cleanse(code_hex, sizeof code_hex);
    }
    for (size_t i = 0; i < keys->count; i++) {
        const struct rt_key *k = &keys->keys[i];
        char key_hex[65], tag_hex[33];
        json_t *v = json_object();
        hex_encode(k->key, 32, key_hex);
        json_object_set_new(v, "path", json_string(k->path));
        json_object_set_new(v, "fspf_key", json_string(key_hex));
        OPENSSL_cleanse(key_hex, sizeof key_hex);
        hex_encode(k->tag, 16, tag_hex);
        json_object_set_new(v, "fspf_tag", json_string(tag_hex));
        if (k->has_next) {
            hex_encode(k->next_tag, 16, tag_hex);
            json_object_set_new(v, "fspf_tag_next", json_string(tag_hex));
        }
        if (k->has_image) {
            hex_encode(k->image_tag, 16, tag_hex);
            json_object_set_new(v, "fspf_tag_image", json_string(tag_hex));
        }
        if (k->container_copy) json_object_set_new(v, "container_copy", json_true());
        if (k->name) json_object_set_new(v, "name", json_string(k->name));
        json_array_append_new(vols, v);
    }
    json_object_set_new(doc, "volumes", vols);
    if (keys->state) json_object_set_new(doc, "state", json_loads(keys->state, 0, NULL));
    return doc;
}

int keys_from_scone_env(const struct rt_config *cfg, const char *fspf, const char *key_hex, const char *tag_hex,
                        struct rt_keys *keys, struct rt_error *err)
{
    memset(keys, 0, sizeof *keys);
    const struct rt_volume *vol = NULL;
    for (size_t i = 0; i < cfg->volume_count; i++)
        if (strcmp(cfg->volumes[i].fspf_path, fspf) == 0) vol = &cfg->volumes[i];
    if (!vol) return rt_fail(err, "SCONE_FSPF=%s is not the fspf of a volume of this image", fspf);
    if (!key_hex || !is_hex(key_hex, 64) || !tag_hex || !is_hex(tag_hex, 32))
        return rt_fail(err, "SCONE_FSPF_KEY must be 64 and SCONE_FSPF_TAG 32 lower-case hex digits");
    memcpy(keys->mrenclave, cfg->mrenclave, 65);
    memcpy(keys->executable_sha256, cfg->executable_sha256, 65);
    memcpy(keys->runtime_config_sha256, cfg->source_sha256, 65);
    keys->count = 1;
    keys->keys = calloc(1, sizeof *keys->keys);
    keys->keys[0].path = strdup(vol->path);
    hex_decode(key_hex, keys->keys[0].key, 32);
    hex_decode(tag_hex, keys->keys[0].tag, 16);
    return 0;
}

void keys_free(struct rt_keys *keys)
{
    for (size_t i = 0; i < keys->count; i++) {
        free(keys->keys[i].path);
        free(keys->keys[i].name);
        OPENSSL_cleanse(keys->keys[i].key, sizeof keys->keys[i].key);
    }
    free(keys->keys);
    free(keys->state);
    OPENSSL_cleanse(keys->code_key, sizeof keys->code_key);
    memset(keys, 0, sizeof *keys);
}

const char *key_record_name(const struct rt_key *key)
{
    return key->name ? key->name : key->path;
}

struct rt_key *keys_find(struct rt_keys *keys, const char *volume_path)
{
    for (size_t i = 0; i < keys->count; i++)
        if (strcmp(keys->keys[i].path, volume_path) == 0) return &keys->keys[i];
    return NULL;
}

/* text and a newline to path, atomically: a temp file (tmp) written, renamed over path; with
 * sync, the temp file and then the directory fsynced (replace_file). 0, or the errno of what
 * failed (nothing changed then). */
static int write_atomically(const char *path, const char *tmp, const char *text, mode_t mode, int sync)
{
    int rc = replace_file(path, tmp, text, strlen(text), 1, mode, sync);
    if (rc == 0 && sync) fsync_dir_of(path);
    return rc;
}

/* The directory of path, open and locked (flock, exclusive; its inode stays when a rename
 * replaces the file): the fd to close, or -1. */
static int lock_dir_of(const char *path)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (fd >= 0 && flock(fd, LOCK_EX) != 0 && errno == EINTR) {}
    return fd;
}

static int record_tag_unlocked(const char *keys_path, const char *volume_path, const unsigned char tag[16], int next,
                               int sync, struct rt_error *err)
{
    json_error_t jerr;
    json_t *doc = json_load_file(keys_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) return rt_fail(err, "cannot read the keys file %s to record a new tag", keys_path);
    json_t *vols = json_object_get(doc, "volumes");
    json_t *entry = NULL;
    for (size_t i = 0; i < json_array_size(vols); i++) {
        const char *vp = json_string_value(json_object_get(json_array_get(vols, i), "path"));
        if (vp && strcmp(vp, volume_path) == 0) entry = json_array_get(vols, i);
    }
    if (!entry) {
        json_decref(doc);
        return rt_fail(err, "keys file %s has no volume %s", keys_path, volume_path);
    }
    char hex[33];
    hex_encode(tag, 16, hex);
    if (next) {
        json_object_set_new(entry, "fspf_tag_next", json_string(hex));
    } else {
        json_object_set_new(entry, "fspf_tag", json_string(hex));
        json_object_del(entry, "fspf_tag_next");
    }
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(doc);
    if (!text) return rt_fail(err, "out of memory writing the keys file");
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.sconify-tmp-%ld", keys_path, (long)getpid());
    int saved = write_atomically(keys_path, tmp, text, 0600, sync);
    free(text);
    if (saved)
        return rt_fail(err, "cannot record the new fspf tag of volume %s in the keys file %s (%s); mount the keys "
                            "directory read-write (the tag is what protects the volume against rollback)",
                       volume_path, keys_path, strerror(saved));
    return 0;
}

/* The keys file is read, changed and replaced whole: processes of the service that commit to
 * two volumes at once take turns on it, so neither drops the other's tag. */
int keys_record_tag(const char *keys_path, const char *volume_path, const unsigned char tag[16], int next,
                    int sync, struct rt_error *err)
{
    int dir = lock_dir_of(keys_path);
    int rc = record_tag_unlocked(keys_path, volume_path, tag, next, sync, err);
    if (dir >= 0) close(dir);
    return rc;
}

/* ------------------------------------------------------------------ freshness */

const unsigned char *fresh_tag(const struct rt_key *key, int container_copy, const struct rt_state *state,
                               const unsigned char *tag)
{
    if (!tag) return NULL;
    if (memcmp(tag, key->tag, 16) == 0) return key->tag;
    if (!container_copy) return key->has_next && memcmp(tag, key->next_tag, 16) == 0 ? key->next_tag : NULL;
    if (key->has_image && memcmp(tag, key->image_tag, 16) == 0) return key->image_tag;
    if (state && memcmp(tag, state->tag, 16) == 0) return state->tag;
    if (state && state->has_next && memcmp(tag, state->next_tag, 16) == 0) return state->next_tag;
    return NULL;
}

/* ------------------------------------------------------------------ a container copy's state */

/* MAC of a state: HMAC-SHA256 under HMAC-SHA256(fspf key, "sconify container state v1"), over the
 * schema, the volume's path and the tags. */
static int state_mac(const char *volume_path, const unsigned char key[32], const char *tag_hex,
                     const char *next_hex, char out[65])
{
    static const char label[] = "sconify container state v1";
    unsigned char mac_key[32], mac[32];
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), key, 32, (const unsigned char *)label, sizeof label - 1, mac_key, &len) || len != 32)
        return -1;
    size_t n = strlen(STATE_SCHEMA) + strlen(volume_path) + 32 + 32 + 4;
    char *message = malloc(n);
    if (!message) return -1;
    snprintf(message, n, "%s\n%s\n%s\n%s", STATE_SCHEMA, volume_path, tag_hex, next_hex ? next_hex : "");
    int ok = HMAC(EVP_sha256(), mac_key, 32, (const unsigned char *)message, strlen(message), mac, &len) && len == 32;
    free(message);
    OPENSSL_cleanse(mac_key, sizeof mac_key);
    if (!ok) return -1;
    hex_encode(mac, 32, out);
    return 0;
}

static void state_path(const char *volume_path, const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s%s%s", volume_path, strcmp(volume_path, "/") == 0 ? "" : "/", name);
}

int state_load(const char *volume_path, const unsigned char key[32], struct rt_state *st)
{
    char path[PATH_MAX], want[65];
    state_path(volume_path, VOLUME_STATE_NAME, path, sizeof path);
    memset(st, 0, sizeof *st);
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
    const char *schema = json_string_value(json_object_get(doc, "schema"));
    const char *volume = json_string_value(json_object_get(doc, "volume"));
    const char *tag = json_string_value(json_object_get(doc, "fspf_tag"));
    const char *next = json_string_value(json_object_get(doc, "fspf_tag_next"));
    const char *mac = json_string_value(json_object_get(doc, "mac"));
    int ok = schema && strcmp(schema, STATE_SCHEMA) == 0 && volume && strcmp(volume, volume_path) == 0 &&
             is_hex(tag, 32) && (!next || is_hex(next, 32)) && is_hex(mac, 64) &&
             state_mac(volume_path, key, tag, next, want) == 0 && CRYPTO_memcmp(want, mac, 64) == 0;
    if (ok) {
        hex_decode(tag, st->tag, 16);
        if (next) {
            st->has_next = 1;
            hex_decode(next, st->next_tag, 16);
        }
    }
    json_decref(doc);
    return ok;
}

int state_record(const char *volume_path, const unsigned char key[32], const unsigned char tag[16],
                 const unsigned char *next, int sync, struct rt_error *err)
{
    char tag_hex[33], next_hex[33], mac[65], path[PATH_MAX], tmp[PATH_MAX], name[64];
    hex_encode(tag, 16, tag_hex);
    if (next) hex_encode(next, 16, next_hex);
    if (state_mac(volume_path, key, tag_hex, next ? next_hex : NULL, mac) != 0)
        return rt_fail(err, "cannot compute the state of volume %s", volume_path);
    json_t *doc = json_object();
    json_object_set_new(doc, "schema", json_string(STATE_SCHEMA));
    json_object_set_new(doc, "volume", json_string(volume_path));
    json_object_set_new(doc, "fspf_tag", json_string(tag_hex));
    if (next) json_object_set_new(doc, "fspf_tag_next", json_string(next_hex));
    json_object_set_new(doc, "mac", json_string(mac));
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(doc);
    if (!text) return rt_fail(err, "out of memory writing the state of volume %s", volume_path);
    state_path(volume_path, VOLUME_STATE_NAME, path, sizeof path);
    snprintf(name, sizeof name, ".sconify-tmp.state.%ld", (long)getpid());  /* hidden like the commit's */
    state_path(volume_path, name, tmp, sizeof tmp);
    int saved = write_atomically(path, tmp, text, 0644, sync);
    free(text);
    if (saved)
        return rt_fail(err, "cannot record the new fspf tag of volume %s (the container's own copy) in %s (%s)",
                       volume_path, path, strerror(saved));
    return 0;
}

void commit_tmp_name(const char *path, long pid, char *out, size_t len)
{
    const char *base = base_name(path);
    snprintf(out, len, "%.*s" HIDDEN_TMP "%s.%ld", (int)(base - path), path, base, pid);
}
