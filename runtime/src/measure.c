/* MRENCLAVE of an executable laid out as an SGX enclave: the C twin of embedfs/measure.py
 * (docs/measurement.md, layout version 1). Same checks, same layout, same record stream, so
 * the same 32 bytes for every input the Python code accepts.
 *
 * Record stream (SHA-256 over it is MRENCLAVE):
 *   ECREATE  "ECREATE\0" u32 ssa_frame_size u64 enclave_size, 44 zero bytes
 *   EADD     "EADD\0\0\0\0" u64 offset u64 SECINFO.FLAGS, 40 zero bytes
 *   EEXTEND  "EEXTEND\0" u64 chunk offset, 48 zero bytes, then the 256 data bytes
 * Every page gets an EADD; a measured page then 16 EEXTENDs (5184 bytes in all).
 *
 * The image is cut into runs of alike pages exactly as measure.image_runs does (the same cut
 * points, the same tests on the first page of each run), so pages come out identical even for
 * odd inputs (overlapping segments, p_filesz > p_memsz, unaligned p_vaddr). Runs that are file
 * bytes are read BLOCK_PAGES pages per pread and turned into records in one buffer that is
 * hashed in large pieces: the cost is SHA-256 over 1.27x the measured bytes. */

/* The low-level SHA256_* calls: no provider or config machinery at container start. They are
 * deprecated (not removed) in OpenSSL 3.0; ask for the 1.1.1 API to declare them plainly. */
#define OPENSSL_API_COMPAT 0x10101000L
#include <openssl/sha.h>

#include "measure.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096u
#define CHUNK 256u
#define RECORD 64u
#define PAGE_RECORDS (RECORD + (PAGE / CHUNK) * (RECORD + CHUNK)) /* 5184 */
#define BLOCK_PAGES 64u                                           /* file pages per pread */
#define OUT_CAP ((size_t)BLOCK_PAGES * PAGE_RECORDS)              /* record buffer */

#define SECINFO_R 0x1u
#define SECINFO_W 0x2u
#define SECINFO_X 0x4u
#define PT_TCS_FLAGS 0x100u
#define PT_REG_FLAGS 0x200u
#define SSA_FRAMES_PER_THREAD 2u

#define ELF_HEADER_SIZE 64u
#define PHDR_SIZE 56u
#define ET_EXEC 2u
#define ET_DYN 3u
#define EM_X86_64 62u
#define PT_LOAD 1u
#define PT_NOTE 4u
#define NT_EMBEDFS 0x53464245u
#define DESCRIPTOR_SIZE 88u
#define DESCRIPTOR_VERSION 1u
#define NOTE_SCAN_LIMIT (1u << 20)
#define LAYOUT_LIMIT ((unsigned __int128)1 << 63) /* enclave sizes above 2^63 do not fit ECREATE */

typedef unsigned __int128 u128;

struct segment {
    uint64_t offset; /* p_offset */
    uint64_t start;  /* p_vaddr - base */
    uint64_t filesz;
    uint64_t memsz;
    uint64_t mem_end;  /* start + memsz (<= 2^63 once the layout is checked) */
    uint64_t file_end; /* start + filesz */
    uint32_t perms;    /* SECINFO R/W/X */
};

struct hasher {
    SHA256_CTX sha;
    unsigned char *out; /* OUT_CAP bytes of records waiting to be hashed */
    size_t len;
};

static unsigned char *reserve(struct hasher *h, size_t n)
{
    if (h->len + n > OUT_CAP) {
        SHA256_Update(&h->sha, h->out, h->len);
        h->len = 0;
    }
    unsigned char *p = h->out + h->len;
    h->len += n;
    return p;
}

static void put_record(unsigned char *p, const char tag[8], uint64_t a, uint64_t b)
{
    memcpy(p, tag, 8);
    put64(p + 8, a);
    put64(p + 16, b);
    memset(p + 24, 0, RECORD - 24);
}

static void add_ecreate(struct hasher *h, uint32_t ssa_frame_size, uint64_t enclave_size)
{
    unsigned char *p = reserve(h, RECORD);
    memset(p, 0, RECORD);
    memcpy(p, "ECREATE\0", 8);
    put32(p + 8, ssa_frame_size);
    put64(p + 12, enclave_size);
}

/* count pages added but not measured: one EADD each. */
static void add_unmeasured(struct hasher *h, uint64_t offset, uint64_t count, uint32_t flags)
{
    for (uint64_t i = 0; i < count; i++)
        put_record(reserve(h, RECORD), "EADD\0\0\0\0", offset + i * PAGE, flags);
}

/* One measured page: its EADD, then 16 EEXTENDs of data (zeros when data is NULL). */
static void add_measured(struct hasher *h, uint64_t offset, uint32_t flags, const unsigned char *data)
{
    unsigned char *p = reserve(h, PAGE_RECORDS);
    put_record(p, "EADD\0\0\0\0", offset, flags);
    p += RECORD;
    for (unsigned k = 0; k < PAGE / CHUNK; k++, p += RECORD + CHUNK) {
        put_record(p, "EEXTEND\0", offset + k * CHUNK, 0);
        if (data)
            memcpy(p + RECORD, data + k * CHUNK, CHUNK);
        else
            memset(p + RECORD, 0, CHUNK);
    }
}

/* pread up to n bytes at off; returns how many were read before end of file, or -1. */
static ssize_t pread_upto(int fd, unsigned char *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, buf + done, n - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

static int read_exact(int fd, void *buf, size_t n, uint64_t off, struct rt_error *err)
{
    if (n == 0) return 0;
    if (pread_full(fd, buf, n, off) == 0) return 0;
    if (errno == EIO)
        return rt_fail(err, "the executable was truncated while being measured; measure it again");
    return rt_fail(err, "cannot read the executable at offset %llu: %s", (unsigned long long)off, strerror(errno));
}

static uint32_t secinfo_perms(uint32_t p_flags)
{
    return (p_flags & 4 ? SECINFO_R : 0) | (p_flags & 2 ? SECINFO_W : 0) | (p_flags & 1 ? SECINFO_X : 0);
}

static uint64_t ceil_page(uint64_t v) { return v / PAGE + (v % PAGE != 0); }

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* embedfs.elf.find_embedded's checks: the first EMBEDFS note (in a PT_NOTE of at most 1 MiB)
 * must be a complete version-1 descriptor whose archive lies inside the file. */
static int check_descriptor(int fd, const unsigned char *phdrs, unsigned phnum, uint64_t file_size,
                            struct rt_error *err)
{
    unsigned char *data = NULL;
    int rc = 0;
    for (unsigned i = 0; i < phnum && rc == 0; i++) {
        const unsigned char *ph = phdrs + (size_t)i * PHDR_SIZE;
        uint64_t offset = le64(ph + 8), filesz = le64(ph + 32);
        if (le32(ph) != PT_NOTE || filesz > NOTE_SCAN_LIMIT) continue;
        if (offset > (uint64_t)INT64_MAX) /* os.pread cannot even be asked for this */
            return rt_fail(err, "PT_NOTE segment %u has an offset past 2^63; give a sane executable", i);
        if (filesz == 0) continue;
        unsigned char *grown = realloc(data, (size_t)filesz);
        if (!grown) { free(data); return rt_fail(err, "out of memory reading the notes"); }
        data = grown;
        if (read_exact(fd, data, (size_t)filesz, offset, err) < 0) { rc = -1; break; }
        uint64_t pos = 0, len = filesz;
        while (pos + 12 <= len) {
            uint32_t namesz = le32(data + pos), descsz = le32(data + pos + 4), type = le32(data + pos + 8);
            uint64_t name_at = pos + 12;
            uint64_t desc_at = name_at + (((uint64_t)namesz + 3) & ~(uint64_t)3);
            if (namesz == 8 && name_at + 8 <= len && memcmp(data + name_at, "EMBEDFS\0", 8) == 0 &&
                type == NT_EMBEDFS) {
                uint64_t avail = desc_at < len ? len - desc_at : 0;
                if (descsz < DESCRIPTOR_SIZE || avail < DESCRIPTOR_SIZE) {
                    rc = rt_fail(err, "embedfs descriptor note is too short; the executable is damaged, re-inject");
                } else {
                    const unsigned char *d = data + desc_at;
                    uint32_t version = le32(d);
                    u128 archive_end = (u128)le64(d + 8) + le64(d + 24);
                    if (version != DESCRIPTOR_VERSION)
                        rc = rt_fail(err, "embedfs descriptor version %u is not supported (this reader knows %u); "
                                     "upgrade embedfs", version, DESCRIPTOR_VERSION);
                    else if (archive_end > file_size)
                        rc = rt_fail(err, "the executable is truncated: its embedfs archive ends past the file end; "
                                     "re-inject");
                }
                free(data);
                return rc;
            }
            pos = desc_at + (((uint64_t)descsz + 3) & ~(uint64_t)3);
        }
    }
    free(data);
    return rc;
}

/* measure.image_runs + run_records for the image region. */
static int add_image(struct hasher *h, int fd, const struct segment *segs, unsigned nseg,
                     unsigned char *block, struct rt_error *err)
{
    uint64_t *cuts = malloc(sizeof *cuts * 5 * (size_t)nseg);
    if (!cuts) return rt_fail(err, "out of memory planning the image");
    size_t ncuts = 0;
    for (unsigned i = 0; i < nseg; i++) {
        const struct segment *s = &segs[i];
        cuts[ncuts++] = s->start / PAGE;
        cuts[ncuts++] = ceil_page(s->mem_end);
        if (s->filesz) {
            cuts[ncuts++] = ceil_page(s->start);
            cuts[ncuts++] = s->file_end / PAGE;
            cuts[ncuts++] = ceil_page(s->file_end);
        }
    }
    qsort(cuts, ncuts, sizeof *cuts, cmp_u64);
    size_t unique = 0;
    for (size_t i = 0; i < ncuts; i++)
        if (unique == 0 || cuts[unique - 1] != cuts[i]) cuts[unique++] = cuts[i];

    int rc = 0;
    for (size_t c = 0; c + 1 < unique && rc == 0; c++) {
        uint64_t first = cuts[c], last = cuts[c + 1];
        uint64_t lo = first * PAGE, hi = lo + PAGE, count = last - first;
        uint32_t flags = PT_REG_FLAGS;
        int mapped = 0, loaded = 0;
        const struct segment *only = NULL;
        for (unsigned i = 0; i < nseg; i++) {
            const struct segment *s = &segs[i];
            if (s->start < hi && lo < s->mem_end) { mapped = 1; flags |= s->perms; }
            if (s->start < hi && lo < s->file_end) { loaded++; only = s; }
        }
        if (!mapped) continue; /* a gap between segments: not part of the enclave */
        if (!loaded) {
            for (uint64_t k = 0; k < count; k++) add_measured(h, lo + k * PAGE, flags, NULL);
        } else if (loaded == 1 && only->start <= lo && hi <= only->file_end) {
            uint64_t file_offset = only->offset + (lo - only->start);
            for (uint64_t done = 0; done < count; done += BLOCK_PAGES) {
                uint64_t pages = count - done < BLOCK_PAGES ? count - done : BLOCK_PAGES;
                if (read_exact(fd, block, (size_t)pages * PAGE, file_offset + done * PAGE, err) < 0) { rc = -1; break; }
                for (uint64_t k = 0; k < pages; k++)
                    add_measured(h, lo + (done + k) * PAGE, flags, block + k * PAGE);
            }
        } else {
            for (uint64_t k = 0; k < count && rc == 0; k++) { /* composed: later segments win */
                uint64_t page = lo + k * PAGE;
                memset(block, 0, PAGE);
                for (unsigned i = 0; i < nseg; i++) {
                    const struct segment *s = &segs[i];
                    uint64_t a = page > s->start ? page : s->start;
                    uint64_t b = page + PAGE < s->file_end ? page + PAGE : s->file_end;
                    if (a < b && read_exact(fd, block + (a - page), b - a, s->offset + (a - s->start), err) < 0) {
                        rc = -1;
                        break;
                    }
                }
                if (rc == 0) add_measured(h, page, flags, block);
            }
        }
    }
    free(cuts);
    return rc;
}

int sgx_measure_fd(int fd, const struct sgx_params *params, unsigned char mrenclave[32], struct rt_error *err)
{
    struct stat st;
    if (fstat(fd, &st) < 0) return rt_fail(err, "cannot stat the executable: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) return rt_fail(err, "the executable is not a regular file; give an executable");
    uint64_t file_size = (uint64_t)st.st_size;

    /* embedfs.elf.read_elf_header */
    unsigned char eh[ELF_HEADER_SIZE];
    ssize_t got = pread_upto(fd, eh, sizeof eh, 0);
    if (got < 0) return rt_fail(err, "cannot read the executable: %s", strerror(errno));
    if (got < 4 || memcmp(eh, "\x7f" "ELF", 4) != 0)
        return rt_fail(err, "the executable is not an ELF file; give a Linux x86_64 executable");
    if (got < (ssize_t)sizeof eh)
        return rt_fail(err, "the executable is a truncated ELF file (%zd bytes); give a complete executable", got);
    if (eh[4] != 2 || eh[5] != 1)
        return rt_fail(err, "the executable is a 32-bit or big-endian ELF; only 64-bit little-endian x86_64 "
                       "executables are supported");
    uint16_t e_type = le16(eh + 16), e_machine = le16(eh + 18);
    uint64_t e_entry = le64(eh + 24), e_phoff = le64(eh + 32), e_shoff = le64(eh + 40);
    uint16_t e_phentsize = le16(eh + 54), e_phnum = le16(eh + 56), e_shentsize = le16(eh + 58),
             e_shnum = le16(eh + 60);
    if (e_machine != EM_X86_64)
        return rt_fail(err, "the executable is an ELF for machine %u, not x86_64 (62); give an x86_64 executable",
                       e_machine);
    if (e_type != ET_EXEC && e_type != ET_DYN)
        return rt_fail(err, "the executable is an ELF of type %u, not an executable; give a program (ET_EXEC or PIE)",
                       e_type);
    if (e_phentsize != PHDR_SIZE || e_phnum == 0 || e_phnum >= 0xFFFF)
        return rt_fail(err, "the executable has no usable program-header table; give a linked executable");

    /* embedfs.elf.read_program_headers */
    u128 table_end = (u128)e_phoff + (u128)e_phnum * PHDR_SIZE;
    if (table_end > file_size)
        return rt_fail(err, "the executable is truncated: its program headers end at %llu, the file at %llu",
                       (unsigned long long)(table_end > UINT64_MAX ? UINT64_MAX : (uint64_t)table_end),
                       (unsigned long long)file_size);
    size_t table_size = (size_t)e_phnum * PHDR_SIZE;
    unsigned char *phdrs = malloc(table_size);
    struct segment *segs = malloc(sizeof *segs * e_phnum);
    unsigned char *block = malloc((size_t)BLOCK_PAGES * PAGE);
    struct hasher h = {.out = malloc(OUT_CAP), .len = 0};
    int rc = -1;
    if (!phdrs || !segs || !block || !h.out) {
        rt_fail(err, "out of memory measuring the executable");
        goto out;
    }
    if (read_exact(fd, phdrs, table_size, e_phoff, err) < 0) goto out;
    int any_load = 0;
    unsigned nseg = 0;
    for (unsigned i = 0; i < e_phnum; i++) {
        const unsigned char *ph = phdrs + (size_t)i * PHDR_SIZE;
        uint32_t type = le32(ph), pflags = le32(ph + 4);
        uint64_t offset = le64(ph + 8), vaddr = le64(ph + 16), filesz = le64(ph + 32), memsz = le64(ph + 40);
        if (filesz && (u128)offset + filesz > file_size) {
            rt_fail(err, "the executable is truncated: segment %u ends at %llu, the file at %llu; give a complete "
                    "executable", i, (unsigned long long)((u128)offset + filesz > UINT64_MAX ? UINT64_MAX : offset + filesz),
                    (unsigned long long)file_size);
            goto out;
        }
        if (type == PT_LOAD) {
            any_load = 1;
            if (memsz)
                segs[nseg++] = (struct segment){.offset = offset, .start = vaddr, .filesz = filesz,
                                                .memsz = memsz, .perms = secinfo_perms(pflags)};
        }
    }
    if (e_shnum && e_shoff && (u128)e_shoff + (u128)e_shnum * e_shentsize > file_size) {
        rt_fail(err, "the executable is truncated: its section headers end past the file end (%llu); give a "
                "complete executable", (unsigned long long)file_size);
        goto out;
    }
    if (!any_load) {
        rt_fail(err, "the executable has no PT_LOAD segment; give a linked executable");
        goto out;
    }
    if (check_descriptor(fd, phdrs, e_phnum, file_size, err) < 0) goto out;
    if (nseg == 0) { /* Python fails on min() of no segments */
        rt_fail(err, "the executable has no PT_LOAD segment with memory (all p_memsz are 0); give a linked executable");
        goto out;
    }

    /* measure.plan_enclave */
    if (params->threads < 1) {
        rt_fail(err, "thread count %u must be at least 1", params->threads);
        goto out;
    }
    if (params->heap_size == 0 || params->heap_size % PAGE) {
        rt_fail(err, "heap size %llu must be a positive multiple of 4 KiB, e.g. 64M", (unsigned long long)params->heap_size);
        goto out;
    }
    if (params->stack_size == 0 || params->stack_size % PAGE) {
        rt_fail(err, "stack size %llu must be a positive multiple of 4 KiB, e.g. 64M", (unsigned long long)params->stack_size);
        goto out;
    }
    if (params->ssa_frame_size < 1) {
        rt_fail(err, "SSA frame size %u must be at least 1 page", params->ssa_frame_size);
        goto out;
    }
    uint64_t base = UINT64_MAX;
    for (unsigned i = 0; i < nseg; i++)
        if (segs[i].start < base) base = segs[i].start;
    base = base / PAGE * PAGE;
    u128 top = 0;
    for (unsigned i = 0; i < nseg; i++) {
        u128 end = (u128)(segs[i].start - base) + segs[i].memsz;
        if (end > top) top = end;
    }
    u128 image_end = (top + PAGE - 1) / PAGE * PAGE;
    uint64_t ssa_size = (uint64_t)SSA_FRAMES_PER_THREAD * params->ssa_frame_size * PAGE;
    u128 per_thread = (u128)PAGE + params->stack_size + PAGE + ssa_size;
    u128 cursor = image_end + PAGE + params->heap_size + (u128)params->threads * per_thread;
    if (cursor > LAYOUT_LIMIT) {
        rt_fail(err, "the enclave layout needs more than 2^63 bytes; give smaller segments, heap, stacks or threads");
        goto out;
    }
    if (e_entry < base || (u128)(e_entry - base) >= image_end) {
        rt_fail(err, "entry point %#llx lies outside the loaded segments; give a linked executable",
                (unsigned long long)e_entry);
        goto out;
    }
    uint64_t enclave_size = 2 * PAGE;
    while (enclave_size < (uint64_t)cursor) enclave_size <<= 1;
    for (unsigned i = 0; i < nseg; i++) {
        struct segment *s = &segs[i];
        s->start -= base;
        s->mem_end = s->start + s->memsz; /* <= image_end <= 2^63 */
        s->file_end = s->start + s->filesz; /* filesz < file size < 2^63 */
    }

    /* the record stream: ECREATE, image, heap, then per thread stack, TCS and SSA */
    SHA256_Init(&h.sha);
    add_ecreate(&h, params->ssa_frame_size, enclave_size);
    if (add_image(&h, fd, segs, nseg, block, err) < 0) goto out;
    const uint32_t rw = PT_REG_FLAGS | SECINFO_R | SECINFO_W;
    uint64_t at = (uint64_t)image_end + PAGE; /* after the guard page */
    add_unmeasured(&h, at, params->heap_size / PAGE, rw);
    at += params->heap_size;
    for (uint32_t t = 0; t < params->threads; t++) {
        at += PAGE; /* guard page below each stack */
        add_unmeasured(&h, at, params->stack_size / PAGE, rw);
        at += params->stack_size;
        uint64_t tcs = at, ssa = at + PAGE;
        unsigned char *page = block; /* the TCS (SDM 38.8) */
        memset(page, 0, PAGE);
        put64(page + 16, ssa);             /* OSSA */
        put32(page + 28, SSA_FRAMES_PER_THREAD); /* NSSA */
        put64(page + 32, e_entry - base);  /* OENTRY */
        put64(page + 48, tcs);             /* OFSBASGX */
        put64(page + 56, tcs);             /* OGSBASGX */
        put32(page + 64, 0xFFF);           /* FSLIMIT */
        put32(page + 68, 0xFFF);           /* GSLIMIT */
        add_measured(&h, tcs, PT_TCS_FLAGS, page);
        at = ssa;
        add_unmeasured(&h, at, ssa_size / PAGE, rw);
        at += ssa_size;
    }
    SHA256_Update(&h.sha, h.out, h.len);
    SHA256_Final(mrenclave, &h.sha);
    rc = 0;
out:
    free(phdrs);
    free(segs);
    free(block);
    free(h.out);
    return rc;
}

int file_sha256(int fd, unsigned char digest[32])
{
    const size_t block = (size_t)1 << 20;
    unsigned char *buf = malloc(block);
    if (!buf) return -1;
    SHA256_CTX sha;
    SHA256_Init(&sha);
    uint64_t off = 0;
    for (;;) {
        ssize_t n = pread(fd, buf, block, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            free(buf);
            return -1;
        }
        if (n == 0) break;
        SHA256_Update(&sha, buf, (size_t)n);
        off += (uint64_t)n;
    }
    SHA256_Final(digest, &sha);
    free(buf);
    return 0;
}
