/* Unit tests of src/statestore.c (make check): the dir backend read, create, compare-and-swap,
 * refusals, malformed records, and two processes racing a swap from one old record (exactly one
 * wins, every round); the etcd backend's refusals that need no etcd (a bad spec, an endpoint
 * that does not answer, named in the message). The etcd backend against a real etcd:
 * tests/test_statestore.py. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "check.h"
#include "statestore.h"

static struct store_record record(unsigned char tag, int next)
{
    struct store_record r;
    memset(&r, 0, sizeof r);
    memset(r.tag, tag, 16);
    if (next) {
        r.has_next = 1;
        memset(r.next_tag, next, 16);
    }
    return r;
}

static int open_dir(const char *dir, struct store *st)
{
    char text[4200];
    snprintf(text, sizeof text, "{\"dir\": \"%s\"}", dir);
    json_t *spec = store_spec_parse(text);
    struct rt_error err = {{0}};
    int rc = store_open(spec, "policy-a", st, &err);
    json_decref(spec);
    if (rc != 0) fprintf(stderr, "store_open: %s\n", err.msg);
    return rc;
}

static void test_dir_basics(const char *dir)
{
    struct store st;
    struct rt_error err = {{0}};
    struct store_record got, a = record(1, 0), b = record(1, 2), c = record(2, 0);
    CHECK(open_dir(dir, &st) == 0, "open");
    CHECK(store_read(&st, "app_data", &got, &err) == 0, "absent at first: %s", err.msg);
    CHECK(store_cas(&st, "app_data", NULL, &a, &err) == STORE_SWAPPED, "create: %s", err.msg);
    CHECK(store_read(&st, "app_data", &got, &err) == 1 && memcmp(got.tag, a.tag, 16) == 0 && !got.has_next,
          "read back the created record");
    CHECK(store_cas(&st, "app_data", NULL, &c, &err) == STORE_MOVED, "a second create is refused");
    CHECK(strstr(err.msg, "another writer moved it") && strstr(err.msg, "app_data"), "the refusal says why: %s", err.msg);
    CHECK(store_cas(&st, "app_data", &a, &b, &err) == STORE_SWAPPED, "phase 1 (next): %s", err.msg);
    CHECK(store_read(&st, "app_data", &got, &err) == 1 && got.has_next && memcmp(got.next_tag, b.next_tag, 16) == 0,
          "the next tag is recorded");
    CHECK(store_cas(&st, "app_data", &a, &c, &err) == STORE_MOVED, "a swap from a stale record is refused");
    CHECK(store_cas(&st, "app_data", &b, &c, &err) == STORE_SWAPPED, "phase 2: %s", err.msg);
    CHECK(store_read(&st, "app_data", &got, &err) == 1 && memcmp(got.tag, c.tag, 16) == 0 && !got.has_next,
          "the new tag is the record");
    /* a volume path is a name too: one file, escaped */
    CHECK(store_cas(&st, "/app/data", NULL, &a, &err) == STORE_SWAPPED, "a path as a name: %s", err.msg);
    char path[4200];
    snprintf(path, sizeof path, "%s/policy-a/%%2Fapp%%2Fdata.json", dir);
    CHECK(access(path, F_OK) == 0, "%s exists", path);
    CHECK(store_read(&st, "app_data", &got, &err) == 1 && memcmp(got.tag, c.tag, 16) == 0, "names do not mix");
    /* a malformed record is an error, never "absent" */
    snprintf(path, sizeof path, "%s/policy-a/broken.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"fspf_tag\": \"not hex\"}", f);
    fclose(f);
    CHECK(store_read(&st, "broken", &got, &err) == -1 && strstr(err.msg, "malformed"), "malformed: %s", err.msg);
    CHECK(store_cas(&st, "broken", NULL, &a, &err) == -1, "no swap over a malformed record");
    /* a record copied from another volume's file is refused */
    char from[4200];
    snprintf(from, sizeof from, "%s/policy-a/app_data.json", dir);
    snprintf(path, sizeof path, "%s/policy-a/copied.json", dir);
    CHECK(link(from, path) == 0, "link");
    CHECK(store_read(&st, "copied", &got, &err) == -1 && strstr(err.msg, "another volume"), "copied: %s", err.msg);
    /* no message quotes anything but tags and names */
    store_close(&st);
}

/* Two processes swap from the same old record to different new ones, released together: exactly
 * one wins and the record is the winner's. */
static void test_dir_race(const char *dir)
{
    for (int round = 0; round < 20; round++) {
        struct store st;
        struct rt_error err = {{0}};
        char volume[32];
        snprintf(volume, sizeof volume, "race-%d", round);
        CHECK(open_dir(dir, &st) == 0, "open");
        struct store_record old = record(9, 0);
        CHECK(store_cas(&st, volume, NULL, &old, &err) == STORE_SWAPPED, "create: %s", err.msg);
        int go[2];
        if (pipe(go) != 0) abort();
        pid_t pids[2];
        for (int i = 0; i < 2; i++) {
            pids[i] = fork();
            if (pids[i] == 0) {
                char byte;
                close(go[1]);
                if (read(go[0], &byte, 1) != 1) _exit(9);
                struct store_record mine = record(9, 20 + i);
                int rc = store_cas(&st, volume, &old, &mine, &err);
                _exit(rc == STORE_SWAPPED ? 0 : rc == STORE_MOVED ? 1 : 2);
            }
        }
        close(go[0]);
        if (write(go[1], "go", 2) != 2) abort();  /* both released at once */
        close(go[1]);
        int wins = 0, refused = 0, winner = -1;
        for (int i = 0; i < 2; i++) {
            int status;
            waitpid(pids[i], &status, 0);
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            if (code == 0) wins++, winner = i;
            if (code == 1) refused++;
        }
        CHECK(wins == 1 && refused == 1, "round %d: %d won, %d refused", round, wins, refused);
        struct store_record got;
        CHECK(store_read(&st, volume, &got, &err) == 1 && got.has_next && winner >= 0 &&
                  got.next_tag[0] == 20 + winner, "round %d: the record is the winner's", round);
        store_close(&st);
    }
}

static void test_specs(const char *dir)
{
    struct store st;
    struct rt_error err = {{0}};
    const char *bad[] = {
        "{}", "{\"dir\": \"relative\"}", "{\"dir\": \"/nonexistent-sconify\"}", "{\"etcd\": {\"endpoints\": []}}",
        "{\"etcd\": {\"endpoints\": [\"https://10.0.0.1:2379\"], \"prefix\": \"p/\"}}",
        "{\"etcd\": {\"endpoints\": [\"10.0.0.1\"], \"prefix\": \"p/\"}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_t *spec = store_spec_parse(bad[i]);
        CHECK(store_open(spec, "p", &st, &err) == -1, "refused: %s", bad[i]);
        json_decref(spec);
    }
    char text[4200];
    snprintf(text, sizeof text, "{\"dir\": \"%s\"}", dir);
    json_t *spec = store_spec_parse(text);
    CHECK(store_open(spec, "../escape", &st, &err) == -1, "a policy name is one path component");
    json_decref(spec);
}

/* An endpoint that refuses, then one that never answers: one line naming both, within the timeout. */
static void test_etcd_unreachable(void)
{
    json_t *spec = store_spec_parse("{\"etcd\": {\"endpoints\": [\"http://127.0.0.1:1\", \"http://10.255.255.1:2379\"], "
                                    "\"prefix\": \"/t/\", \"timeout_ms\": 300}}");
    struct store st;
    struct rt_error err = {{0}};
    struct store_record got, a = record(1, 0);
    CHECK(store_open(spec, "p", &st, &err) == 0, "open: %s", err.msg);
    json_decref(spec);
    CHECK(store_read(&st, "v", &got, &err) == -1, "no etcd: an error");
    CHECK(strstr(err.msg, "http://127.0.0.1:1") && strstr(err.msg, "http://10.255.255.1:2379"),
          "both endpoints named: %s", err.msg);
    CHECK(store_cas(&st, "v", NULL, &a, &err) == -1, "no etcd: no swap");
    store_close(&st);
}

int main(void)
{
    char dir[] = "/tmp/sconify-statestore-XXXXXX";
    if (!mkdtemp(dir)) return 2;
    test_dir_basics(dir);
    test_dir_race(dir);
    test_specs(dir);
    test_etcd_unreachable();
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) failures++;
    if (failures) fprintf(stderr, "test_statestore: %d failure(s)\n", failures);
    else printf("test_statestore: ok\n");
    return failures ? 1 : 0;
}
