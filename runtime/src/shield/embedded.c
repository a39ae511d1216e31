/* Embedded code: the files of the executable's embedfs, served from sealed memfds holding their
 * checked content, their stat, and dlopen of an embedded shared object. An encrypted member
 * (--encrypted-code) is decrypted with the keys' code key into its memfd; without that key it
 * is EACCES (one line on stderr, once), and its plaintext never touches a disk. */
#include <dlfcn.h>
#include <openssl/sha.h>
#include <sys/mman.h>

#include "shield.h"

/* ------------------------------------------------------------------ memfds */

/* An empty memfd named after path's last component (sealable; volumes use them too). */
int new_memfd(const char *path, int cloexec)
{
    in_shield++;
    int fd = memfd_create(base_name(path), MFD_ALLOW_SEALING | (cloexec ? MFD_CLOEXEC : 0));
    in_shield--;
    return fd;
}

/* EACCES for an encrypted member when the service has no code key (said once per process). */
static int no_code_key(const char *path)
{
    static int said;
    if (!__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED))
        shield_log("%s is encrypted code and the service has no code key: start it with the keys.json the "
                   "conversion wrote; encrypted code is not readable without it", path);
    errno = EACCES;
    return -1;
}

/* A sealed memfd with the checked content of an embedded file. */
int open_embedded(const struct embedfs_member *m, const char *path, int cloexec)
{
    if (m->encrypted && !S.has_code_key) return no_code_key(path);
    int fd = new_memfd(path, cloexec);
    if (fd < 0) return -1;
    unsigned char *buf = NULL;
    if (m->size) {
        if (ftruncate(fd, (off_t)m->size) != 0) goto fail_errno;
        buf = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (buf == MAP_FAILED) goto fail_errno;
        struct rt_error err;
        int rc = embedfs_read_keyed(&S.emb, m, S.has_code_key ? S.code_key : NULL, buf, &err);
        munmap(buf, m->size);
        if (rc != 0) {
            shield_log("embedded code refused: %s", err.msg);
            RESOLVE(close)(fd);
            errno = EIO;
            return -1;
        }
    }
    struct timespec times[2] = {S.emb_time, S.emb_time};  /* fstat says what stat says */
    futimens(fd, times);
    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    return fd;
fail_errno:;
    int saved = errno;
    RESOLVE(close)(fd);
    errno = saved;
    return -1;
}

/* ------------------------------------------------------------------ beside encrypted code */

/* The directories (relative, pointing into the archive's index) that directly hold an
 * encrypted member, in index order, without repeats: built once, on first use. */
struct span { const char *p; size_t n; };
static struct span *secret_dirs;
static size_t secret_dir_count;
static pthread_once_t secret_dirs_once = PTHREAD_ONCE_INIT;

static void find_secret_dirs(void)
{
    secret_dirs = calloc(S.emb.encrypted_count + 1, sizeof *secret_dirs);
    if (!secret_dirs) return;
    for (uint64_t i = 0; i < S.emb.count; i++) {
        const struct embedfs_member *m = &S.emb.members[i];
        if (!m->encrypted) continue;
        const char *slash = memrchr(m->path, '/', m->path_len);
        size_t n = slash ? (size_t)(slash - m->path) : 0;
        struct span *last = secret_dir_count ? &secret_dirs[secret_dir_count - 1] : NULL;
        if (n && !(last && last->n == n && memcmp(last->p, m->path, n) == 0))
            secret_dirs[secret_dir_count++] = (struct span){m->path, n};
    }
}

/* 1 if the absolute path lies below a directory holding encrypted code. A write-open there is
 * refused: what the service writes beside secret code (CPython's __pycache__/NAME.pyc, compiled
 * from it) would be plaintext on disk. */
int beside_encrypted_code(const char *path)
{
    if (!S.emb.encrypted_count || path[0] != '/') return 0;
    pthread_once(&secret_dirs_once, find_secret_dirs);
    const char *rel = path + 1;
    size_t len = strlen(rel);
    for (size_t i = 0; i < secret_dir_count; i++) {
        const struct span *d = &secret_dirs[i];
        if (len > d->n && rel[d->n] == '/' && memcmp(rel, d->p, d->n) == 0) return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ stat */

/* The stat of an embedded file, symlink (t->m) or implied directory (t->is_dir). */
void embedded_stat(const struct target *t, struct stat64 *st)
{
    memset(st, 0, sizeof *st);
    st->st_dev = FAKE_DEV;
    st->st_blksize = 4096;
    st->st_atim = st->st_mtim = st->st_ctim = S.emb_time;
    if (t->is_dir) {
        st->st_ino = 1 + S.emb.count + (uint64_t)strlen(t->path);
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        st->st_size = 4096;
        return;
    }
    const struct embedfs_member *m = t->m;
    st->st_ino = 1 + (uint64_t)(m - S.emb.members);
    st->st_nlink = 1;
    st->st_uid = m->uid;
    st->st_gid = m->gid;
    if (m->kind == EMBEDFS_SYMLINK) {
        st->st_mode = S_IFLNK | 0777;
        st->st_size = m->link_len;
    } else {
        st->st_mode = S_IFREG | (m->mode & 07777);
        st->st_size = (off_t)m->size;
        st->st_blocks = (blkcnt_t)((m->size + 511) / 512);
    }
}

/* ------------------------------------------------------------------ dlopen */

/* 1 if the file at path holds exactly the member's content (size and SHA-256), else 0. */
static int same_as_member(const char *path, const struct embedfs_member *m)
{
    in_shield++;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    in_shield--;
    struct stat64 st;
    int same = 0;
    if (fd >= 0 && RESOLVE(fstat64)(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == m->size) {
        unsigned char digest[32], *data = m->size ? mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
        if (m->size == 0 || data != MAP_FAILED) {
            SHA256(data, m->size, digest);
            same = memcmp(digest, m->sha256, 32) == 0;
            if (m->size) munmap(data, m->size);
        }
    }
    if (fd >= 0) RESOLVE(close)(fd);
    return same;
}

EXPORT void *dlopen(const char *path, int flags)
{
    struct target t;
    if (!ACTIVE() || !path || !strchr(path, '/') || target_of(AT_FDCWD, path, 1, &t) != 0 ||
        (t.kind == T_PASS && !t.in_code) || t.kind == T_VOL)
        return RESOLVE(dlopen)(ACTIVE() && path && strchr(path, '/') && t.changed ? t.path : path, flags);
    if (t.kind != T_EMB || !t.m || t.m->kind != EMBEDFS_FILE) {
        /* under a code root only a measured object is loaded (sealed, or a non-code file left) */
        shield_log("code refused: %s is under a code root and is not measured code", t.path);
        return NULL;
    }
    /* A shared object the conversion kept in place (they all are: their RUNPATH $ORIGIN must
     * name their real directory) is loaded from there once its bytes are checked against the
     * measured member. */
    struct stat64 st;
    in_shield++;
    int on_disk = stat64(t.path, &st) == 0;
    in_shield--;
    /* Encrypted code is never loaded from disk (a copy there would be plaintext, and the
     * conversion removed it): always from a memfd of the decrypted member. */
    if (on_disk && !t.m->encrypted) {
        if (same_as_member(t.path, t.m)) return RESOLVE(dlopen)(t.path, flags);
        shield_log("embedded code refused: %s on disk differs from the measured copy", t.path);
        return NULL;
    }
    int fd = open_embedded(t.m, t.path, 1);
    if (fd < 0) return NULL;  /* logged; dlerror() has nothing: the caller sees a failed load */
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    void *handle = RESOLVE(dlopen)(proc, flags);
    /* The memfd stays open: ld.so knows a loaded object by the name it was opened with, and a
     * closed fd's number (so its /proc path) would come back for the next embedded library. */
    if (!handle) RESOLVE(close)(fd);
    return handle;
}
