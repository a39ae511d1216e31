/* The two JSON documents the runtime reads: the image's runtime config (written by
 * sconify-image into the runtime layer, not secret) and the keys file (keys.json, schema
 * sconify.keys/v2: the stand-in for what an attestation service releases to the measured
 * enclave). The runtime also records each volume's new fspf tag in the keys file. */
#ifndef SCONIFY_CONFIG_H
#define SCONIFY_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include "measure.h"
#include "util.h"

#define RUNTIME_CONFIG_SCHEMA "sconify.runtime/v1"
#define KEYS_SCHEMA "sconify.keys/v2"
#define DEFAULT_KEYS_PATH "/run/secrets/sconify/keys.json"
#define VOLUME_FSPF_NAME ".sconify.fspf"
/* The freshness state of a volume that is the container's own copy (no mount at its path): in
 * the volume's directory, so it lives and dies with that copy (docs/runtime.md, "Freshness"). */
#define VOLUME_STATE_NAME ".sconify.state"
#define STATE_SCHEMA "sconify.state/v1"
/* Taken by every commit to a volume (flock, exclusive) and by a process reloading its fspf
 * (shared): the processes of a service commit one at a time, each onto the latest fspf. */
#define VOLUME_LOCK_NAME ".sconify.lock"
/* An ephemeral region's fspf for one start of the service: <region>/.sconify.fspf.<start id>,
 * encrypted with a key the launcher makes for that start and grants (docs/runtime.md,
 * "Ephemeral regions"). */
#define EPHEMERAL_FSPF_PREFIX ".sconify.fspf."
/* The largest grant the shield reads (keys, runtime config, injection files): the launcher
 * refuses to start with a larger one rather than start a service that would find no grant. */
#define GRANT_MAX_SIZE (1 << 20)
/* The descriptor number of the grant (SCONIFY_GRANT): out of the way of the numbers a service
 * uses, below the plaintext cache's connection (700 and above). Each process closes it once it
 * has read it and writes it again there just before an exec of the measured executable
 * (shield/init.c), so the service never sees it among its descriptors. */
#define GRANT_FD 699
/* The prefix of a commit's temporary files (shield/commit.c), hidden from the service: the new
 * stored file DIR/.sconify-tmp.NAME.PID and the new fspf FSPF.sconify-tmp.PID. */
#define HIDDEN_TMP ".sconify-tmp."
/* The temp file a commit of process pid writes path's new stored file to: DIR/.sconify-tmp.NAME.PID. */
void commit_tmp_name(const char *path, long pid, char *out, size_t len);

struct rt_volume {
    char *path;        /* region path, absolute */
    char *fspf_path;   /* <path>/.sconify.fspf */
    uint8_t protection;  /* FSPF_AUTHENTICATED or FSPF_ENCRYPTED */
    int generic;       /* "generic": declared by sconify-image --generic, no fspf in the image: each
                        * deployment initialises it with its own key (docs/deploy.md) */
};

struct rt_config {
    char *executable;               /* the measured executable, absolute */
    struct sgx_params params;
    char mrenclave[65];             /* what the conversion measured (hex) */
    char executable_sha256[65];     /* SHA-256 of the whole executable file (hex) */
    size_t volume_count;
    struct rt_volume *volumes;      /* sorted by path */
    size_t ephemeral_count;
    char **ephemeral;               /* ephemeral region paths */
    size_t script_count;
    char **scripts;                 /* embedded scripts kept on disk (entrypoint, console scripts) */
    size_t code_root_count;
    char **code_roots;              /* sealed: only the embedfs is there (sorted; none in older configs) */
    size_t code_left_count;
    char **code_left;               /* files under a code root left on disk as not code (sorted) */
    size_t code_shallow_count;
    char **code_shallow;            /* shallow code roots (a system dir on sys.path): code names sealed */
    size_t code_extension_count;
    char **code_extensions;         /* the names that are code there (".py", ".pth", ".so"...) */
    /* The policy (docs/runtime.md, "The policy"): what the keys are granted to. */
    size_t command_count;
    char **command;                 /* argv after `--` as the conversion recorded it */
    size_t service_command_count;
    char **service_command;         /* what the measured executable runs with, the scripts crossed
                                     * (the session's command); none in older configs */
    int allow_args;                 /* the host may append arguments after the command */
    size_t env_count;
    char **env_names;               /* the image's environment (PATH default added), sorted */
    char **env_values;
    size_t allow_env_count;
    char **allow_env;               /* variables the host may set or override */
    char *source;                   /* the config's bytes as read, NUL-terminated */
    size_t source_len;
    char source_sha256[65];         /* SHA-256 of source (hex): the keys file binds it */
};

struct rt_key {
    char *path;                  /* volume (region) path */
    unsigned char key[32];       /* fspf key */
    unsigned char tag[16];       /* the recorded fspf tag */
    int has_next;                /* a commit was under way: its tag is accepted too */
    unsigned char next_tag[16];
    int has_image;               /* "fspf_tag_image": the tag of the image's own copy, never moved */
    unsigned char image_tag[16];
    int container_copy;          /* in a grant only ("container_copy"): the volume is the container's
                                  * own copy; its tags go to its state file, not to the keys file */
    char *name;                  /* "name": the volume's name in a policy, its record's name in the
                                  * keys' state store; NULL: the record is named by the path */
};

struct rt_keys {
    char mrenclave[65];
    char executable_sha256[65];  /* "" when the keys file does not record it */
    int has_code_key;            /* "code_key": the key of the embedfs's encrypted members */
    unsigned char code_key[32];
    char runtime_config_sha256[65];  /* the runtime config the keys belong to; "" when not recorded */
    size_t count;
    struct rt_key *keys;
    char *state;                 /* "state": where the volumes' tags are kept (a statestore.h spec, compact
                                  * JSON), NULL: in the keys file itself */
};

int config_load(const char *path, struct rt_config *cfg, struct rt_error *err);
/* The same from the config's bytes (text, NUL-terminated; origin names it in messages). */
int config_parse(const char *text, size_t len, const char *origin, struct rt_config *cfg, struct rt_error *err);
void config_free(struct rt_config *cfg);

/* Load keys.json; messages never quote the file's content. */
int keys_load(const char *path, struct rt_keys *keys, struct rt_error *err);
/* The same from a parsed keys document (a json_t *; origin names it in messages). */
int keys_from_json(void *doc, const char *origin, struct rt_keys *keys, struct rt_error *err);
/* The keys as a keys document (a new json_t *, to json_decref), or NULL. */
void *keys_to_json(const struct rt_keys *keys);
/* Build keys from SCONE's debug-mode variables for a single volume (SCONE_FSPF, _KEY, _TAG). */
int keys_from_scone_env(const struct rt_config *cfg, const char *fspf, const char *key_hex, const char *tag_hex,
                        struct rt_keys *keys, struct rt_error *err);
void keys_free(struct rt_keys *keys);
struct rt_key *keys_find(struct rt_keys *keys, const char *volume_path);

/* Record a volume's tag in the keys file, atomically (write a temp file beside it, rename; with
 * sync, the temp file fsynced before and the directory after). next=1 records a commit under
 * way ("fspf_tag_next", the old tag stays valid); next=0 makes tag the recorded one and drops
 * any "fspf_tag_next". */
/* The name of a volume's record in a state store: its policy name, else its path. */
const char *key_record_name(const struct rt_key *key);

int keys_record_tag(const char *keys_path, const char *volume_path, const unsigned char tag[16], int next,
                    int sync, struct rt_error *err);

/* The freshness state of a container's own copy of a volume (<volume>/.sconify.state): the tag
 * its fspf carries and, while a commit is under way, the next one, authenticated with a MAC keyed
 * from the volume's fspf key (a party without the keys cannot write one). */
struct rt_state {
    unsigned char tag[16];
    int has_next;
    unsigned char next_tag[16];
};
/* 1 and st filled if volume_path holds a state file written with key for that volume; 0 if it
 * holds none or one that is not (unreadable, malformed, another key or volume). */
int state_load(const char *volume_path, const unsigned char key[32], struct rt_state *st);
/* Record tag (and next, a commit under way, if not NULL) in the state file, atomically (synced
 * as keys_record_tag is). */
int state_record(const char *volume_path, const unsigned char key[32], const unsigned char tag[16],
                 const unsigned char *next, int sync, struct rt_error *err);

/* The freshness rule (docs/runtime.md, "Freshness"): the recorded tag at which an fspf carrying
 * tag (its last 16 bytes, NULL if it has none) is accepted, a pointer into key or state, or NULL
 * (a rollback, or another deployment's). A mounted volume: the key's tag, or its next one (a
 * commit under way). The container's own copy: the key's tag, the image's, or the tag or next
 * tag its state file records (state NULL: none). The launcher and the shield both judge by it. */
const unsigned char *fresh_tag(const struct rt_key *key, int container_copy, const struct rt_state *state,
                               const unsigned char *tag);

#endif
