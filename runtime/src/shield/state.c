/* The shield's state, the real libc functions and its one line on stderr. */
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

void shield_log(const char *fmt, ...)
{
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = sizeof line - 2;
    line[n++] = '\n';
    in_shield++;
    if (write(2, "sconify-shield: ", 16) < 0 || write(2, line, (size_t)n) < 0) { /* nothing to do */ }
    in_shield--;
}
