/* Injection files (policy mode, docs/deploy.md): the grant carries each file's path and content
 * (secrets substituted by the launcher); the shield serves it from a sealed memfd at its path,
 * in granted processes only. It is never written to disk, and other processes of the container
 * see what the image has there (nothing, usually).
 *
 * Read-only, as a Kubernetes Secret or a `docker run -v ...:ro` mount is: an open for writing,
 * a truncate, an unlink or rename, access(W_OK) give EROFS (the file system's answer for every
 * user, root included; EACCES would say a permission bit is missing, which chmod could change).
 * stat/fstat show a regular file of mode 0444 with the content's size. A directory on the way to
 * an injected file that does not exist on disk stats as an empty directory (mode 0555) and
 * mkdir of it is EEXIST (os.makedirs(exist_ok=True) works, nothing is made on disk); it is not
 * listed, and listing it gives what the disk has (ENOENT). */
#include <sys/mman.h>

#include "shield.h"

/* Whether t->path is an injection file (then T_INJ, t->inj) or, with dirs, a directory on the way
 * to one (T_INJ, inj NULL, is_dir). 1 if so, else 0 and t unchanged. */
int injected_target(struct target *t, int dirs)
{
    size_t n = strlen(t->path);
    for (size_t i = 0; i < S.ninjected; i++) {
        const char *p = S.injected[i].path;
        if (strcmp(p, t->path) == 0) {
            t->kind = T_INJ;
            t->inj = &S.injected[i];
            t->is_dir = 0;
            return 1;
        }
        if (dirs && n > 1 && strncmp(p, t->path, n) == 0 && p[n] == '/') {
            t->kind = T_INJ;
            t->inj = NULL;
            t->is_dir = 1;
            return 1;
        }
    }
    return 0;
}

/* A sealed memfd holding the file's content (mode 0444), or -1 (errno). */
int open_injected(const struct injected *f, int flags)
{
    int fd = new_memfd(f->path, flags & O_CLOEXEC);
    if (fd < 0) return -1;
    if (write_full(fd, f->content, f->len) != 0 || lseek(fd, 0, SEEK_SET) != 0) {
        int saved = errno;
        RESOLVE(close)(fd);
        errno = saved;
        return -1;
    }
    fchmod(fd, 0444);
    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    return fd;
}

/* The stat of an injection file, or of a directory on the way to one (the real one when it is
 * on disk). 0, or -1 (errno). */
int injected_stat(const struct target *t, struct stat64 *st)
{
    if (t->is_dir) {
        in_shield++;
        int rc = stat64(t->path, st);
        in_shield--;
        if (rc == 0) return 0;
    }
    memset(st, 0, sizeof *st);
    st->st_dev = FAKE_DEV;
    st->st_blksize = 4096;
    st->st_uid = 0;
    st->st_gid = 0;
    uint64_t h = 0xcbf29ce484222325ULL;  /* a stable inode number from the path (FNV-1a) */
    for (const unsigned char *p = (const unsigned char *)t->path; *p; p++) h = (h ^ *p) * 0x100000001b3ULL;
    st->st_ino = (ino64_t)(h | (1ULL << 62));
    if (t->is_dir) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        st->st_size = 4096;
        return 0;
    }
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = (off_t)t->inj->len;
    st->st_blocks = (blkcnt_t)((t->inj->len + 511) / 512);
    return 0;
}
