/* MRENCLAVE of an executable laid out as an SGX enclave: the same algorithm, layout and
 * parameters as embedfs/measure.py (docs/measurement.md, layout version 1). */
#ifndef SCONIFY_MEASURE_H
#define SCONIFY_MEASURE_H

#include <stdint.h>
#include "util.h"

struct sgx_params {
    uint64_t heap_size;      /* bytes, multiple of 4096 */
    uint64_t stack_size;     /* bytes, multiple of 4096 */
    uint32_t threads;        /* >= 1 */
    uint32_t ssa_frame_size; /* pages, >= 1 */
};

/* Measure the ELF file open at fd (read with pread, never modified). Refuses what
 * embedfs/measure.py refuses (not ELF64 x86_64 little-endian, no PT_LOAD, segments outside the
 * file, ...) with a one-line error. Returns 0 and the 32-byte MRENCLAVE, or -1. */
int sgx_measure_fd(int fd, const struct sgx_params *params, unsigned char mrenclave[32], struct rt_error *err);

/* SHA-256 of the whole file open at fd (read with pread from offset 0): 0, or -1 with errno. */
int file_sha256(int fd, unsigned char digest[32]);

#endif
