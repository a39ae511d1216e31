/* The freshness tags of a deployment's volumes (policy mode, docs/deploy.md "Freshness state"):
 * one state file per volume, <dir>/<policy name>/<volume name>.json (sconify.state/v1, its MAC
 * keyed from the volume's key and bound to "<policy>/<volume>"), written atomically under a lock
 * of <dir>/<policy name>.
 *
 * THE SEAM for the state store (statestore.c: a directory or etcd, moved by compare-and-swap):
 * the launcher and the shield read and record a deployment volume's tag only through these two
 * functions, called from launcher.c check_policy_volumes (read; record a new volume's tag, an
 * interrupted initialisation's, a promoted commit's), shield/init.c load_fspf (read: what other
 * processes committed) and shield/commit.c record_tag (record "next" before the renames, then
 * the current tag). Where the store is comes to the shield in the grant ("state": {"dir",
 * "policy"}, each key's "name"). Replacing these bodies moves policy mode onto the store;
 * keys.json mode does not use them. */
#ifndef SCONIFY_TAGSTATE_H
#define SCONIFY_TAGSTATE_H

#include "config.h"

/* 1 and st filled if the volume's tag is recorded; 0 if nothing is recorded for it (a new
 * volume); -1 and one line if a state file is there but is not this volume's with this key (it
 * was changed, or it belongs to another deployment's key). */
int tag_state_read(const char *dir, const char *policy, const char *volume, const unsigned char key[32],
                   struct rt_state *st, struct rt_error *err);

/* Record tag as the volume's current one and, if next is not NULL, next as a commit under way
 * (the current one stays valid until a record without next). <dir>/<policy> is created (0700)
 * when missing. 0, or -1 and one line. */
int tag_state_record(const char *dir, const char *policy, const char *volume, const unsigned char key[32],
                     const unsigned char tag[16], const unsigned char *next, struct rt_error *err);

#endif
