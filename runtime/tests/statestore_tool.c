/* statestore_tool: drives runtime/src/statestore.c for tests/test_statestore.py.
 *
 *   statestore_tool SPEC_JSON POLICY read VOLUME
 *       prints "absent", or "TAG" / "TAG next NEXT" (hex)
 *   statestore_tool SPEC_JSON POLICY cas VOLUME EXPECTED NEW [--wait]
 *       EXPECTED: "-" (absent) or TAG[:NEXT]; NEW: TAG[:NEXT]. --wait: read one line from stdin
 *       first (a test releases several racing writers at once). Prints "swapped" or "moved".
 *
 * Exit: 0 read / swapped, 3 moved (someone else moved the record), 2 an error
 * ("statestore_tool: <message>" on stderr). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "statestore.h"

static int parse_record(const char *text, struct store_record *rec)
{
    memset(rec, 0, sizeof *rec);
    if (strlen(text) != 32 && strlen(text) != 65) return -1;
    char tag[33];
    memcpy(tag, text, 32);
    tag[32] = '\0';
    if (hex_decode(tag, rec->tag, 16) != 0) return -1;
    if (strlen(text) == 65) {
        if (text[32] != ':' || hex_decode(text + 33, rec->next_tag, 16) != 0) return -1;
        rec->has_next = 1;
    }
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: statestore_tool SPEC_JSON POLICY read VOLUME\n"
                    "       statestore_tool SPEC_JSON POLICY cas VOLUME EXPECTED NEW [--wait]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 5) return usage();
    json_t *spec = store_spec_parse(argv[1]);
    struct store st;
    struct rt_error err = {{0}};
    if (!spec || store_open(spec, argv[2], &st, &err) != 0) {
        fprintf(stderr, "statestore_tool: %s\n", spec ? err.msg : "SPEC_JSON is not JSON");
        return 2;
    }
    json_decref(spec);
    const char *volume = argv[4];
    int rc = 2;
    if (strcmp(argv[3], "read") == 0 && argc == 5) {
        struct store_record rec;
        int found = store_read(&st, volume, &rec, &err);
        if (found == 0) printf("absent\n");
        if (found == 1) {
            char tag[33], next[33];
            hex_encode(rec.tag, 16, tag);
            hex_encode(rec.next_tag, 16, next);
            if (rec.has_next) printf("%s next %s\n", tag, next);
            else printf("%s\n", tag);
        }
        rc = found < 0 ? 2 : 0;
    } else if (strcmp(argv[3], "cas") == 0 && (argc == 7 || (argc == 8 && strcmp(argv[7], "--wait") == 0))) {
        struct store_record expected, new_record;
        int absent = strcmp(argv[5], "-") == 0;
        if ((!absent && parse_record(argv[5], &expected) != 0) || parse_record(argv[6], &new_record) != 0) {
            store_close(&st);
            return usage();
        }
        if (argc == 8) {
            char line[16];
            if (!fgets(line, sizeof line, stdin)) return 2;
        }
        int swapped = store_cas(&st, volume, absent ? NULL : &expected, &new_record, &err);
        if (swapped == STORE_SWAPPED) printf("swapped\n");
        if (swapped == STORE_MOVED) printf("moved\n");
        rc = swapped == STORE_SWAPPED ? 0 : swapped == STORE_MOVED ? 3 : 2;
        if (swapped == STORE_MOVED) fprintf(stderr, "statestore_tool: %s\n", err.msg);
    } else {
        store_close(&st);
        return usage();
    }
    if (rc == 2) fprintf(stderr, "statestore_tool: %s\n", err.msg);
    store_close(&st);
    return rc;
}
