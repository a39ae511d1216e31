/* Test driver of src/embedfs.c (used by tests/test_runtime_embedfs.py):
 *
 *   embedfs_tool ELF ls DIR      each direct child: "d name", "f name" or "l name -> target"
 *   embedfs_tool ELF cat PATH    the checked content (a symlink: its target) on stdout; an
 *                                encrypted member is decrypted with the code key given in hex
 *                                in EMBEDFS_CODE_KEY (none: refused, as without keys)
 *   embedfs_tool ELF stat PATH   "kind mode size sha256hex" (mode in octal) or "dir"
 *   embedfs_tool ELF root        "roothashhex count"
 *   embedfs_tool ELF time-open N opens the archive N times, prints "open: X us (count members)"
 *
 * ELF is an injected executable, or the literal "self": the archive of the running tool itself
 * (embedfs_find_self), when the tool is an injected ELF. DIR and PATH are relative to the
 * archive root; a leading '/' and "" or "/" for the root are accepted.
 * Errors: "embedfs_tool: <message>" on stderr, exit 2; exit 1 when a path does not exist. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "embedfs.h"

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("embedfs_tool: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static int print_child(void *ctx, const char *name, size_t len, int is_dir, const struct embedfs_member *m)
{
    (void)ctx;
    if (is_dir) printf("d %.*s\n", (int)len, name);
    else if (m->kind == EMBEDFS_SYMLINK) printf("l %.*s -> %.*s\n", (int)len, name, (int)m->link_len, m->link);
    else printf("f %.*s\n", (int)len, name);
    return 0;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4)
        return fail(2, "usage: embedfs_tool ELF|self ls DIR | cat PATH | stat PATH | root | time-open N");
    const char *elf = argv[1], *cmd = argv[2], *arg = argc > 3 ? argv[3] : "";
    struct rt_error err = {{0}};
    const void *archive = NULL;
    void *owned = NULL;
    size_t size = 0;
    unsigned char root[32];
    int found;
    if (strcmp(elf, "self") == 0) {
        found = embedfs_find_self(&archive, &size, root, &err);
    } else {
        int fd = open(elf, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return fail(2, "cannot open %s: %s", elf, strerror(errno));
        found = embedfs_find_in_file(fd, &owned, &size, root, &err);
        close(fd);
        archive = owned;
    }
    if (found < 0) return fail(2, "%s: %s", elf, err.msg);
    if (found == 0) return fail(2, "%s carries no embedfs archive", elf);

    unsigned char code_key[EMBEDFS_CODE_KEY_SIZE];
    const char *key_hex = getenv("EMBEDFS_CODE_KEY");
    int have_key = key_hex && *key_hex;
    if (have_key && (strlen(key_hex) != 2 * sizeof code_key || hex_decode(key_hex, code_key, sizeof code_key) != 0))
        return fail(2, "EMBEDFS_CODE_KEY must be %zu hex digits", 2 * sizeof code_key);

    struct embedfs fs;
    if (strcmp(cmd, "time-open") == 0) {
        long n = atol(arg);
        if (n <= 0) n = 1;
        double best = 1e30;
        for (long i = 0; i < n; i++) {
            double t0 = now_us();
            if (embedfs_open(&fs, archive, size, &err) != 0) return fail(2, "%s: %s", elf, err.msg);
            double t = now_us() - t0;
            if (t < best) best = t;
            if (i + 1 < n) embedfs_close(&fs);
        }
        printf("open: %.1f us best of %ld (%llu members, %zu bytes)\n", best, n, (unsigned long long)fs.count, size);
        embedfs_close(&fs);
        free(owned);
        return 0;
    }
    if (embedfs_open(&fs, archive, size, &err) != 0) return fail(2, "%s: %s", elf, err.msg);
    if (memcmp(fs.root_hash, root, 32) != 0)
        return fail(2, "%s: the archive's root hash differs from its descriptor; re-inject", elf);

    while (*arg == '/') arg++;
    size_t len = strlen(arg);
    int rc = 0;
    if (strcmp(cmd, "root") == 0) {
        char hex[65];
        hex_encode(fs.root_hash, 32, hex);
        printf("%s %llu\n", hex, (unsigned long long)fs.count);
    } else if (strcmp(cmd, "ls") == 0) {
        while (len && arg[len - 1] == '/') len--;
        if (embedfs_is_dir(&fs, arg, len)) {
            embedfs_list_dir(&fs, arg, len, print_child, NULL);
        } else if (embedfs_lookup(&fs, arg, len)) {
            rc = fail(2, "%s: not a directory", arg);
        } else {
            rc = fail(1, "%s: no such file or directory", arg);
        }
    } else if (strcmp(cmd, "stat") == 0 || strcmp(cmd, "cat") == 0) {
        const struct embedfs_member *m = embedfs_lookup(&fs, arg, len);
        int is_stat = cmd[0] == 's';
        if (!m && embedfs_is_dir(&fs, arg, len)) {
            if (is_stat) printf("dir\n");
            else rc = fail(2, "%s: is a directory", arg);
        } else if (!m) {
            rc = fail(1, "%s: no such file or directory", arg);
        } else if (is_stat) {
            char hex[65];
            hex_encode(m->sha256, 32, hex);
            printf("%s %o %llu %s\n", m->kind == EMBEDFS_FILE ? (m->encrypted ? "encrypted" : "file") : "symlink", m->mode,
                   (unsigned long long)m->size, hex);
        } else {
            unsigned char *buf = malloc(m->size ? m->size : 1);
            if (!buf) {
                rc = fail(2, "%s: out of memory", arg);
            } else if (embedfs_read_keyed(&fs, m, have_key ? code_key : NULL, buf, &err) != 0) {
                rc = fail(2, "%s", err.msg);
            } else if (write_full(STDOUT_FILENO, buf, m->size) != 0) {
                rc = fail(2, "cannot write to stdout: %s", strerror(errno));
            }
            free(buf);
        }
    } else {
        rc = fail(2, "unknown command %s; give ls, cat, stat, root or time-open", cmd);
    }
    if (fflush(stdout) != 0 && rc == 0) rc = fail(2, "cannot write to stdout: %s", strerror(errno));
    embedfs_close(&fs);
    free(owned);
    return rc;
}
