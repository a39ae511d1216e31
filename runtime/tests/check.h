/* CHECK(cond, fmt, ...): the C unit tests' assertion. A failure prints one line and is counted
 * in `failures`; the test's main returns non-zero if there was any. */
#ifndef SCONIFY_TEST_CHECK_H
#define SCONIFY_TEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond, ...)                                         \
    do {                                                         \
        if (!(cond)) {                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fputc('\n', stderr);                                 \
            failures++;                                          \
        }                                                        \
    } while (0)

#endif
