/* Unit test of a deployment's policy as the launcher reads it: YAML to JSON (src/yamljson.c:
 * scalar types, block scalars, aliases, refusals), the policy and secrets (src/deployment.c:
 * measurements accepted, secret references substituted or refused without their values, the
 * command split as shlex splits it, @@1). Exit 0 when all pass. */
#include "deployment.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "yamljson.h"

static json_t *yaml(const char *text, struct rt_error *err)
{
    return yaml_to_json(text, strlen(text), "test.yaml", err);
}

static void test_scalars(void)
{
    struct rt_error err;
    json_t *doc = yaml("a: 1\nb: -12\nc: 0x1f\nd: 0o17\ne: 1.5\nf: true\ng: False\nh: ~\ni:\nj: yes\nk: '1'\n"
                       "l: \"x\\ty\"\nn: 4e99999\no: "
                       "1111111111111111111111111111111111111111111111111111111111111111\np: .inf\nq: 40e99f8c\n", &err);
    CHECK(doc != NULL, "parse: %s", err.msg);
    if (!doc) return;
    CHECK(json_integer_value(json_object_get(doc, "a")) == 1, "a: 1 is an integer");
    CHECK(json_integer_value(json_object_get(doc, "b")) == -12, "b: -12");
    CHECK(json_integer_value(json_object_get(doc, "c")) == 31, "c: 0x1f is 31");
    CHECK(json_integer_value(json_object_get(doc, "d")) == 15, "d: 0o17 is 15");
    CHECK(json_is_real(json_object_get(doc, "e")) && json_real_value(json_object_get(doc, "e")) == 1.5, "e: 1.5");
    CHECK(json_is_true(json_object_get(doc, "f")) && json_is_false(json_object_get(doc, "g")), "f, g: booleans");
    CHECK(json_is_null(json_object_get(doc, "h")) && json_is_null(json_object_get(doc, "i")), "h, i: null");
    CHECK(strcmp(json_string_value(json_object_get(doc, "j")), "yes") == 0, "j: yes is a string (YAML 1.2)");
    CHECK(strcmp(json_string_value(json_object_get(doc, "k")), "1") == 0, "k: a quoted 1 is a string");
    CHECK(strcmp(json_string_value(json_object_get(doc, "l")), "x\ty") == 0, "l: double-quoted escapes");
    CHECK(json_is_string(json_object_get(doc, "n")), "n: a float that is not finite stays a string");
    CHECK(json_string_length(json_object_get(doc, "o")) == 64, "o: a digest of digits stays a string");
    CHECK(json_is_string(json_object_get(doc, "p")), "p: .inf stays a string");
    CHECK(strcmp(json_string_value(json_object_get(doc, "q")), "40e99f8c") == 0, "q: hex is a string");
    json_decref(doc);
}

static void test_structure(void)
{
    struct rt_error err;
    json_t *doc = yaml("list:\n- {name: a, path: /x}\n- [1, 2]\nblock: |\n  [db]\n  password = p\nfolded: >\n  one\n  two\n"
                       "base: &b {k: v}\nref: *b\n", &err);
    CHECK(doc != NULL, "parse: %s", err.msg);
    if (!doc) return;
    json_t *list = json_object_get(doc, "list");
    CHECK(json_array_size(list) == 2, "a list of two");
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(list, 0), "path")), "/x") == 0, "a flow mapping");
    CHECK(json_integer_value(json_array_get(json_array_get(list, 1), 1)) == 2, "a flow sequence");
    CHECK(strcmp(json_string_value(json_object_get(doc, "block")), "[db]\npassword = p\n") == 0, "a literal block");
    CHECK(strcmp(json_string_value(json_object_get(doc, "folded")), "one two\n") == 0, "a folded block");
    CHECK(strcmp(json_string_value(json_object_get(json_object_get(doc, "ref"), "k")), "v") == 0, "an alias followed");
    json_decref(doc);

    CHECK(!yaml("a: 1\na: 2\n", &err) && strstr(err.msg, "appears twice"), "a duplicate key is refused: %s", err.msg);
    CHECK(!yaml("? [1]\n: x\n", &err) && strstr(err.msg, "key"), "a key that is not a scalar is refused: %s", err.msg);
    CHECK(!yaml("a: [1\n", &err) && strstr(err.msg, "test.yaml line"), "a syntax error names the line: %s", err.msg);
    CHECK(!yaml("a: 1\n---\nb: 2\n", &err) && strstr(err.msg, "more than one"), "two documents: %s", err.msg);
    CHECK(!yaml("", &err), "an empty stream is refused");
    /* a billion laughs: 10 levels of 10 aliases */
    char laughs[4096] = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
    for (int i = 1; i < 10; i++) {
        char line[256];
        snprintf(line, sizeof line, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i,
                 i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
        strcat(laughs, line);
    }
    CHECK(!yaml(laughs, &err) && strstr(err.msg, "too large"), "aliases expanded without bound are refused: %s", err.msg);
}

#define MR_A "40e99f8c00000000000000000000000000000000000000000000000000000000"
#define MR_B "51f0aa0000000000000000000000000000000000000000000000000000000000"
#define EXE "9a1c000000000000000000000000000000000000000000000000000000000000"
#define CFG "52c4000000000000000000000000000000000000000000000000000000000000"

static const char POLICY[] =
    "name: deployment-a\nversion: '0.3'\nservices:\n- name: python\n  image_name: app\n  mrenclaves:\n"
    "  - " MR_A "\n  - " MR_B "\n"
    "  command: /usr/bin/python3.11 '/app/main app.py' --token=$$SCONE::api_token:hex$$ @@1\n"
    "  environment:\n    LANG: C.UTF-8\n    DB_PASSWORD: $$SCONE::DB_PASSWORD$$\n    PORT: 8080\n"
    "  pwd: /app\n  volumes:\n  - {name: app_data, path: /app/data}\n"
    "images:\n- name: app\n  injection_files:\n  - path: /app/conf/secret.ini\n    content: |\n      [db]\n"
    "      password = $$SCONE::DB_PASSWORD$$\n- name: other\n  injection_files:\n  - {path: /elsewhere, content: x}\n"
    "volumes:\n- name: app_data\n  fspf_path: /app/data/.sconify.fspf\n  fspf_key: $$SCONE::app_data_key:hex$$\n"
    "secrets:\n- {name: DB_PASSWORD, kind: ascii, size: 24}\n- {name: api_token, kind: binary, size: 4}\n"
    "- {name: server_tls, kind: x509, common_name: app.example.com}\n- {name: app_data_key, kind: binary, size: 32}\n"
    "- {name: missing, kind: ascii}\n"
    "sconify:\n  measurements:\n  - mrenclave: " MR_A "\n    executable_sha256: " EXE "\n    runtime_config_sha256: "
    CFG "\n  - mrenclave: " MR_B "\n    executable_sha256: " EXE "\n    runtime_config_sha256: " CFG "\n"
    "  state: {dir: /tmp/state}\n";

static const char SECRETS[] =
    "{\"schema\": \"sconify.secrets/v1\", \"policy\": \"deployment-a\", \"secrets\": {"
    "\"DB_PASSWORD\": {\"kind\": \"ascii\", \"value\": \"s3cr3t-pw\"},"
    "\"api_token\": {\"kind\": \"binary\", \"value_hex\": \"00ff10fe\"},"
    "\"server_tls\": {\"kind\": \"x509\", \"certificate\": \"CERT\", \"private_key\": \"KEY\"},"
    "\"app_data_key\": {\"kind\": \"binary\", \"value_hex\": \"" MR_A "\"}}}";

static int load(struct deployment *d, const char *policy, const char *secrets, struct rt_error *err)
{
    json_t *p = yaml(policy, err);
    json_t *s = json_loads(secrets, 0, NULL);
    int rc = p ? deployment_from_json(p, s, "/run/secrets/sconify", d, err) : -1;
    json_decref(p);
    json_decref(s);
    return rc;
}

static void expect_substitution(const struct deployment *d, const char *text, const char *want)
{
    char *out = NULL;
    struct rt_error err;
    int rc = deployment_substitute(d, text, &out, &err);
    CHECK(rc == 0 && strcmp(out, want) == 0, "%s -> %s (got %s, %s)", text, want, rc == 0 ? out : "-", rc ? err.msg : "");
    free(out);
}

static void expect_refusal(const struct deployment *d, const char *text, const char *names)
{
    char *out = NULL;
    struct rt_error err;
    int rc = deployment_substitute(d, text, &out, &err);
    CHECK(rc != 0 && strstr(err.msg, names) && !strstr(err.msg, "s3cr3t") && !strstr(err.msg, "00ff10fe"),
          "%s is refused naming %s, no value (%s)", text, names, rc ? err.msg : out);
    if (rc == 0) free(out);
}

static void test_policy(void)
{
    struct deployment d;
    struct rt_error err;
    if (load(&d, POLICY, SECRETS, &err) != 0) {
        CHECK(0, "the policy loads: %s", err.msg);
        return;
    }
    CHECK(strcmp(d.name, "deployment-a") == 0 && strcmp(d.pwd, "/app") == 0, "name and pwd");
    CHECK(strcmp(d.state, "{\"dir\":\"/tmp/state\",\"name\":\"deployment-a\"}") == 0, "sconify.state: %s", d.state);
    CHECK(d.env_count == 3 && strcmp(d.env_values[2], "8080") == 0, "an integer value is its decimal text");
    CHECK(d.file_count == 1 && strcmp(d.files[0].path, "/app/conf/secret.ini") == 0,
          "the injection files of the service's image only");
    CHECK(d.volume_count == 1 && strcmp(d.volumes[0].path, "/app/data") == 0 &&
          strcmp(d.volumes[0].name, "app_data") == 0, "the volume and where the service mounts it");
    CHECK(deployment_accepts(&d, MR_A, EXE, CFG) && deployment_accepts(&d, MR_B, EXE, CFG), "both versions accepted");
    CHECK(!deployment_accepts(&d, MR_A, CFG, CFG), "another executable SHA-256 is not accepted");
    CHECK(!deployment_accepts(&d, MR_A, EXE, EXE), "another runtime config is not accepted");
    CHECK(!deployment_accepts(&d, EXE, EXE, CFG), "an MRENCLAVE not listed is not accepted");

    expect_substitution(&d, "pw=$$SCONE::DB_PASSWORD$$;", "pw=s3cr3t-pw;");
    expect_substitution(&d, "$$SCONE::DB_PASSWORD:hex$$", "7333637233742d7077");
    expect_substitution(&d, "$$SCONE::api_token:hex$$ $$SCONE::api_token:base64$$", "00ff10fe AP8Q/g==");
    expect_substitution(&d, "$$SCONE::server_tls.crt$$|$$SCONE::server_tls.key$$", "CERT|KEY");
    expect_substitution(&d, "no reference $ $$ $$SCONE", "no reference $ $$ $$SCONE");
    expect_refusal(&d, "$$SCONE::nope$$", "nope");
    expect_refusal(&d, "$$SCONE::missing$$", "missing");
    expect_refusal(&d, "$$SCONE::api_token$$", "api_token");
    expect_refusal(&d, "$$SCONE::server_tls:hex$$", "server_tls");
    expect_refusal(&d, "$$SCONE::DB_PASSWORD.crt$$", "DB_PASSWORD.crt");
    expect_refusal(&d, "$$SCONE::DB_PASSWORD", "not closed");
    CHECK(deployment_check_references(&d, &err) == 0, "every reference of the policy resolves: %s", err.msg);
    free(d.env_values[1]);
    d.env_values[1] = strdup("$$SCONE::missing$$");
    CHECK(deployment_check_references(&d, &err) != 0 && strstr(err.msg, "missing"), "one that does not: %s", err.msg);
    deployment_free(&d);

    CHECK(load(&d, POLICY, "{\"schema\": \"sconify.secrets/v1\", \"policy\": \"deployment-b\", \"secrets\": {}}", &err)
              != 0 && strstr(err.msg, "belongs to policy deployment-b"), "another policy's secrets: %s", err.msg);
    CHECK(load(&d, POLICY, "{\"schema\": \"sconify.secrets/v1\", \"secrets\": {\"DB_PASSWORD\": {\"kind\": \"binary\", "
                           "\"value_hex\": \"00\"}}}", &err) != 0 && strstr(err.msg, "DB_PASSWORD") &&
              !strstr(err.msg, "00"), "a secret of another kind: %s", err.msg);
}

static void test_command(void)
{
    char **words;
    size_t n;
    int host;
    struct rt_error err;
    CHECK(command_split("/usr/bin/python3.11 '/app/main app.py' \"a \\\"b\\\"\" c\\ d 'it'\"'\"'s' @@1", &words, &n,
                        &host, &err) == 0, "split: %s", err.msg);
    CHECK(n == 5 && host && strcmp(words[1], "/app/main app.py") == 0 && strcmp(words[2], "a \"b\"") == 0 &&
          strcmp(words[3], "c d") == 0 && strcmp(words[4], "it's") == 0 && !words[5], "the words as shlex gives them");
    free_words(words);
    CHECK(command_split("python3  /app/main.py", &words, &n, &host, &err) == 0 && n == 2 && !host, "no @@1");
    free_words(words);
    CHECK(command_split("python3 'open", &words, &n, &host, &err) != 0, "an unbalanced quote is refused");
}

int main(void)
{
    test_scalars();
    test_structure();
    test_policy();
    test_command();
    if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
    else printf("test_deployment: ok\n");
    return failures != 0;
}
