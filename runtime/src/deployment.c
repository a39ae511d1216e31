#include "deployment.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "yamljson.h"

#define REF_OPEN "$$SCONE::"
#define REF_CLOSE "$$"

/* ------------------------------------------------------------------ reading */

/* A whole file (at most 16 MiB) into *text (NUL-terminated): 0, or the errno. */
static int read_text(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (!f) return errno ? errno : EIO;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (n + 8192 + 1 > cap) {
            cap = cap ? cap * 2 : 16384;
            char *bigger = cap > (16u << 20) ? NULL : realloc(buf, cap);
            if (!bigger) { rc = EFBIG; break; }
            buf = bigger;
        }
        size_t got = fread(buf + n, 1, 8192, f);
        n += got;
        if (got < 8192) {
            if (ferror(f)) rc = EIO;
            break;
        }
    }
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    if (!buf && !(buf = malloc(1))) return ENOMEM;
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return 0;
}

/* 64 hex digits (either case) into out, lower case: 0, or -1. */
static int digest_hex(json_t *v, char out[65])
{
    const char *s = json_string_value(v);
    if (!s || strlen(s) != 64) return -1;
    for (size_t i = 0; i < 64; i++) {
        if (!isxdigit((unsigned char)s[i])) return -1;
        out[i] = (char)tolower((unsigned char)s[i]);
    }
    out[64] = '\0';
    return 0;
}

/* A scalar as the text an environment value or a word is: a string as it is, an integer in
 * decimal, a boolean as true/false. NULL for anything else (a float, a list...). */
static char *scalar_text(json_t *v)
{
    char buf[32];
    if (json_is_string(v)) return strndup(json_string_value(v), json_string_length(v));
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        return strdup(buf);
    }
    if (json_is_boolean(v)) return strdup(json_is_true(v) ? "true" : "false");
    return NULL;
}

static char *string_field(json_t *obj, const char *name)
{
    const char *s = json_string_value(json_object_get(obj, name));
    return s ? strdup(s) : NULL;
}

/* An absolute path without "." or ".." components. */
static int absolute_path(const char *p)
{
    if (!p || p[0] != '/') return 0;
    for (const char *c = p; *c; c++)
        if (c[0] == '/' && c[1] == '.' && (c[2] == '/' || !c[2] || (c[2] == '.' && (c[3] == '/' || !c[3])))) return 0;
    return 1;
}

static int secret_kind(const char *kind)
{
    if (!kind) return -1;
    if (strcmp(kind, "ascii") == 0) return SECRET_ASCII;
    if (strcmp(kind, "binary") == 0) return SECRET_BINARY;
    if (strcmp(kind, "x509") == 0) return SECRET_X509;
    return -1;
}

static struct dep_secret *find_secret(const struct deployment *d, const char *name, size_t len)
{
    for (size_t i = 0; i < d->secret_count; i++)
        if (strlen(d->secrets[i].name) == len && memcmp(d->secrets[i].name, name, len) == 0) return &d->secrets[i];
    return NULL;
}

/* The value secrets.json gives a declared secret (entry: its object there). */
static int secret_value(struct dep_secret *s, json_t *entry, const char *origin, struct rt_error *err)
{
    const char *kind = json_string_value(json_object_get(entry, "kind"));
    if (!json_is_object(entry) || secret_kind(kind) != s->kind)
        return rt_fail(err, "%s/" SECRETS_NAME ": secret %s is not a %s secret as the policy declares it", origin,
                       s->name, s->kind == SECRET_ASCII ? "ascii" : s->kind == SECRET_BINARY ? "binary" : "x509");
    if (s->kind == SECRET_ASCII) {
        json_t *v = json_object_get(entry, "value");
        if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
            return rt_fail(err, "%s/" SECRETS_NAME ": secret %s has no text value", origin, s->name);
        s->value_len = json_string_length(v);
        s->value = (unsigned char *)strndup(json_string_value(v), s->value_len);
    } else if (s->kind == SECRET_BINARY) {
        const char *hex = json_string_value(json_object_get(entry, "value_hex"));
        size_t n = hex ? strlen(hex) : 1;
        s->value = malloc(n / 2 + 1);
        if (!hex || n % 2 || !s->value || hex_decode(hex, s->value, n / 2) != 0)
            return rt_fail(err, "%s/" SECRETS_NAME ": secret %s has no value_hex (hex digits)", origin, s->name);
        s->value_len = n / 2;
    } else {
        s->certificate = string_field(entry, "certificate");
        s->private_key = string_field(entry, "private_key");
        if (!s->certificate || !s->private_key)
            return rt_fail(err, "%s/" SECRETS_NAME ": secret %s lacks its certificate or private_key", origin, s->name);
    }
    s->has_value = 1;
    return 0;
}

static int read_secrets(json_t *list, json_t *secrets, const char *origin, struct deployment *d, struct rt_error *err)
{
    const char *schema = json_string_value(json_object_get(secrets, "schema"));
    const char *owner = json_string_value(json_object_get(secrets, "policy"));
    json_t *values = json_object_get(secrets, "secrets");
    if (secrets && (!schema || strcmp(schema, SECRETS_SCHEMA) != 0 || !json_is_object(values)))
        return rt_fail(err, "%s/" SECRETS_NAME " is not a secrets file (schema " SECRETS_SCHEMA ")", origin);
    if (owner && strcmp(owner, d->name) != 0)
        return rt_fail(err, "%s/" SECRETS_NAME " belongs to policy %.128s, not to %.128s; mount the secrets.json "
                            "written with this policy", origin, owner, d->name);
    if (list && !json_is_array(list)) return rt_fail(err, "%s/" POLICY_NAME ": secrets is not a list", origin);
    d->secrets = calloc(json_array_size(list) + 1, sizeof *d->secrets);
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *decl = json_array_get(list, i);
        const char *name = json_string_value(json_object_get(decl, "name"));
        int kind = secret_kind(json_string_value(json_object_get(decl, "kind")));
        if (!name || !*name || kind < 0 || find_secret(d, name, strlen(name)))
            return rt_fail(err, "%s/" POLICY_NAME ": secret entry %zu has no name, an unknown kind (ascii, binary, "
                                "x509) or a name taken twice", origin, i);
        struct dep_secret *s = &d->secrets[d->secret_count++];
        s->name = strdup(name);
        s->kind = kind;
        json_t *entry = json_object_get(values, name);
        if (entry) {
            if (secret_value(s, entry, origin, err) != 0) return -1;
        } else if (kind == SECRET_ASCII && json_is_string(json_object_get(decl, "value"))) {
            json_t *wrapped = json_pack("{s:s, s:O}", "kind", "ascii", "value", json_object_get(decl, "value"));
            int rc = secret_value(s, wrapped, origin, err);
            json_decref(wrapped);
            if (rc != 0) return -1;
        }
    }
    return 0;
}

static int read_environment(json_t *env, const char *origin, struct deployment *d, struct rt_error *err)
{
    if (!env) return 0;
    if (!json_is_object(env)) return rt_fail(err, "%s/" POLICY_NAME ": environment is not a mapping", origin);
    d->env_names = calloc(json_object_size(env) + 1, sizeof *d->env_names);
    d->env_values = calloc(json_object_size(env) + 1, sizeof *d->env_values);
    const char *name;
    json_t *value;
    json_object_foreach(env, name, value) {
        char *text = scalar_text(value);
        if (!text || !*name || strchr(name, '=')) {
            free(text);
            return rt_fail(err, "%s/" POLICY_NAME ": environment variable %.128s has no text value (quote it)",
                           origin, name);
        }
        d->env_names[d->env_count] = strdup(name);
        d->env_values[d->env_count++] = text;
    }
    return 0;
}

/* images[*].injection_files of the service's image (every image when the service names none). */
static int read_files(json_t *images, const char *image_name, const char *origin, struct deployment *d,
                      struct rt_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < json_array_size(images); i++)
        total += json_array_size(json_object_get(json_array_get(images, i), "injection_files"));
    d->files = calloc(total + 1, sizeof *d->files);
    for (size_t i = 0; i < json_array_size(images); i++) {
        json_t *image = json_array_get(images, i);
        const char *name = json_string_value(json_object_get(image, "name"));
        if (image_name && (!name || strcmp(name, image_name) != 0)) continue;
        json_t *files = json_object_get(image, "injection_files");
        for (size_t j = 0; j < json_array_size(files); j++) {
            json_t *f = json_array_get(files, j);
            const char *path = json_string_value(json_object_get(f, "path"));
            char *content = scalar_text(json_object_get(f, "content"));
            if (!absolute_path(path) || !content || strcmp(path, "/") == 0 || path[strlen(path) - 1] == '/') {
                free(content);
                return rt_fail(err, "%s/" POLICY_NAME ": injection file %zu needs an absolute path and a text content",
                               origin, j);
            }
            for (size_t k = 0; k < d->file_count; k++)
                if (strcmp(d->files[k].path, path) == 0) {
                    free(content);
                    return rt_fail(err, "%s/" POLICY_NAME ": injection file %.200s is listed twice", origin, path);
                }
            d->files[d->file_count].path = strdup(path);
            d->files[d->file_count++].content = content;
        }
    }
    return 0;
}

/* The volumes: each top-level entry (name, fspf_path, fspf_key) with its path where the service
 * (or its image) mounts it. */
static int read_volumes(json_t *doc, json_t *service, const char *origin, struct deployment *d, struct rt_error *err)
{
    json_t *vols = json_object_get(doc, "volumes");
    json_t *mounts[2] = {json_object_get(service, "volumes"), NULL};
    json_t *images = json_object_get(doc, "images");
    for (size_t i = 0; i < json_array_size(images) && !mounts[1]; i++)
        mounts[1] = json_object_get(json_array_get(images, i), "volumes");
    if (vols && !json_is_array(vols)) return rt_fail(err, "%s/" POLICY_NAME ": volumes is not a list", origin);
    d->volumes = calloc(json_array_size(vols) + 1, sizeof *d->volumes);
    for (size_t i = 0; i < json_array_size(vols); i++) {
        json_t *v = json_array_get(vols, i);
        const char *name = json_string_value(json_object_get(v, "name"));
        const char *key = json_string_value(json_object_get(v, "fspf_key"));
        const char *fspf = json_string_value(json_object_get(v, "fspf_path"));
        const char *path = NULL;
        for (int m = 0; m < 2 && !path; m++)
            for (size_t j = 0; j < json_array_size(mounts[m]); j++) {
                json_t *mount = json_array_get(mounts[m], j);
                const char *n = json_string_value(json_object_get(mount, "name"));
                if (name && n && strcmp(n, name) == 0) path = json_string_value(json_object_get(mount, "path"));
            }
        if (!name || !*name || strchr(name, '/') || name[0] == '.' || !key || !absolute_path(path) ||
            (fspf && !absolute_path(fspf)))
            return rt_fail(err, "%s/" POLICY_NAME ": volume entry %zu needs a name (no '/', not starting with '.'), "
                                "an fspf_key and a path where the service mounts it", origin, i);
        struct dep_volume *dv = &d->volumes[d->volume_count++];
        dv->name = strdup(name);
        dv->path = strdup(path);
        dv->fspf_path = fspf ? strdup(fspf) : NULL;
        dv->fspf_key = strdup(key);
    }
    return 0;
}

static int read_measurements(json_t *service, json_t *sconify, const char *origin, struct deployment *d,
                             struct rt_error *err)
{
    json_t *mrs = json_object_get(service, "mrenclaves");
    json_t *ms = json_object_get(sconify, "measurements");
    if (!json_is_array(mrs) || !json_array_size(mrs))
        return rt_fail(err, "%s/" POLICY_NAME ": services[0].mrenclaves lists no measurement", origin);
    d->mrenclaves = calloc(json_array_size(mrs), sizeof *d->mrenclaves);
    for (size_t i = 0; i < json_array_size(mrs); i++, d->mrenclave_count++)
        if (digest_hex(json_array_get(mrs, i), d->mrenclaves[i]) != 0)
            return rt_fail(err, "%s/" POLICY_NAME ": services[0].mrenclaves entry %zu is not 64 hex digits", origin, i);
    if (!json_is_array(ms) || !json_array_size(ms))
        return rt_fail(err, "%s/" POLICY_NAME ": sconify.measurements lists no measurement (each accepted version "
                            "binds its executable and runtime config there)", origin);
    d->measurements = calloc(json_array_size(ms), sizeof *d->measurements);
    for (size_t i = 0; i < json_array_size(ms); i++, d->measurement_count++) {
        json_t *m = json_array_get(ms, i);
        struct dep_measurement *dm = &d->measurements[i];
        if (digest_hex(json_object_get(m, "mrenclave"), dm->mrenclave) != 0 ||
            digest_hex(json_object_get(m, "executable_sha256"), dm->executable_sha256) != 0 ||
            digest_hex(json_object_get(m, "runtime_config_sha256"), dm->runtime_config_sha256) != 0)
            return rt_fail(err, "%s/" POLICY_NAME ": sconify.measurements entry %zu needs mrenclave, "
                                "executable_sha256 and runtime_config_sha256 (64 hex digits each)", origin, i);
    }
    return 0;
}

int deployment_from_json(void *policy, void *secrets, const char *origin, struct deployment *d, struct rt_error *err)
{
    memset(d, 0, sizeof *d);
    json_t *doc = policy;
    json_t *services = json_object_get(doc, "services");
    json_t *service = json_array_get(services, 0);
    json_t *sconify = json_object_get(doc, "sconify");
    json_t *state = json_object_get(sconify, "state");
    const char *name = json_string_value(json_object_get(doc, "name"));
    if (!json_is_object(doc) || !name || !*name || strchr(name, '/') || name[0] == '.' || !json_is_object(service))
        return rt_fail(err, "%s/" POLICY_NAME " is not a deployment policy (name, services)", origin);
    if (json_array_size(services) > 1)
        return rt_fail(err, "%s/" POLICY_NAME ": more than one service; an image runs one", origin);
    d->name = strdup(name);
    json_t *command = json_object_get(service, "command");
    if (command && !json_is_string(command))
        return rt_fail(err, "%s/" POLICY_NAME ": services[0].command is not a string", origin);
    d->command = string_field(service, "command");
    d->pwd = string_field(service, "pwd");
    if (json_object_get(service, "pwd") && !absolute_path(d->pwd))
        return rt_fail(err, "%s/" POLICY_NAME ": services[0].pwd is not an absolute path", origin);
    if (state && !json_is_object(state))
        return rt_fail(err, "%s/" POLICY_NAME ": sconify.state is not a mapping (dir: or etcd:)", origin);
    json_t *spec = state ? json_deep_copy(state) : json_pack("{s:s}", "dir", DEFAULT_STATE_DIR);
    json_object_set_new(spec, "name", json_string(d->name));  /* the store checks the rest when it opens */
    d->state = json_dumps(spec, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(spec);
    if (read_measurements(service, sconify, origin, d, err) != 0 ||
        read_environment(json_object_get(service, "environment"), origin, d, err) != 0 ||
        read_files(json_object_get(doc, "images"), json_string_value(json_object_get(service, "image_name")), origin,
                   d, err) != 0 ||
        read_volumes(doc, service, origin, d, err) != 0 ||
        read_secrets(json_object_get(doc, "secrets"), secrets, origin, d, err) != 0)
        return -1;
    return 0;
}

int deployment_load(const char *dir, struct deployment *d, struct rt_error *err)
{
    memset(d, 0, sizeof *d);
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/" POLICY_NAME, dir);
    int e = read_text(path, &text, &len);
    if (e) return rt_fail(err, "cannot read the deployment policy %s (%s)", path, strerror(e));
    json_t *policy = yaml_to_json(text, len, path, err);
    free(text);
    if (!policy) return -1;
    snprintf(path, sizeof path, "%s/" SECRETS_NAME, dir);
    json_error_t jerr;
    json_t *secrets = NULL;
    if ((e = read_text(path, &text, &len)) != 0 && e != ENOENT) {
        json_decref(policy);
        return rt_fail(err, "cannot read the deployment's secrets %s (%s); make it readable by the container's user",
                       path, strerror(e));
    }
    if (e == 0) {
        secrets = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        OPENSSL_cleanse(text, len);
        free(text);
        if (!secrets) {
            json_decref(policy);
            return rt_fail(err, "%s is not valid JSON (line %d)", path, jerr.line);
        }
    }
    int rc = deployment_from_json(policy, secrets, dir, d, err);
    json_decref(policy);
    json_decref(secrets);  /* jansson does not clear the strings it frees */
    if (rc != 0) deployment_free(d);
    return rc;
}

static void free_list(char **list, size_t n)
{
    for (size_t i = 0; list && i < n; i++) free(list[i]);
    free(list);
}

void deployment_free(struct deployment *d)
{
    free(d->name);
    free(d->mrenclaves);
    free(d->measurements);
    free(d->command);
    free(d->pwd);
    free_list(d->env_names, d->env_count);
    free_list(d->env_values, d->env_count);
    for (size_t i = 0; i < d->file_count; i++) {
        free(d->files[i].path);
        free(d->files[i].content);
    }
    free(d->files);
    for (size_t i = 0; i < d->volume_count; i++) {
        free(d->volumes[i].name);
        free(d->volumes[i].path);
        free(d->volumes[i].fspf_path);
        free(d->volumes[i].fspf_key);
    }
    free(d->volumes);
    for (size_t i = 0; i < d->secret_count; i++) {
        struct dep_secret *s = &d->secrets[i];
        if (s->value) OPENSSL_cleanse(s->value, s->value_len);
        if (s->private_key) OPENSSL_cleanse(s->private_key, strlen(s->private_key));
        free(s->name);
        free(s->value);
        free(s->certificate);
        free(s->private_key);
    }
    free(d->secrets);
    free(d->state);
    memset(d, 0, sizeof *d);
}

int deployment_accepts(const struct deployment *d, const char *mrenclave, const char *executable_sha256,
                       const char *runtime_config_sha256)
{
    int listed = 0;
    for (size_t i = 0; i < d->mrenclave_count; i++) listed |= strcmp(d->mrenclaves[i], mrenclave) == 0;
    if (!listed) return 0;
    for (size_t i = 0; i < d->measurement_count; i++) {
        const struct dep_measurement *m = &d->measurements[i];
        if (strcmp(m->mrenclave, mrenclave) == 0 && strcmp(m->executable_sha256, executable_sha256) == 0 &&
            strcmp(m->runtime_config_sha256, runtime_config_sha256) == 0)
            return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ substitution */

struct buffer {
    char *data;
    size_t len, cap;
};

static int append(struct buffer *b, const void *bytes, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *bigger = malloc(cap);
        if (!bigger) return -1;
        if (b->data) {
            memcpy(bigger, b->data, b->len);
            OPENSSL_cleanse(b->data, b->cap);  /* it may hold a secret already */
            free(b->data);
        }
        b->data = bigger;
        b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static void buffer_clear(struct buffer *b)
{
    if (b->data) OPENSSL_cleanse(b->data, b->cap);
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* The value of one reference (inner: what stands between $$SCONE:: and $$) appended to b. */
static int substitute_one(const struct deployment *d, const char *inner, size_t n, struct buffer *b,
                          struct rt_error *err)
{
    enum { PLAIN, HEX, BASE64, CRT, KEY } form = PLAIN;
    size_t name_len = n;
    const struct dep_secret *s = NULL;
    if (n > 4 && memcmp(inner + n - 4, ":hex", 4) == 0) form = HEX, name_len = n - 4;
    else if (n > 7 && memcmp(inner + n - 7, ":base64", 7) == 0) form = BASE64, name_len = n - 7;
    else if (n > 4 && (memcmp(inner + n - 4, ".crt", 4) == 0 || memcmp(inner + n - 4, ".key", 4) == 0) &&
             (s = find_secret(d, inner, n - 4)) != NULL && s->kind == SECRET_X509)
        form = inner[n - 3] == 'c' ? CRT : KEY, name_len = n - 4;
    s = find_secret(d, inner, name_len);
    int shown = name_len > 128 ? 128 : (int)name_len;
    if (!s) return rt_fail(err, "the policy refers to secret %.*s, which it does not declare (secrets:)", shown, inner);
    if (!s->has_value)
        return rt_fail(err, "secret %s has no value in " SECRETS_NAME "; mount the secrets.json written with this "
                            "policy (sconify deploy init)", s->name);
    switch (form) {
    case PLAIN:
        if (s->kind != SECRET_ASCII)
            return rt_fail(err, "secret %s is %s: refer to it as $$SCONE::%s:hex$$ or :base64%s", s->name,
                           s->kind == SECRET_BINARY ? "binary (it may hold NUL bytes)" : "an x509 secret", s->name,
                           s->kind == SECRET_X509 ? " (or .crt, .key)" : "");
        return append(b, s->value, s->value_len);
    case HEX:
    case BASE64: {
        if (s->kind == SECRET_X509)
            return rt_fail(err, "secret %s is an x509 secret: refer to it as $$SCONE::%s.crt$$ or .key", s->name, s->name);
        size_t cap = form == HEX ? s->value_len * 2 + 1 : 4 * ((s->value_len + 2) / 3) + 1;
        char *enc = malloc(cap);
        if (!enc) return rt_fail(err, "out of memory");
        if (form == HEX) hex_encode(s->value, s->value_len, enc);
        else EVP_EncodeBlock((unsigned char *)enc, s->value, (int)s->value_len);
        int rc = append(b, enc, strlen(enc));
        OPENSSL_cleanse(enc, cap);
        free(enc);
        return rc;
    }
    case CRT:
        return append(b, s->certificate, strlen(s->certificate));
    case KEY:
        return append(b, s->private_key, strlen(s->private_key));
    }
    return -1;
}

int deployment_substitute(const struct deployment *d, const char *text, char **out, struct rt_error *err)
{
    struct buffer b = {0};
    const char *p = text;
    if (append(&b, "", 0) != 0) return rt_fail(err, "out of memory");
    for (;;) {
        const char *ref = strstr(p, REF_OPEN);
        if (!ref) break;
        const char *inner = ref + strlen(REF_OPEN);
        const char *end = strstr(inner, REF_CLOSE);
        if (!end) {
            buffer_clear(&b);
            return rt_fail(err, "a secret reference $$SCONE::... is not closed by $$");
        }
        if (append(&b, p, (size_t)(ref - p)) != 0 || substitute_one(d, inner, (size_t)(end - inner), &b, err) != 0) {
            buffer_clear(&b);
            return -1;
        }
        p = end + strlen(REF_CLOSE);
    }
    if (append(&b, p, strlen(p)) != 0) {
        buffer_clear(&b);
        return rt_fail(err, "out of memory");
    }
    *out = b.data;
    return 0;
}

int deployment_check_references(const struct deployment *d, struct rt_error *err)
{
    size_t n = d->env_count + d->file_count + d->volume_count + 1;
    for (size_t i = 0; i < n; i++) {
        const char *text = i < d->env_count ? d->env_values[i]
                         : i < d->env_count + d->file_count ? d->files[i - d->env_count].content
                         : i < n - 1 ? d->volumes[i - d->env_count - d->file_count].fspf_key
                         : d->command ? d->command : "";
        char *out;
        if (deployment_substitute(d, text, &out, err) != 0) return -1;
        OPENSSL_cleanse(out, strlen(out));
        free(out);
    }
    return 0;
}

/* ------------------------------------------------------------------ the command */

void free_words(char **words)
{
    for (char **w = words; w && *w; w++) free(*w);
    free(words);
}

int command_split(const char *text, char ***words, size_t *count, int *host_args, struct rt_error *err)
{
    size_t cap = strlen(text) / 2 + 2, n = 0;
    char **list = calloc(cap + 1, sizeof *list);
    char *word = malloc(strlen(text) + 1);
    if (!list || !word) {
        free(list);
        free(word);
        return rt_fail(err, "out of memory");
    }
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        size_t len = 0;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n') {
            if (*p == '\'') {
                const char *close = strchr(p + 1, '\'');
                if (!close) goto unbalanced;
                memcpy(word + len, p + 1, (size_t)(close - p - 1));
                len += (size_t)(close - p - 1);
                p = close + 1;
            } else if (*p == '"') {
                for (p++; *p && *p != '"'; p++) {
                    if (*p == '\\' && (p[1] == '"' || p[1] == '\\' || p[1] == '$' || p[1] == '`')) p++;
                    word[len++] = *p;
                }
                if (*p != '"') goto unbalanced;
                p++;
            } else if (*p == '\\' && p[1]) {
                word[len++] = p[1];
                p += 2;
            } else {
                word[len++] = *p++;
            }
        }
        list[n++] = strndup(word, len);
    }
    free(word);
    *host_args = n > 0 && strcmp(list[n - 1], "@@1") == 0;
    if (*host_args) {
        free(list[--n]);
        list[n] = NULL;
    }
    *words = list;
    *count = n;
    return 0;
unbalanced:
    free(word);
    free_words(list);
    return rt_fail(err, "the policy's command has an unbalanced quote");
}
