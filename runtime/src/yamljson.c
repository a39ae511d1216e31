#include "yamljson.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

struct convert {
    yaml_document_t *doc;
    size_t nodes;        /* converted so far (aliases count each time they are followed) */
    const char *origin;
    struct rt_error *err;
};

static int all_of(const char *s, size_t len, const char *set)
{
    if (!len) return 0;
    for (size_t i = 0; i < len; i++)
        if (!strchr(set, s[i])) return 0;
    return 1;
}

static int one_of(const char *s, const char *const *words)
{
    for (; *words; words++)
        if (strcmp(s, *words) == 0) return 1;
    return 0;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static int core_float(const char *s)
{
    const char *p = s + (*s == '-' || *s == '+');
    size_t digits = strspn(p, "0123456789");
    p += digits;
    if (*p == '.') {
        size_t frac = strspn(p + 1, "0123456789");
        if (!digits && !frac) return 0;
        p += 1 + frac;
    } else if (!digits) {
        return 0;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        p += *p == '-' || *p == '+';
        size_t exp = strspn(p, "0123456789");
        if (!exp) return 0;
        p += exp;
    }
    return *p == '\0';
}

/* A plain scalar, typed by the YAML 1.2 core schema (see yamljson.h). */
static json_t *plain_scalar(const char *s, size_t len)
{
    static const char *const nulls[] = {"null", "Null", "NULL", "~", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    if (strlen(s) != len) return json_stringn(s, len);  /* a NUL inside: a string (jansson may refuse it) */
    if (len == 0 || one_of(s, nulls)) return json_null();
    if (one_of(s, trues)) return json_true();
    if (one_of(s, falses)) return json_false();
    const char *digits = s + (*s == '-' || *s == '+');
    int base = 0;
    const char *body = NULL;
    if (all_of(digits, strlen(digits), "0123456789")) base = 10, body = s;
    else if (strncmp(s, "0o", 2) == 0 && all_of(s + 2, len - 2, "01234567")) base = 8, body = s + 2;
    else if (strncmp(s, "0x", 2) == 0 && all_of(s + 2, len - 2, "0123456789abcdefABCDEF")) base = 16, body = s + 2;
    if (base) {
        errno = 0;
        char *end;
        long long v = strtoll(body, &end, base);
        if (errno == 0 && *end == '\0') return json_integer((json_int_t)v);
        return json_stringn(s, len);  /* out of range: kept as written */
    }
    if (core_float(s) && isfinite(strtod(s, NULL))) return json_real(strtod(s, NULL));
    return json_stringn(s, len);  /* (.inf and .nan too: JSON has no such numbers) */
}

static json_t *convert_node(struct convert *c, yaml_node_t *node, int depth)
{
    if (!node) {
        rt_fail(c->err, "%s: a YAML node refers to nothing", c->origin);
        return NULL;
    }
    if (++c->nodes > YAMLJSON_MAX_NODES || depth > YAMLJSON_MAX_DEPTH) {
        rt_fail(c->err, "%s: the YAML document is too large or too deep (aliases expanded: at most %d nodes, %d "
                        "levels)", c->origin, YAMLJSON_MAX_NODES, YAMLJSON_MAX_DEPTH);
        return NULL;
    }
    switch (node->type) {
    case YAML_SCALAR_NODE: {
        const char *v = (const char *)node->data.scalar.value;
        size_t len = node->data.scalar.length;
        json_t *out = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? plain_scalar(v, len)
                                                                          : json_stringn(v, len);
        if (!out)
            rt_fail(c->err, "%s line %zu: a scalar that is not valid UTF-8 text", c->origin,
                    node->start_mark.line + 1);
        return out;
    }
    case YAML_SEQUENCE_NODE: {
        json_t *array = json_array();
        for (yaml_node_item_t *item = node->data.sequence.items.start; item < node->data.sequence.items.top; item++) {
            json_t *value = convert_node(c, yaml_document_get_node(c->doc, *item), depth + 1);
            if (!value) {
                json_decref(array);
                return NULL;
            }
            json_array_append_new(array, value);
        }
        return array;
    }
    case YAML_MAPPING_NODE: {
        json_t *object = json_object();
        for (yaml_node_pair_t *pair = node->data.mapping.pairs.start; pair < node->data.mapping.pairs.top; pair++) {
            yaml_node_t *key = yaml_document_get_node(c->doc, pair->key);
            if (!key || key->type != YAML_SCALAR_NODE || strlen((const char *)key->data.scalar.value) != key->data.scalar.length) {
                rt_fail(c->err, "%s line %zu: a mapping key that is not a plain text scalar", c->origin,
                        key ? key->start_mark.line + 1 : 0);
                json_decref(object);
                return NULL;
            }
            const char *name = (const char *)key->data.scalar.value;
            if (json_object_get(object, name)) {
                rt_fail(c->err, "%s line %zu: the key %.100s appears twice in one mapping", c->origin,
                        key->start_mark.line + 1, name);
                json_decref(object);
                return NULL;
            }
            json_t *value = convert_node(c, yaml_document_get_node(c->doc, pair->value), depth + 1);
            if (!value || json_object_set_new(object, name, value) != 0) {
                if (value) rt_fail(c->err, "%s line %zu: a key that is not valid UTF-8", c->origin, key->start_mark.line + 1);
                json_decref(object);
                return NULL;
            }
        }
        return object;
    }
    default:
        rt_fail(c->err, "%s: an empty YAML node", c->origin);
        return NULL;
    }
}

void *yaml_to_json(const char *text, size_t len, const char *origin, struct rt_error *err)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        rt_fail(err, "%s: cannot start the YAML parser", origin);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rt_fail(err, "%s line %zu: not valid YAML (%s)", origin, parser.problem_mark.line + 1,
                parser.problem ? parser.problem : "parse error");
        yaml_parser_delete(&parser);
        return NULL;
    }
    json_t *out = NULL;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        rt_fail(err, "%s: the YAML stream holds no document", origin);
    } else {
        struct convert c = {&doc, 0, origin, err};
        out = convert_node(&c, root, 0);
    }
    yaml_document_delete(&doc);
    if (out) {  /* a second document: refused, not silently ignored */
        yaml_document_t next;
        if (!yaml_parser_load(&parser, &next)) {
            rt_fail(err, "%s line %zu: not valid YAML (%s)", origin, parser.problem_mark.line + 1,
                    parser.problem ? parser.problem : "parse error");
            json_decref(out);
            out = NULL;
        } else {
            if (yaml_document_get_root_node(&next)) {
                rt_fail(err, "%s: more than one YAML document; a policy is one", origin);
                json_decref(out);
                out = NULL;
            }
            yaml_document_delete(&next);
        }
    }
    yaml_parser_delete(&parser);
    return out;
}
