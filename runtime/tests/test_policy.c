/* Unit test of the policy checks (src/policy.c): which variables choose code, the command
 * against the recorded one (with and without appended arguments), the environment against the
 * recorded one (the shield's own LD_PRELOAD entry left out, allowed names skipped), and the
 * runtime config's policy and SHA-256 as config_parse reads them. Exit 0 when all pass. */
#include "policy.h"

#include <stdio.h>
#include <string.h>

#include "check.h"

#define SHIELD "/.sconify/lib/libsconify-shield.so"

static const char CONFIG[] =
    "{\"schema\": \"sconify.runtime/v1\", \"executable\": \"/usr/bin/python3.11\", \"executable_sha256\": \""
    "0000000000000000000000000000000000000000000000000000000000000000\", \"mrenclave\": \""
    "1111111111111111111111111111111111111111111111111111111111111111\", \"measurement\": {\"heap_size\": 4096, "
    "\"stack_size\": 4096, \"threads\": 1, \"ssa_frame_size\": 1}, \"volumes\": [], \"ephemeral\": [], "
    "\"policy\": {\"command\": [\"python3\", \"/app/main.py\"], \"service_command\": [], \"allow_args\": false, "
    "\"allow_env\": [\"NODE_OPTIONS\"], \"environment\": {\"PATH\": \"/usr/bin:/bin\", \"PYTHONPATH\": \"/app/lib\", "
    "\"LANG\": \"C.UTF-8\"}}}";

static void test_code_choosing(void)
{
    static const char *const code[] = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONINSPECT",
                                       "PYTHONBREAKPOINT", "PYTHONWARNINGS", "PYTHONPLATLIBDIR", "PYTHON_FROZEN_MODULES",
                                       "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE", "LD_PRELOAD",
                                       "LD_LIBRARY_PATH", "LD_AUDIT", "GCONV_PATH", "OPENSSL_CONF", "OPENSSL_MODULES",
                                       "OPENSSL_ENGINES", "PATH", "BASH_ENV", "BASH_FUNC_node%%"};
    static const char *const harmless[] = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "NODE_ENV",
                                           "LANG", "HOSTNAME", "TERM", "PYTHONIOENCODING", "PATHX"};
    for (size_t i = 0; i < sizeof code / sizeof code[0]; i++)
        CHECK(policy_code_choosing(code[i]), "%s should choose code", code[i]);
    for (size_t i = 0; i < sizeof harmless / sizeof harmless[0]; i++)
        CHECK(!policy_code_choosing(harmless[i]), "%s should be harmless", harmless[i]);
}

static void test_command(struct rt_config *cfg)
{
    char msg[512];
    char *same[] = {"python3", "/app/main.py"}, *more[] = {"python3", "/app/main.py", "x"};
    char *other[] = {"python3", "-c", "print(1)"}, *shorter[] = {"python3"};
    CHECK(policy_check_command(cfg, 2, same, msg, sizeof msg) == 0, "the recorded command is refused: %s", msg);
    CHECK(policy_check_command(cfg, 3, other, msg, sizeof msg) != 0 && strstr(msg, "argument 2") && strstr(msg, "'-c'"),
          "-c: %s", msg);
    CHECK(policy_check_command(cfg, 1, shorter, msg, sizeof msg) != 0, "a shorter command is accepted");
    CHECK(policy_check_command(cfg, 3, more, msg, sizeof msg) != 0 && strstr(msg, "argument 3"), "appended: %s", msg);
    cfg->allow_args = 1;
    CHECK(policy_check_command(cfg, 3, more, msg, sizeof msg) == 0, "allow_args refuses appended arguments: %s", msg);
    CHECK(policy_check_command(cfg, 3, other, msg, sizeof msg) != 0, "allow_args accepts a changed argument");
    cfg->allow_args = 0;
}

static void test_environment(const struct rt_config *cfg)
{
    char msg[512];
    char *same[] = {"PATH=/usr/bin:/bin", "PYTHONPATH=/app/lib", "HOSTNAME=x", "LD_PRELOAD=" SHIELD, NULL};
    CHECK(policy_check_environment(cfg, same, SHIELD, msg, sizeof msg) == 0, "the image's environment: %s", msg);
    char *changed[] = {"PATH=/usr/bin:/bin", "PYTHONPATH=/inj", NULL};
    CHECK(policy_check_environment(cfg, changed, SHIELD, msg, sizeof msg) != 0 && strstr(msg, "sets PYTHONPATH,") &&
              strstr(msg, "--allow-env PYTHONPATH") && !strstr(msg, "/inj"),
          "changed PYTHONPATH: %s", msg);
    char *unset[] = {"PATH=/usr/bin:/bin", NULL};
    CHECK(policy_check_environment(cfg, unset, SHIELD, msg, sizeof msg) != 0 && strstr(msg, "unsets PYTHONPATH"),
          "unset PYTHONPATH: %s", msg);
    char *preload[] = {"PATH=/usr/bin:/bin", "PYTHONPATH=/app/lib", "LD_PRELOAD=" SHIELD ":/inj/evil.so", NULL};
    CHECK(policy_check_environment(cfg, preload, SHIELD, msg, sizeof msg) != 0 && strstr(msg, "LD_PRELOAD"),
          "another preload: %s", msg);
    char *allowed[] = {"PATH=/usr/bin:/bin", "PYTHONPATH=/app/lib", "NODE_OPTIONS=--require /x", NULL};
    CHECK(policy_check_environment(cfg, allowed, SHIELD, msg, sizeof msg) == 0, "an allowed variable: %s", msg);
    char out[256];
    policy_preload_without(SHIELD " /a.so:" SHIELD ":/b.so", SHIELD, out, sizeof out);
    CHECK(strcmp(out, "/a.so:/b.so") == 0, "preload without the shield: %s", out);
}

int main(void)
{
    struct rt_config cfg;
    struct rt_error err;
    CHECK(config_parse(CONFIG, strlen(CONFIG), "test", &cfg, &err) == 0, "config_parse: %s", err.msg);
    CHECK(cfg.command_count == 2 && cfg.env_count == 3 && cfg.allow_env_count == 1 && strlen(cfg.source_sha256) == 64,
          "the policy as parsed");
    test_code_choosing();
    test_command(&cfg);
    test_environment(&cfg);
    config_free(&cfg);
    static const char OLD[] = "{\"schema\": \"sconify.runtime/v1\"}";
    CHECK(config_parse(OLD, strlen(OLD), "old", &cfg, &err) != 0 && strstr(err.msg, "re-convert"), "an old config");
    if (failures) return 1;
    printf("policy: all checks passed\n");
    return 0;
}
