/* The shield's state, the real libc functions and its log (SCONIFY_LOG). */
#include <dlfcn.h>
#include <stdarg.h>

#include "shield.h"

#define REAL_DEFINE(ret, name, ...)                                                \
    static name##_fn real_##name;                                                  \
    name##_fn get_##name(void)                                                     \
    {                                                                              \
        if (!real_##name) real_##name = (name##_fn)dlsym(RTLD_NEXT, #name);        \
        return real_##name;                                                        \
    }
REAL_FUNCTIONS(REAL_DEFINE)

struct shield_state S = {.lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP};

__thread int in_shield;

/* SCONIFY_LOG (read at the first line): "stderr", an absolute file path (appended to, 0600;
 * put it outside the volumes), or unset / "off": nothing. Never the service's stderr by
 * default: a runtime must not write into the service's streams what the service did not. */
static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static char log_target[PATH_MAX];

static void read_log_setting(void)
{
    const char *v = getenv("SCONIFY_LOG");
    if (v && (strcmp(v, "stderr") == 0 || v[0] == '/')) snprintf(log_target, sizeof log_target, "%s", v);
}

/* One line to target ("stderr" or a file): control bytes, backslashes and bytes that are not
 * UTF-8 (raw file names) as \xHH. */
static void emit(const char *target, const char *fmt, va_list ap)
{
    char raw[1200], line[sizeof raw * 4 + 32];
    int n = vsnprintf(raw, sizeof raw, fmt, ap);
    if (n < 0) return;
    size_t len = (size_t)n < sizeof raw ? (size_t)n : sizeof raw - 1, out = 0;
    out += (size_t)snprintf(line, sizeof line, "sconify-shield: ");
    for (size_t i = 0; i < len;) {
        const unsigned char *c = (const unsigned char *)raw + i;
        size_t seq = utf8_sequence(c, len - i);
        if (seq && (c[0] >= 0x20 && c[0] != 0x7f && c[0] != '\\')) {
            memcpy(line + out, c, seq);
            out += seq;
            i += seq;
        } else {
            out += (size_t)snprintf(line + out, sizeof line - out, "\\x%02x", c[0]);
            i++;
        }
    }
    line[out++] = '\n';
    in_shield++;
    int saved = errno;
    int to_file = strcmp(target, "stderr") != 0;
    int fd = to_file ? RESOLVE(open)(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600) : 2;
    if (fd >= 0 && write(fd, line, out) < 0) { /* nothing to do */ }
    if (to_file && fd >= 0) RESOLVE(close)(fd);
    errno = saved;
    in_shield--;
}

void shield_log(const char *fmt, ...)
{
    pthread_once(&log_once, read_log_setting);
    if (!log_target[0]) return;
    va_list ap;
    va_start(ap, fmt);
    emit(log_target, fmt, ap);
    va_end(ap);
}

/* A refusal before the service starts (the constructor): on stderr, as the launcher's are. */
void shield_refusal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit("stderr", fmt, ap);
    va_end(ap);
}
