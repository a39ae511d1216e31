/* Unit test of sgx_measure_fd without Python: a hand-made ELF (unaligned, overlapping
 * segments, .bss) whose MRENCLAVE was computed by embedfs.measure.measure_elf and is pinned
 * here, and the refusals (not ELF, truncated, bad parameters). tests/test_runtime_measure.py
 * compares against Python on real executables. Exit 0 when all pass. */
#include "measure.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FILE_SIZE (48 * 1024)

#include "check.h"

static unsigned char file[FILE_SIZE];

/* The bytes also built by the Python snippet in the comment at the end of this file. */
static void build_elf(void)
{
    for (unsigned i = 0; i < FILE_SIZE; i++) file[i] = (unsigned char)(i * 131u + (i >> 8) * 7u);
    static const uint64_t segs[][5] = { /* p_flags, p_offset, p_vaddr, p_filesz, p_memsz */
        {4, 0, 0x10000, 0x1800, 0x1800},
        {5, 0x1900, 0x11900, 0x2000, 0x2000},
        {6, 0x4000, 0x13a00, 0x300, 0x5000},
    };
    const unsigned n = sizeof segs / sizeof segs[0];
    unsigned char *h = file;
    memset(h, 0, 64);
    memcpy(h, "\x7f" "ELF\x02\x01\x01", 7);
    put16(h + 16, 3);       /* ET_DYN */
    put16(h + 18, 62);      /* x86_64 */
    put32(h + 20, 1);
    put64(h + 24, 0x10100); /* e_entry */
    put64(h + 32, 64);      /* e_phoff */
    put16(h + 52, 64);
    put16(h + 54, 56);
    put16(h + 56, (uint16_t)n);
    put16(h + 58, 64);
    for (unsigned i = 0; i < n; i++) {
        unsigned char *p = file + 64 + 56 * i;
        put32(p, 1);
        put32(p + 4, (uint32_t)segs[i][0]);
        put64(p + 8, segs[i][1]);
        put64(p + 16, segs[i][2]);
        put64(p + 24, segs[i][2]);
        put64(p + 32, segs[i][3]);
        put64(p + 40, segs[i][4]);
        put64(p + 48, 0x1000);
    }
}

static int file_fd(const void *data, size_t size)
{
    int fd = memfd_create("measure-test", MFD_CLOEXEC);
    if (fd < 0 || write_full(fd, data, size) < 0) {
        perror("memfd");
        return -1;
    }
    return fd;
}

static int measure(const void *data, size_t size, struct sgx_params p, char hex[65], struct rt_error *err)
{
    int fd = file_fd(data, size);
    if (fd < 0) return -2;
    unsigned char mr[32];
    int rc = sgx_measure_fd(fd, &p, mr, err);
    close(fd);
    if (rc == 0) hex_encode(mr, 32, hex);
    return rc;
}

static void expect_refused(const void *data, size_t size, struct sgx_params p, const char *word)
{
    struct rt_error err = {{0}};
    char hex[65];
    int rc = measure(data, size, p, hex, &err);
    CHECK(rc == -1, "expected a refusal mentioning '%s', got rc %d", word, rc);
    CHECK(strstr(err.msg, word) != NULL, "message '%s' does not mention '%s'", err.msg, word);
    CHECK(strchr(err.msg, '\n') == NULL, "message '%s' is not one line", err.msg);
}

int main(void)
{
    build_elf();
    struct sgx_params params = {.heap_size = 1 << 20, .stack_size = 256 << 10, .threads = 3, .ssa_frame_size = 2};
    struct rt_error err = {{0}};
    char hex[65] = "";
    int rc = measure(file, sizeof file, params, hex, &err);
    CHECK(rc == 0, "measure failed: %s", err.msg);
    CHECK(strcmp(hex, "c59ed383d4154d62b818dcb1909a81523596a2e34eef72fa6d969e3d7e34accd") == 0,
          "MRENCLAVE %s differs from measure_elf's", hex);

    expect_refused("#!/bin/sh\n", 10, params, "not an ELF");
    expect_refused(file, 40, params, "truncated");
    expect_refused(file, 0x3000, params, "truncated");
    struct sgx_params bad = params;
    bad.heap_size = 4095;
    expect_refused(file, sizeof file, bad, "heap size");
    bad = params;
    bad.threads = 0;
    expect_refused(file, sizeof file, bad, "thread count");
    bad = params;
    bad.ssa_frame_size = 0;
    expect_refused(file, sizeof file, bad, "SSA frame size");

    if (failures) {
        fprintf(stderr, "test_measure: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_measure: ok\n");
    return 0;
}

/* The pinned value, from Python:
 *   import struct; from embedfs.measure import measure_elf
 *   data = bytearray(((i * 131) + (i >> 8) * 7) & 0xff for i in range(48 * 1024))
 *   segs = [(4, 0, 0x10000, 0x1800, 0x1800), (5, 0x1900, 0x11900, 0x2000, 0x2000), (6, 0x4000, 0x13a00, 0x300, 0x5000)]
 *   data[:64] = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01".ljust(16, b"\0"), 3, 62, 1, 0x10100, 64, 0, 0,
 *                           64, 56, len(segs), 64, 0, 0)
 *   for i, (f, o, v, fs, ms) in enumerate(segs):
 *       data[64 + 56 * i:120 + 56 * i] = struct.pack("<IIQQQQQQ", 1, f, o, v, v, fs, ms, 0x1000)
 *   open("elf", "wb").write(data)
 *   print(measure_elf("elf", heap_size=1 << 20, stack_size=256 << 10, threads=3, ssa_frame_size=2).mrenclave)
 */
