/* The freshness state store (docs/deploy.md, "Freshness state, apart from the secrets"): where
 * each volume's current fspf tag is kept when the secrets are read-only. Two backends behind one
 * API, chosen by a JSON spec:
 *
 *   {"dir": "/var/lib/sconify"}                        DIR/<policy>/<volume>.json, one file per volume
 *   {"etcd": {"endpoints": ["http://10.0.0.5:2379"], "prefix": "/sconify/a/"}}   key <prefix><volume>
 *
 * A record is a volume's tag and, while a commit is under way, the next one (the two phases of
 * docs/runtime.md, "The commit"). It is moved only by compare-and-swap: store_cas writes `new`
 * only if the stored record is still `expected` (absent for NULL), so two writers that start
 * from the same record cannot both move it. Records hold tags, never keys; no message quotes a
 * record's bytes beyond its tags. */
#ifndef SCONIFY_STATESTORE_H
#define SCONIFY_STATESTORE_H

#include <stddef.h>

#include "util.h"

#define STORE_RECORD_SCHEMA "sconify.freshness/v1"
#define STORE_MAX_ENDPOINTS 8

enum store_kind { STORE_DIR = 1, STORE_ETCD = 2 };

struct store {
    enum store_kind kind;
    char *dir;                 /* STORE_DIR: DIR/<policy>, created on open */
    size_t endpoint_count;     /* STORE_ETCD: tried in order */
    char *endpoints[STORE_MAX_ENDPOINTS];  /* "http://host:port", as given */
    char *prefix;              /* STORE_ETCD: every key starts with it */
    int timeout_ms;            /* STORE_ETCD: per endpoint, connect and exchange each */
    int no_sync;               /* STORE_DIR: a swap is not fsynced (a commit the service did not
                                * ask to be durable: docs/runtime.md, "Durability"); etcd keeps
                                * its own durability */
};

struct store_record {
    unsigned char tag[16];
    int has_next;              /* a commit is under way: next_tag is accepted too */
    unsigned char next_tag[16];
};

/* store_cas's answers besides an error (-1). */
#define STORE_SWAPPED 0        /* the record was `expected` and is now `new` */
#define STORE_MOVED 1          /* the record is not `expected`: someone else moved it; nothing written */

/* Open the store a spec (a json_t *, borrowed) names, for the volumes of the policy policy_name
 * (a file name: letters, digits, '.', '_', '-'). No I/O beyond creating DIR/<policy> (mode
 * 0700) for a dir store. 0, or -1 with err (the spec is malformed, the directory unusable). */
int store_open(const void *spec, const char *policy_name, struct store *st, struct rt_error *err);
void store_close(struct store *st);
/* One line naming the store, for messages: "the state directory /var/lib/sconify/a", "etcd
 * (http://10.0.0.5:2379)". */
void store_describe(const struct store *st, char *out, size_t len);

/* The record of volume (any non-empty name; a volume path such as "/app/data" is fine): 1 and
 * rec filled, 0 absent, -1 error (unreachable, unreadable, malformed: never taken for absent). */
int store_read(struct store *st, const char *volume, struct store_record *rec, struct rt_error *err);
/* Compare-and-swap: STORE_SWAPPED, STORE_MOVED (err says what the record is now), or -1 (err;
 * whether the write happened is unknown only if an etcd endpoint stopped answering mid-way, and
 * then a retry with the same arguments answers SWAPPED if it did). */
int store_cas(struct store *st, const char *volume, const struct store_record *expected,
              const struct store_record *new_record, struct rt_error *err);

/* Make volume's record as last swapped durable (a swap made with no_sync): the dir backend's
 * record file and directory fsynced; etcd keeps its own. 0, or -1 (err). */
int store_sync(struct store *st, const char *volume, struct rt_error *err);

/* The tag rec accepts for an fspf carrying tag (its last 16 bytes, NULL if none): rec's tag, or
 * its next one (a commit under way, promoted at start); NULL: a rollback, or another's volume. */
const unsigned char *store_fresh_tag(const struct store_record *rec, const unsigned char *tag);

/* The store a keys file's "state" block names (compact JSON text: a spec as above, plus "name",
 * the policy name of the keys file's volumes, "default" when absent): store_open's answer. */
int store_open_keys_state(const char *state_json, struct store *st, struct rt_error *err);

/* The spec from a JSON text (for tools and tests): a json_t * to json_decref, or NULL. */
void *store_spec_parse(const char *text);

#endif
