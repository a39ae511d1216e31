#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Variables that choose code, by the documentation of the program that reads them (the list
 * with a reason each is in docs/runtime.md, "The policy"). Every PYTHON* and NODE_* variable
 * chooses code unless it is on the harmless list below: a variable a new interpreter version
 * adds is refused until someone reads what it does. */
static const char *const CODE_PREFIXES[] = {
    "LD_",         /* ld.so: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT... load libraries */
    "PYTHON",      /* CPython: PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONWARNINGS... */
    "NODE_",       /* Node.js: NODE_OPTIONS (--require, --import, --loader), NODE_PATH... */
    "BASH_FUNC_",  /* bash: exported functions replace the commands an entrypoint script runs */
};
static const char *const CODE_NAMES[] = {
    "PATH",             /* which program `python3` or `node` is, for the launcher and the scripts */
    "GCONV_PATH",       /* glibc iconv loads gconv modules from it */
    "OPENSSL_CONF",     /* an OpenSSL config can load providers and engines */
    "OPENSSL_MODULES",  /* where OpenSSL loads providers from */
    "OPENSSL_ENGINES",  /* where OpenSSL loads engines from */
    "BASH_ENV",         /* bash sources it before a script */
    "ENV",              /* sh sources it (interactive, POSIX mode) */
    "SHELLOPTS",        /* bash options (xtrace with PS4 runs code) */
    "BASHOPTS",
    "GUNICORN_CMD_ARGS", /* gunicorn: -c FILE runs a config file as Python */
    "TMPDIR",           /* where tempfile and mkstemp put files: out of the encrypted /tmp, in plaintext */
    "TMP",
    "TEMP",
};
/* PYTHON* and NODE_* variables that load no code and choose none. */
static const char *const HARMLESS[] = {
    "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONHASHSEED", "PYTHONUTF8",
    "PYTHONCOERCECLOCALE", "PYTHONFAULTHANDLER", "PYTHONNOUSERSITE", "PYTHONSAFEPATH", "PYTHONINTMAXSTRDIGITS",
    "PYTHONMALLOC", "PYTHONMALLOCSTATS", "PYTHONTRACEMALLOC", "PYTHONDEVMODE", "PYTHONNODEBUGRANGES",
    "PYTHONVERBOSE", "PYTHONDEBUG", "PYTHONASYNCIODEBUG",
    "NODE_ENV", "NODE_NO_WARNINGS", "NODE_DISABLE_COLORS", "NODE_PENDING_DEPRECATION",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

int policy_code_choosing(const char *name)
{
    for (size_t i = 0; i < COUNT(HARMLESS); i++)
        if (strcmp(name, HARMLESS[i]) == 0) return 0;
    for (size_t i = 0; i < COUNT(CODE_NAMES); i++)
        if (strcmp(name, CODE_NAMES[i]) == 0) return 1;
    for (size_t i = 0; i < COUNT(CODE_PREFIXES); i++)
        if (strncmp(name, CODE_PREFIXES[i], strlen(CODE_PREFIXES[i])) == 0) return 1;
    return 0;
}

int policy_check_command(const struct rt_config *cfg, int argc, char **argv, char *msg, size_t len)
{
    size_t n = (size_t)argc;
    for (size_t i = 0; i < cfg->command_count; i++) {
        if (i >= n) {
            snprintf(msg, len, "the command stops before argument %zu (the recorded command has %zu arguments: "
                               "'%.80s'...)", i + 1, cfg->command_count, cfg->command[0]);
            return -1;
        }
        if (strcmp(argv[i], cfg->command[i]) != 0) {
            snprintf(msg, len, "argument %zu of the command is '%.80s' where the recorded command has '%.80s'", i + 1,
                     argv[i], cfg->command[i]);
            return -1;
        }
    }
    if (n > cfg->command_count && !cfg->allow_args) {
        snprintf(msg, len, "argument %zu of the command ('%.80s') follows the recorded command, and the conversion "
                           "did not allow appended arguments", cfg->command_count + 1, argv[cfg->command_count]);
        return -1;
    }
    return 0;
}

int policy_lookup(const char *name, const char *path, int (*usable)(const char *candidate), char *out, size_t len)
{
    /* string functions only, no stdio: the shield calls this between fork and exec */
    out[0] = '\0';
    if (strchr(name, '/')) {
        if (strlen(name) >= len) return 0;
        strcpy(out, name);
        return 1;
    }
    for (const char *p = path ? path : POLICY_DEFAULT_PATH; *p;) {
        size_t n = strcspn(p, ":");
        if (n && n + strlen(name) + 2 <= len) {
            memcpy(out, p, n);
            out[n] = '/';
            strcpy(out + n + 1, name);
            if (usable(out)) return 1;
        }
        p += n;
        if (*p) p++;
    }
    out[0] = '\0';
    return 0;
}

void policy_preload_without(const char *value, const char *shield, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    const char *p = value;
    while (*p) {
        size_t word = strcspn(p, ": ");
        if (word && !(strlen(shield) == word && strncmp(p, shield, word) == 0)) {
            int n = snprintf(out + used, len - used, "%s%.*s", used ? ":" : "", (int)word, p);
            if (n < 0 || (size_t)n >= len - used) break;
            used += (size_t)n;
        }
        p += word;
        if (*p) p++;
    }
}

static const char *recorded(const struct rt_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->env_count; i++)
        if (strcmp(cfg->env_names[i], name) == 0) return cfg->env_values[i];
    return NULL;
}

static int allowed(const struct rt_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->allow_env_count; i++)
        if (strcmp(cfg->allow_env[i], name) == 0) return 1;
    return 0;
}

/* name's value in envp (NULL: unset), LD_PRELOAD without the shield ("" counts as unset). */
static const char *current(char **envp, const char *name, const char *shield, char *buf, size_t len)
{
    size_t n = strlen(name);
    for (char **e = envp; *e; e++) {
        if (strncmp(*e, name, n) != 0 || (*e)[n] != '=') continue;
        const char *value = *e + n + 1;
        if (strcmp(name, "LD_PRELOAD") != 0) return value;
        policy_preload_without(value, shield, buf, len);
        return *buf ? buf : NULL;
    }
    return NULL;
}

static int differs(const struct rt_config *cfg, char **envp, const char *name, const char *shield, char *msg,
                   size_t len)
{
    if (!policy_code_choosing(name) || allowed(cfg, name)) return 0;
    char buf[4096];
    const char *now = current(envp, name, shield, buf, sizeof buf), *want = recorded(cfg, name);
    if (now && want && strcmp(now, want) == 0) return 0;
    if (!now && !want) return 0;
    snprintf(msg, len, "the environment %s %s, which chooses the code the service loads (or where it writes), %s; refusing to start (to "
                       "let the host set it, re-convert with --allow-env %s)",
             now ? "sets" : "unsets", name, want ? (now ? "to another value than the image's" : "that the image sets")
                                                 : "that the image leaves unset", name);
    return -1;
}

int policy_check_environment(const struct rt_config *cfg, char **envp, const char *shield, char *msg, size_t len)
{
    /* A name set twice: libc's getenv and setenv see the first, ld.so and shells use the last,
     * so the check below would judge another value than the one that takes effect. */
    for (char **e = envp; *e; e++) {
        size_t n = strcspn(*e, "=");
        for (char **later = e + 1; *later; later++)
            if (strncmp(*e, *later, n) == 0 && (*later)[n] == (*e)[n]) {
                snprintf(msg, len, "the environment sets %.*s more than once; refusing to start (set each variable "
                                   "once)", (int)n, *e);
                return -1;
            }
    }
    for (char **e = envp; *e; e++) {
        char *name = strndup(*e, strcspn(*e, "="));
        int rc = name ? differs(cfg, envp, name, shield, msg, len) : -1;
        free(name);
        if (rc != 0) return -1;
    }
    for (size_t i = 0; i < cfg->env_count; i++)
        if (differs(cfg, envp, cfg->env_names[i], shield, msg, len) != 0) return -1;
    return 0;
}
