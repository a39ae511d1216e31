/* measure_tool EXE HEAP STACK THREADS SSA: print the MRENCLAVE (hex) of EXE laid out as an
 * enclave with those parameters, as embedfs.measure.measure_elf computes it. Sizes are bytes
 * (decimal, or with a K/M/G suffix: powers of 1024). Exit 0; on error one line
 * "measure_tool: <message>" on stderr and exit 2. Used by tests/test_runtime_measure.py. */
#include "measure.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int die(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "measure_tool: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return 2;
}

/* Parse a non-negative size with an optional K/M/G suffix; -1 if it is not one. */
static int parse_u64(const char *text, uint64_t max, uint64_t *out)
{
    if (!*text || *text == '-' || *text == '+') return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text) return -1;
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k') shift = 10, end++;
    else if (*end == 'M' || *end == 'm') shift = 20, end++;
    else if (*end == 'G' || *end == 'g') shift = 30, end++;
    if (*end) return -1;
    if (shift && v > (UINT64_MAX >> shift)) return -1;
    v <<= shift;
    if (v > max) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6)
        return die("usage: measure_tool EXE HEAP STACK THREADS SSA%s%s", "", "");
    uint64_t heap, stack, threads, ssa;
    if (parse_u64(argv[2], UINT64_MAX, &heap) < 0) return die("heap size %s is not a size%s", argv[2], "");
    if (parse_u64(argv[3], UINT64_MAX, &stack) < 0) return die("stack size %s is not a size%s", argv[3], "");
    if (parse_u64(argv[4], UINT32_MAX, &threads) < 0) return die("thread count %s is not a number%s", argv[4], "");
    if (parse_u64(argv[5], UINT32_MAX, &ssa) < 0) return die("SSA frame size %s is not a number%s", argv[5], "");
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) return die("cannot open %s: %s", argv[1], strerror(errno));
    struct sgx_params params = {.heap_size = heap, .stack_size = stack, .threads = (uint32_t)threads,
                                .ssa_frame_size = (uint32_t)ssa};
    unsigned char mr[32];
    struct rt_error err = {{0}};
    int rc = sgx_measure_fd(fd, &params, mr, &err);
    close(fd);
    if (rc < 0) return die("%s: %s", argv[1], err.msg);
    char hex[65];
    hex_encode(mr, sizeof mr, hex);
    printf("%s\n", hex);
    return fflush(stdout) == 0 ? 0 : 2;
}
