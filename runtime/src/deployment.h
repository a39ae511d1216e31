/* A deployment's policy (docs/deploy.md, "The runtime with a policy"): policy.yaml (a SCONE
 * session, language 0.3, plus a `sconify` block) and secrets.json (the secret values), read from
 * /run/secrets/sconify/ or $SCONIFY_POLICY. What the launcher needs of them: the measurements
 * the deployment accepts, the command, pwd and environment, the injection files, the volumes'
 * keys, the state directory; and the substitution of secret references ($$SCONE::NAME$$...). */
#ifndef SCONIFY_DEPLOYMENT_H
#define SCONIFY_DEPLOYMENT_H

#include <stddef.h>

#include "util.h"

#define DEFAULT_POLICY_DIR "/run/secrets/sconify"
#define POLICY_NAME "policy.yaml"
#define SECRETS_NAME "secrets.json"
#define SECRETS_SCHEMA "sconify.secrets/v1"
#define DEFAULT_STATE_DIR "/var/lib/sconify"

enum { SECRET_ASCII, SECRET_BINARY, SECRET_X509 };

struct dep_secret {
    char *name;
    int kind;
    int has_value;            /* secrets.json (or the policy's own `value`) gives it */
    unsigned char *value;     /* ascii: its text; binary: its bytes (value_len) */
    size_t value_len;
    char *certificate;        /* x509: PEM */
    char *private_key;        /* x509: PEM */
};

struct dep_measurement {
    char mrenclave[65];
    char executable_sha256[65];
    char runtime_config_sha256[65];
};

struct dep_volume {
    char *name;               /* the policy's volume name (the state is kept under it) */
    char *path;               /* where the service mounts it */
    char *fspf_path;          /* NULL: <path>/.sconify.fspf */
    char *fspf_key;           /* as written: a secret reference or 64 hex digits */
};

struct dep_file {
    char *path;               /* absolute, normalised */
    char *content;            /* as written: secret references not yet substituted */
};

struct deployment {
    char *name;
    size_t mrenclave_count;
    char (*mrenclaves)[65];   /* services[0].mrenclaves */
    size_t measurement_count;
    struct dep_measurement *measurements;  /* sconify.measurements */
    char *command;            /* services[0].command as written (NULL: none) */
    char *pwd;                /* NULL: the image's */
    size_t env_count;
    char **env_names;         /* services[0].environment, values as written */
    char **env_values;
    size_t file_count;
    struct dep_file *files;   /* images[*].injection_files */
    size_t volume_count;
    struct dep_volume *volumes;
    size_t secret_count;
    struct dep_secret *secrets;
    char *state;              /* sconify.state as a state store spec (statestore.h: {"dir": ...} or
                               * {"etcd": ...}; default {"dir": DEFAULT_STATE_DIR}) with "name": the
                               * policy's name, compact JSON: what a keys file's "state" holds */
};

/* policy.yaml and secrets.json of dir. Messages name the file and the field, never a value. */
int deployment_load(const char *dir, struct deployment *d, struct rt_error *err);
/* The same from parsed documents (json_t *; origin names the directory in messages). */
int deployment_from_json(void *policy, void *secrets, const char *origin, struct deployment *d, struct rt_error *err);
void deployment_free(struct deployment *d);

/* 1 if the deployment accepts this measurement: mrenclave is one of the service's mrenclaves
 * and a measurements entry for it has these executable and runtime config SHA-256s. */
int deployment_accepts(const struct deployment *d, const char *mrenclave, const char *executable_sha256,
                       const char *runtime_config_sha256);

/* text with every secret reference replaced ($$SCONE::NAME$$, :hex, :base64, .crt, .key) into
 * *out (malloc'ed, NUL-terminated; clear it with OPENSSL_cleanse before free). 0, or -1 and one
 * line naming the secret (never a value): undeclared, no value, or a kind the form does not fit. */
int deployment_substitute(const struct deployment *d, const char *text, char **out, struct rt_error *err);

/* Every secret reference of the policy (environment, injection files, volume keys, command)
 * resolves: 0, or -1 and deployment_substitute's line. Checked before anything is started or
 * written, so a missing secret leaves no volume initialised. */
int deployment_check_references(const struct deployment *d, struct rt_error *err);

/* A SCONE command string split into words as a POSIX shell (and Python's shlex) would: blanks
 * separate, '...' is literal, "..." and \ escape. A last word "@@1" is dropped and *host_args set
 * (the host may append its arguments). *words: NULL-terminated, to free with free_words. */
int command_split(const char *text, char ***words, size_t *count, int *host_args, struct rt_error *err);
void free_words(char **words);

#endif
