/* A YAML document (a deployment's policy.yaml) as a jansson json_t, so that the launcher reads
 * it with the same code as its JSON files. Parsed with libyaml (Debian's static libyaml.a).
 *
 * Plain scalars are typed by the YAML 1.2 core schema: null (null, Null, NULL, ~, empty),
 * booleans (true/True/TRUE, false/False/FALSE), integers (decimal, 0o octal, 0x hex), floats;
 * every other scalar, and every quoted or block scalar, is a string. An integer that does not fit
 * a json_int_t, or a float that is not finite, stays a string (a hex digest made only of digits
 * is still a digest). Tags are ignored (libyaml's loader does not tell an explicit !!str from a
 * plain scalar's default): quote a string that looks like a number. YAML 1.1's yes/no/on/off
 * are strings.
 * Aliases are followed (at most YAMLJSON_MAX_NODES nodes in all, YAMLJSON_MAX_DEPTH deep: a
 * "billion laughs" document is refused); merge keys (<<) are not applied. A mapping key must be
 * a scalar, and unique. One document per stream. */
#ifndef SCONIFY_YAMLJSON_H
#define SCONIFY_YAMLJSON_H

#include <stddef.h>

#include "util.h"

#define YAMLJSON_MAX_NODES 100000
#define YAMLJSON_MAX_DEPTH 64

/* The document in text (len bytes) as a new json_t * (returned as void *, to json_decref), or
 * NULL and one line in err naming origin and the line of the problem. */
void *yaml_to_json(const char *text, size_t len, const char *origin, struct rt_error *err);

#endif
