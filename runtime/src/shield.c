/* libsconify-shield.so: preloaded into the service by sconify-run (simulation mode).
 *
 * In the measured executable only (its /proc/self/exe is the runtime config's executable) it
 * does, outside an enclave, what SCONE's runtime does inside one:
 *
 *  - embedded code: every file of the executable's embedfs is visible at its path. open() of
 *    one returns a sealed memfd holding its content, decompressed and checked against its
 *    member SHA-256 first; stat/lstat/access/readlink/realpath/opendir/scandir see the
 *    embedded tree merged over the real one; dlopen() loads an embedded shared object from
 *    its memfd.
 *  - volumes: a protected region (encrypted or authenticated) has its own fspf. open() of a
 *    file there returns a memfd with the checked plaintext; a file opened for writing is
 *    protected again on close()/fsync() with a fresh key and file id, written to a temp file,
 *    fsynced and renamed over the old one with the re-encrypted fspf, and the new fspf tag is
 *    recorded in the keys file (two phases: "next" before the renames, "current" after). So
 *    only ciphertext is ever on disk and a closed or fsynced write survives a crash.
 *  - ephemeral regions (/tmp): served like an encrypted volume whose fspf exists only in this
 *    process's memory and starts empty. Files the service writes there are ciphertext on disk
 *    under per-file keys that never leave the process, so nobody else can read them and they
 *    are undecryptable once it exits. A regular file or symlink the in-memory fspf does not
 *    record (another process's, an earlier run's, a planted one) is not there for the service:
 *    hidden from listings, ENOENT for stat/open/unlink, replaced by a create. Directories,
 *    sockets and fifos pass through; O_TMPFILE and tmpfile() give an anonymous memfd, and the
 *    libc mkstemp family (which opens inside glibc) is served through open().
 *
 * Every other process (a shell, `ls`) gets plain pass-through: without the keys it sees only
 * ciphertext. Errors the service cannot be told about in detail are printed as one line on
 * stderr ("sconify-shield: ...") and reported as EIO. Interposed are the public libc entry
 * points the measured runtimes use (CPython, libuv); glibc's internal calls are not.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <seccomp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "embedfs.h"
#include "fspf.h"
#include "util.h"

#define EXPORT __attribute__((visibility("default")))
#define HIDDEN_TMP ".sconify-tmp."
#define FAKE_DEV 0x5c0f1fULL

/* ------------------------------------------------------------------ real functions */

#define REAL(ret, name, ...)                                                       \
    typedef ret (*name##_fn)(__VA_ARGS__);                                         \
    static name##_fn real_##name;                                                  \
    static name##_fn get_##name(void)                                              \
    {                                                                              \
        if (!real_##name) real_##name = (name##_fn)dlsym(RTLD_NEXT, #name);        \
        return real_##name;                                                        \
    }
REAL(int, open, const char *, int, ...)
REAL(int, open64, const char *, int, ...)
REAL(int, openat, int, const char *, int, ...)
REAL(int, openat64, int, const char *, int, ...)
REAL(FILE *, fopen, const char *, const char *)
REAL(FILE *, fopen64, const char *, const char *)
REAL(int, stat, const char *, struct stat *)
REAL(int, stat64, const char *, struct stat64 *)
REAL(int, lstat, const char *, struct stat *)
REAL(int, lstat64, const char *, struct stat64 *)
REAL(int, fstatat, int, const char *, struct stat *, int)
REAL(int, fstatat64, int, const char *, struct stat64 *, int)
REAL(int, access, const char *, int)
REAL(int, faccessat, int, const char *, int, int)
REAL(ssize_t, readlink, const char *, char *, size_t)
REAL(ssize_t, readlinkat, int, const char *, char *, size_t)
REAL(char *, realpath, const char *, char *)
REAL(DIR *, opendir, const char *)
REAL(DIR *, fdopendir, int)
REAL(struct dirent *, readdir, DIR *)
REAL(struct dirent64 *, readdir64, DIR *)
REAL(int, closedir, DIR *)
REAL(int, dirfd, DIR *)
REAL(void, rewinddir, DIR *)
REAL(int, scandir, const char *, struct dirent ***, int (*)(const struct dirent *),
     int (*)(const struct dirent **, const struct dirent **))
REAL(int, scandir64, const char *, struct dirent64 ***, int (*)(const struct dirent64 *),
     int (*)(const struct dirent64 **, const struct dirent64 **))
REAL(void *, dlopen, const char *, int)
REAL(int, close, int)
REAL(int, fclose, FILE *)
REAL(int, fsync, int)
REAL(int, fdatasync, int)
REAL(int, dup, int)
REAL(int, dup2, int, int)
REAL(int, dup3, int, int, int)
REAL(int, unlink, const char *)
REAL(int, unlinkat, int, const char *, int)
REAL(int, rename, const char *, const char *)
REAL(int, mkostemps, char *, int, int)
REAL(int, mkostemps64, char *, int, int)
REAL(FILE *, tmpfile, void)
REAL(FILE *, tmpfile64, void)
REAL(int, renameat, int, const char *, int, const char *)

#define RESOLVE(name) get_##name()

/* ------------------------------------------------------------------ state */

struct svol {
    const struct rt_volume *v;
    size_t len;                /* strlen(v->path) */
    struct fspf fs;
    unsigned char key[32];
    unsigned char tag[16];
    int ephemeral;             /* fs lives in memory only: no fspf file, no key, no tag */
    struct rt_volume own;      /* ephemeral: what v points to (fspf_path NULL) */
};

struct tracked {               /* a memfd the service may write: protected again on close */
    struct svol *vol;
    char *path;
    dev_t dev;                 /* the memfd's identity (reopen_tracked checks the fd is still it) */
    ino_t ino;
};

static struct {
    int active;
    int has_emb;
    struct embedfs emb;
    struct rt_config cfg;
    char *keys_path;
    int keys_persist;          /* 0: debug-mode keys from the environment (tags printed) */
    struct svol *vols;
    size_t nvols;
    pthread_mutex_t lock;      /* volumes, tracked fds, fake directories */
    struct tracked *fds;
    int nfds;
} S = {.lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP};

static __thread int in_shield;  /* our own libc calls pass straight through */

#define ACTIVE() (S.active && !in_shield)

static void shield_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void shield_log(const char *fmt, ...)
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

/* ------------------------------------------------------------------ paths */

/* Lexically normalise an absolute path (collapse //, ., ..). */
static void normalise(char *path)
{
    char *out = path, *in = path;
    while (*in) {
        while (*in == '/') in++;
        if (!*in) break;
        char *end = strchrnul(in, '/');
        size_t len = (size_t)(end - in);
        if (len == 1 && in[0] == '.') {
        } else if (len == 2 && in[0] == '.' && in[1] == '.') {
            while (out > path && *--out != '/') {}
        } else {
            *out++ = '/';
            memmove(out, in, len);
            out += len;
        }
        in = end;
    }
    if (out == path) *out++ = '/';
    *out = '\0';
}

/* path (relative to dirfd or the cwd) as an absolute, normalised path. */
static int absolute(int dirfd, const char *path, char *out, size_t len)
{
    if (!path || !*path) return -1;
    if (path[0] == '/') {
        if (strlen(path) >= len) return -1;
        strcpy(out, path);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base)) return -1;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            in_shield++;
            ssize_t n = RESOLVE(readlink)(link, base, sizeof base - 1);
            in_shield--;
            if (n <= 0 || base[0] != '/') return -1;
            base[n] = '\0';
        }
        if (strlen(base) + strlen(path) + 2 > len) return -1;
        snprintf(out, len, "%s/%s", base, path);
    }
    normalise(out);
    return 0;
}

enum { T_PASS, T_EMB, T_VOL };

struct target {
    int kind;
    int is_dir;                         /* T_EMB: an embedded (implied) directory */
    const struct embedfs_member *m;     /* T_EMB: the member (file or unfollowed symlink) */
    struct svol *vol;                   /* T_VOL */
    int changed;                        /* path differs from what the caller passed */
    char path[PATH_MAX];                /* absolute, normalised, embedded symlinks resolved */
};

/* Mounted at run time, never part of the image: not in a '/' volume (--authenticate-root). */
static int run_time_mount(const char *path)
{
    static const char *const mounts[] = {"/proc", "/dev", "/sys", "/run", "/.sconify"};
    for (size_t i = 0; i < sizeof mounts / sizeof mounts[0]; i++) {
        size_t n = strlen(mounts[i]);
        if (strncmp(path, mounts[i], n) == 0 && (path[n] == '/' || path[n] == '\0')) return 1;
    }
    return 0;
}

static struct svol *volume_of(const char *path)
{
    if (run_time_mount(path)) return NULL;
    struct svol *best = NULL;
    for (size_t i = 0; i < S.nvols; i++) {
        struct svol *v = &S.vols[i];
        if (strncmp(path, v->v->path, v->len) == 0 && (path[v->len] == '/' || path[v->len] == '\0' || v->len == 1))
            if (!best || v->len > best->len) best = v;
    }
    return best;
}

/* Resolve embedded symlinks in t->path (the last component only when follow) and find out
 * whether it names embedded code, a volume, or neither. */
static void locate(struct target *t, int follow)
{
    t->kind = T_PASS;
    t->m = NULL;
    t->is_dir = 0;
    for (int hops = 0; S.has_emb && hops < 40; hops++) {
        char *p = t->path;
        size_t len = strlen(p);
        int restarted = 0;
        for (size_t end = 1; end <= len; end++) {
            if (end < len && p[end] != '/') continue;
            const char *rel = p + 1;
            size_t rlen = end - 1;
            if (rlen == 0) continue;
            const struct embedfs_member *m = embedfs_lookup(&S.emb, rel, rlen);
            if (!m) {
                if (embedfs_is_dir(&S.emb, rel, rlen)) {
                    if (end == len) { t->kind = T_EMB; t->is_dir = 1; return; }
                    continue;
                }
                goto volumes;
            }
            if (m->kind == EMBEDFS_SYMLINK && (end < len || follow)) {
                char next[PATH_MAX];
                int n;
                if (m->link_len && m->link[0] == '/')
                    n = snprintf(next, sizeof next, "%.*s%s", (int)m->link_len, m->link, p + end);
                else {
                    const char *slash = memrchr(p, '/', end);
                    n = snprintf(next, sizeof next, "%.*s/%.*s%s", (int)(slash - p), p, (int)m->link_len, m->link,
                                 p + end);
                }
                if (n < 0 || (size_t)n >= sizeof next) goto volumes;
                normalise(next);
                strcpy(t->path, next);
                t->changed = 1;
                restarted = 1;
                break;
            }
            if (end == len) { t->kind = T_EMB; t->m = m; return; }
            goto volumes;  /* a path through a regular file: the real fs says ENOTDIR */
        }
        if (!restarted) break;
    }
volumes:
    if (S.nvols && (t->vol = volume_of(t->path)) != NULL) t->kind = T_VOL;
}

static int target_of(int dirfd, const char *path, int follow, struct target *t)
{
    t->changed = 0;
    if (absolute(dirfd, path, t->path, sizeof t->path) != 0) return -1;
    if (path[0] != '/' || strcmp(path, t->path) != 0) t->changed = 1;
    locate(t, follow);
    return 0;
}

static int hidden_name(const char *name)
{
    return strcmp(name, VOLUME_FSPF_NAME) == 0 || strncmp(name, HIDDEN_TMP, strlen(HIDDEN_TMP)) == 0;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Names the service never sees as files of its own in vol: a volume's fspf and the commit's
 * temp files (an ephemeral region has no fspf file, so only the latter). */
static int reserved_name(const struct svol *vol, const char *name)
{
    return vol->ephemeral ? strncmp(name, HIDDEN_TMP, strlen(HIDDEN_TMP)) == 0 : hidden_name(name);
}

static const char *region_word(const struct svol *vol) { return vol->ephemeral ? "ephemeral region" : "volume"; }

/* Ephemeral regions start empty: a regular file or a symlink at path that the in-memory fspf
 * does not record was not written by this process (another process's, an earlier run's, or
 * planted) and is not there for the service. Directories, sockets, fifos and devices are.
 * Called with S.lock held. */
static int ephemeral_hidden(struct svol *vol, const char *path)
{
    if (!vol->ephemeral || strcmp(path, vol->v->path) == 0 || fspf_find(&vol->fs, path)) return 0;
    struct stat64 st;
    in_shield++;
    int rc = lstat64(path, &st);
    in_shield--;
    return rc == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode));
}

/* ------------------------------------------------------------------ memfds */

static int new_memfd(const char *path, int cloexec)
{
    in_shield++;
    int fd = memfd_create(base_name(path), MFD_ALLOW_SEALING | (cloexec ? MFD_CLOEXEC : 0));
    in_shield--;
    return fd;
}

/* A sealed memfd with the checked content of an embedded file. */
static int open_embedded(const struct embedfs_member *m, const char *path, int cloexec)
{
    int fd = new_memfd(path, cloexec);
    if (fd < 0) return -1;
    unsigned char *buf = NULL;
    if (m->size) {
        if (ftruncate(fd, (off_t)m->size) != 0) goto fail_errno;
        buf = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (buf == MAP_FAILED) goto fail_errno;
        struct rt_error err;
        int rc = embedfs_read(&S.emb, m, buf, &err);
        munmap(buf, m->size);
        if (rc != 0) {
            shield_log("embedded code refused: %s", err.msg);
            RESOLVE(close)(fd);
            errno = EIO;
            return -1;
        }
    }
    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    return fd;
fail_errno:;
    int saved = errno;
    RESOLVE(close)(fd);
    errno = saved;
    return -1;
}

/* ------------------------------------------------------------------ volumes */

static void track(int fd, struct svol *vol, const char *path)
{
    if (fd >= S.nfds) {
        int n = fd + 64;
        struct tracked *grown = realloc(S.fds, (size_t)n * sizeof *grown);
        if (!grown) return;
        memset(grown + S.nfds, 0, (size_t)(n - S.nfds) * sizeof *grown);
        S.fds = grown;
        S.nfds = n;
    }
    free(S.fds[fd].path);
    S.fds[fd].vol = vol;
    S.fds[fd].path = strdup(path);
    struct stat64 st;
    int known = fstat64(fd, &st) == 0;
    S.fds[fd].dev = known ? st.st_dev : 0;
    S.fds[fd].ino = known ? st.st_ino : 0;
}

static struct tracked *tracked_fd(int fd)
{
    return fd >= 0 && fd < S.nfds && S.fds[fd].path ? &S.fds[fd] : NULL;
}

static void untrack(int fd)
{
    struct tracked *t = tracked_fd(fd);
    if (t) {
        free(t->path);
        t->path = NULL;
        t->vol = NULL;
    }
}

/* The service removed or renamed a file it may still have open for writing: as with the
 * kernel, a later close must not bring the old name back. unlink: to NULL (the fds keep their
 * content but are no longer protected anywhere, like an unlinked inode); rename: to the new
 * name (prefix: also every file below a renamed directory). Called with S.lock held. */
static void retarget_tracked(struct svol *vol, const char *from, const char *to, int prefix)
{
    size_t n = strlen(from);
    for (int fd = 0; fd < S.nfds; fd++) {
        struct tracked *t = &S.fds[fd];
        if (!t->path || t->vol != vol || strncmp(t->path, from, n) != 0) continue;
        if (t->path[n] != '\0' && !(prefix && t->path[n] == '/')) continue;
        if (!to) {
            untrack(fd);
            continue;
        }
        char next[PATH_MAX];
        if (snprintf(next, sizeof next, "%s%s", to, t->path + n) >= (int)sizeof next) {
            untrack(fd);
            continue;
        }
        free(t->path);
        t->path = strdup(next);
    }
}

/* Ephemeral regions: if this process has path open for writing, a new open file description
 * of that memfd (with its own offset and access mode), so that the service sees its own writes
 * before they are committed, as with the kernel (NamedTemporaryFile: write, flush, open by
 * name). -1 if there is none. Called with S.lock held. */
static int reopen_tracked(struct svol *vol, const char *path, int flags)
{
    int reflags = flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW | O_DIRECTORY);
    if ((flags & O_ACCMODE) == O_RDONLY) reflags &= ~O_TRUNC;
    for (int fd = 0; fd < S.nfds; fd++) {
        struct tracked *t = &S.fds[fd];
        struct stat64 st;
        if (!t->path || t->vol != vol || strcmp(t->path, path) != 0) continue;
        if (fstat64(fd, &st) != 0 || st.st_dev != t->dev || st.st_ino != t->ino) continue;
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        in_shield++;
        int copy = open(proc, reflags);
        in_shield--;
        if (copy >= 0) return copy;
    }
    return -1;
}

static void tmp_name(const char *path, char *out, size_t len)
{
    const char *base = base_name(path);
    snprintf(out, len, "%.*s" HIDDEN_TMP "%s.%ld", (int)(base - path), path, base, (long)getpid());
}

static int fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    int fd = RESOLVE(open)(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = RESOLVE(fsync)(fd);
    RESOLVE(close)(fd);
    return rc;
}

static int copy_fd(int from, int to, uint64_t size)
{
    unsigned char buf[1 << 16];
    for (uint64_t off = 0; off < size;) {
        size_t n = size - off < sizeof buf ? (size_t)(size - off) : sizeof buf;
        if (pread_full(from, buf, n, off) != 0 || pwrite_full(to, buf, n, off) != 0) return -1;
        off += n;
    }
    return 0;
}

/* Record a new fspf tag: phase 1 ("next", before the renames) or 2 (after). */
static int record_tag(struct svol *vol, const unsigned char tag[16], int next, struct rt_error *err)
{
    if (!S.keys_persist) {
        if (!next) {
            char hex[33];
            hex_encode(tag, 16, hex);
            shield_log("volume %s: new fspf tag %s (debug-mode keys: record it as SCONE_FSPF_TAG)", vol->v->path, hex);
        }
        return 0;
    }
    return keys_record_tag(S.keys_path, vol->v->path, tag, next, err);
}

/* The commit of a volume change: protect the plaintext in plain_fd (if path) as path, drop the
 * record of remove (if any), and write both the stored file and the fspf crash-safely. Called
 * with S.lock held. Returns 0, or -1 with errno set and one line logged.
 * An ephemeral region's fspf lives in memory only: there the stored file is still written to a
 * temp file and renamed into place (a reader sees the old or the new ciphertext), but nothing
 * is fsynced (the content is gone at exit anyway), no fspf is written and no tag recorded; an
 * error creating the stored file is the service's own (ENOENT, EACCES...), as the kernel's
 * open would have given it, without a line on stderr. */
static int commit(struct svol *vol, const char *path, int plain_fd, const char *remove)
{
    struct rt_error err = {{0}};
    const struct fspf_region *region = &vol->fs.regions[0];
    char stored_tmp[PATH_MAX] = "", fspf_tmp[PATH_MAX];
    struct fspf_file rec = {0}, *old = NULL, saved_old = {0}, saved_removed = {0};
    int have_rec = 0, have_removed = 0, saved_errno = EIO;
    unsigned char *sealed = NULL, tag[16];
    size_t sealed_len = 0;
    in_shield++;
    if (path) {
        struct stat64 st;
        if (fstat64(plain_fd, &st) != 0) goto fail_errno;
        tmp_name(path, stored_tmp, sizeof stored_tmp);
        int out = open(stored_tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, vol->ephemeral ? 0600 : 0644);
        if (out < 0) {
            if (vol->ephemeral) {
                stored_tmp[0] = '\0';
                saved_errno = errno;
                in_shield--;
                errno = saved_errno;
                return -1;
            }
            rt_fail(&err, "cannot write %s: %s", path, strerror(errno));
            goto fail_errno;
        }
        int rc = fspf_protect_file(path, region->protection, region->chunk_size, region->key_length, plain_fd,
                                   (uint64_t)st.st_size, out, &rec, &err);
        if (rc == 0 && region->protection == FSPF_AUTHENTICATED) rc = copy_fd(plain_fd, out, (uint64_t)st.st_size);
        if (rc == 0 && !vol->ephemeral && fsync(out) != 0) { rc = -1; rt_fail(&err, "cannot fsync %s: %s", path, strerror(errno)); }
        saved_errno = errno;
        close(out);
        if (rc != 0) { errno = saved_errno; goto fail_errno; }
        have_rec = 1;
    }
    /* Change the fspf in memory, keeping what is needed to undo it. */
    if (path && (old = fspf_find(&vol->fs, path)) != NULL) {
        saved_old = *old;
        saved_old.path = strdup(old->path);
        if (old->tag_count) {
            saved_old.tags = malloc(old->tag_count * 16u);
            memcpy(saved_old.tags, old->tags, old->tag_count * 16u);
        }
    }
    if (remove) {
        struct fspf_file *r = fspf_find(&vol->fs, remove);
        if (r) {
            saved_removed = *r;
            saved_removed.path = strdup(r->path);
            if (r->tag_count) {
                saved_removed.tags = malloc(r->tag_count * 16u);
                memcpy(saved_removed.tags, r->tags, r->tag_count * 16u);
            }
            have_removed = 1;
            fspf_remove(&vol->fs, remove);
        }
    }
    if (have_rec) {
        if (fspf_put(&vol->fs, &rec, &err) != 0) goto undo;
        have_rec = 0;
    }
    if (vol->ephemeral) {
        if (stored_tmp[0] && rename(stored_tmp, path) != 0) {
            rt_fail(&err, "cannot replace %s: %s", path, strerror(errno));
            goto undo;
        }
        if (remove && (!path || strcmp(remove, path) != 0)) unlink(remove);
        fspf_file_free(&saved_old);
        fspf_file_free(&saved_removed);
        in_shield--;
        return 0;
    }
    if (fspf_save_encrypted(&vol->fs, vol->key, &sealed, &sealed_len, tag, &err) != 0) goto undo;
    snprintf(fspf_tmp, sizeof fspf_tmp, "%s" HIDDEN_TMP "%ld", vol->v->fspf_path, (long)getpid());
    {
        int out = open(fspf_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (out < 0 || write_full(out, sealed, sealed_len) != 0 || fsync(out) != 0) {
            rt_fail(&err, "cannot write the fspf of volume %s: %s", vol->v->path, strerror(errno));
            if (out >= 0) close(out);
            unlink(fspf_tmp);
            goto undo;
        }
        close(out);
    }
    if (record_tag(vol, tag, 1, &err) != 0) { unlink(fspf_tmp); goto undo; }
    if ((stored_tmp[0] && rename(stored_tmp, path) != 0) || rename(fspf_tmp, vol->v->fspf_path) != 0) {
        rt_fail(&err, "cannot replace files of volume %s: %s", vol->v->path, strerror(errno));
        unlink(fspf_tmp);
        goto undo;
    }
    if (remove && (!path || strcmp(remove, path) != 0)) unlink(remove);
    fsync_parent(vol->v->fspf_path);
    if (path) fsync_parent(path);
    memcpy(vol->tag, tag, 16);
    if (record_tag(vol, tag, 0, &err) != 0) shield_log("%s", err.msg);  /* "next" is recorded: start-up promotes it */
    free(sealed);
    fspf_file_free(&saved_old);
    fspf_file_free(&saved_removed);
    in_shield--;
    return 0;
undo:
    if (path) {
        if (saved_old.path) fspf_put(&vol->fs, &saved_old, NULL), saved_old.path = NULL;
        else fspf_remove(&vol->fs, path);
    }
    if (have_removed) fspf_put(&vol->fs, &saved_removed, NULL), saved_removed.path = NULL;
    saved_errno = EIO;
    goto fail;
fail_errno:
    saved_errno = errno == EROFS || errno == ENOSPC || errno == EDQUOT ? errno : EIO;
fail:
    if (have_rec) fspf_file_free(&rec);
    fspf_file_free(&saved_old);
    fspf_file_free(&saved_removed);
    free(sealed);
    if (stored_tmp[0]) unlink(stored_tmp);
    shield_log("%s %s: write of %s not saved: %s", region_word(vol), vol->v->path, path ? path : remove, err.msg[0] ? err.msg : strerror(saved_errno));
    in_shield--;
    errno = saved_errno;
    return -1;
}

static int open_volume_file(struct target *t, int flags, mode_t mode)
{
    (void)mode;
    int writable = (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
    pthread_mutex_lock(&S.lock);
    struct fspf_file *rec = fspf_find(&t->vol->fs, t->path);
    int fd = -1;
    struct stat64 st;
    in_shield++;
    /* an ephemeral region does not follow a symlink nobody recorded: it is hidden */
    int exists = (t->vol->ephemeral ? lstat64(t->path, &st) : stat64(t->path, &st)) == 0;
    in_shield--;
    if (exists && S_ISDIR(st.st_mode)) {
        pthread_mutex_unlock(&S.lock);
        return -2;  /* directories pass through */
    }
    if (!rec && t->vol->ephemeral) {
        if (exists && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
            pthread_mutex_unlock(&S.lock);
            return -2;  /* a socket, fifo or device: the kernel's */
        }
        if (!(flags & O_CREAT)) {
            pthread_mutex_unlock(&S.lock);
            errno = ENOENT;  /* not written by this process: not there (a create replaces it) */
            return -1;
        }
    } else if (!rec) {
        if (!(flags & O_CREAT)) {
            pthread_mutex_unlock(&S.lock);
            if (exists) shield_log("%s is not recorded in the fspf of volume %s (added behind the service's back); refused",
                                   t->path, t->vol->v->path);
            errno = exists ? EACCES : ENOENT;
            return -1;
        }
    } else if ((flags & O_CREAT) && (flags & O_EXCL)) {
        pthread_mutex_unlock(&S.lock);
        errno = EEXIST;
        return -1;
    }
    if (rec && t->vol->ephemeral && (fd = reopen_tracked(t->vol, t->path, flags)) >= 0) {
        if (writable) track(fd, t->vol, t->path);  /* the content is shared: either close commits it */
        goto out;
    }
    fd = new_memfd(t->path, flags & O_CLOEXEC);
    if (fd < 0) goto out;
    if (rec && !(flags & O_TRUNC && writable)) {
        in_shield++;
        int stored = open(t->path, O_RDONLY | O_CLOEXEC);
        in_shield--;
        struct rt_error err;
        if (stored < 0 || fspf_open_file(rec, stored, fd, &err) != 0) {
            if (stored < 0) rt_fail(&err, "%s: stored file missing (%s)", t->path, strerror(errno));
            shield_log("%s %s: %s", region_word(t->vol), t->vol->v->path, err.msg);
            if (stored >= 0) RESOLVE(close)(stored);
            RESOLVE(close)(fd);
            fd = -1;
            errno = EIO;
            goto out;
        }
        RESOLVE(close)(stored);
        lseek(fd, 0, SEEK_SET);
    }
    if (writable) {
        if (flags & O_APPEND) fcntl(fd, F_SETFL, O_APPEND);
        if (!rec || (flags & O_TRUNC)) {
            /* a new or truncated file exists (empty) from now on, as with the kernel */
            if (commit(t->vol, t->path, fd, NULL) != 0) {
                int saved = errno;
                RESOLVE(close)(fd);
                fd = -1;
                errno = saved;
                goto out;
            }
        }
        track(fd, t->vol, t->path);
    } else {
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    }
out:
    pthread_mutex_unlock(&S.lock);
    return fd;
}

/* Protect a tracked memfd's content again (close, fsync). */
static int flush_tracked(int fd)
{
    if (!S.active) return 0;
    pthread_mutex_lock(&S.lock);
    struct tracked *t = tracked_fd(fd);
    int rc = t ? commit(t->vol, t->path, fd, NULL) : 0;
    pthread_mutex_unlock(&S.lock);
    return rc;
}

/* ------------------------------------------------------------------ open */

static int is_write_open(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
}

/* O_TMPFILE in an ephemeral region: an unnamed file that lives as long as its descriptors.
 * An anonymous memfd: its content never reaches the disk. (linkat() cannot give it a name.) */
static int open_anonymous(const struct target *t, int flags)
{
    struct stat64 st;
    in_shield++;
    int rc = stat64(t->path, &st);
    in_shield--;
    if (rc != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    if ((flags & O_ACCMODE) == O_RDONLY) {
        errno = EINVAL;
        return -1;
    }
    int fd = new_memfd("tmpfile", flags & O_CLOEXEC);
    if (fd >= 0 && (flags & O_APPEND)) fcntl(fd, F_SETFL, O_APPEND);
    return fd;
}

/* -2: not ours, call the real function with t->path */
static int shield_open(int dirfd, const char *path, int flags, mode_t mode, struct target *t)
{
    if (!ACTIVE() || !path || target_of(dirfd, path, !(flags & O_NOFOLLOW), t) != 0) return -2;
    if (t->kind == T_EMB && t->m && t->m->kind == EMBEDFS_FILE && !(flags & O_DIRECTORY)) {
        if (is_write_open(flags)) {
            errno = EROFS;
            return -1;
        }
        if ((flags & O_CREAT) && (flags & O_EXCL)) {
            errno = EEXIST;
            return -1;
        }
        return open_embedded(t->m, t->path, flags & O_CLOEXEC);
    }
    if (t->kind == T_EMB && t->m && t->m->kind == EMBEDFS_SYMLINK && (flags & O_NOFOLLOW)) {
        errno = ELOOP;
        return -1;
    }
    if (t->kind == T_VOL && t->vol->ephemeral && (flags & O_TMPFILE) == O_TMPFILE) return open_anonymous(t, flags);
    if (t->kind == T_VOL && !(flags & (O_DIRECTORY | O_PATH)) && !reserved_name(t->vol, base_name(t->path)) &&
        strcmp(t->path, t->vol->v->path) != 0)
        return open_volume_file(t, flags, mode);
    return -2;
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_BODY(realname, dirfd, ...)                                               \
    struct target t;                                                                  \
    t.changed = 0;                                                                    \
    int fd = shield_open(dirfd, path, flags, mode, &t);                               \
    if (fd != -2) return fd;                                                          \
    return RESOLVE(realname)(__VA_ARGS__);

#define PATH_OR_RESOLVED (ACTIVE() && t.changed ? t.path : path)

EXPORT int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    OPEN_BODY(open, AT_FDCWD, PATH_OR_RESOLVED, flags, mode)
}

EXPORT int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    OPEN_BODY(open64, AT_FDCWD, PATH_OR_RESOLVED, flags, mode)
}

EXPORT int __open_2(const char *path, int flags) { return open(path, flags); }
EXPORT int __open64_2(const char *path, int flags) { return open64(path, flags); }

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    OPEN_BODY(openat, dirfd, dirfd, PATH_OR_RESOLVED, flags, mode)
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    OPEN_BODY(openat64, dirfd, dirfd, PATH_OR_RESOLVED, flags, mode)
}

EXPORT int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
EXPORT int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }
EXPORT int creat(const char *path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
EXPORT int creat64(const char *path, mode_t mode) { return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

static int fopen_flags(const char *mode)
{
    int flags;
    switch (mode[0]) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: return -1;
    }
    for (const char *c = mode + 1; *c && *c != ','; c++) {
        if (*c == '+') flags = (flags & ~O_ACCMODE) | O_RDWR;
        else if (*c == 'e') flags |= O_CLOEXEC;
        else if (*c == 'x') flags |= O_EXCL;
    }
    return flags;
}

static FILE *shield_fopen(const char *path, const char *mode, fopen_fn real)
{
    struct target t;
    t.changed = 0;
    int flags = mode ? fopen_flags(mode) : -1;
    if (flags < 0 || !ACTIVE()) return real(path, mode);
    int fd = shield_open(AT_FDCWD, path, flags, 0666, &t);
    if (fd == -2) return real(PATH_OR_RESOLVED, mode);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, mode);
    if (!f) {
        int saved = errno;
        pthread_mutex_lock(&S.lock);
        untrack(fd);
        pthread_mutex_unlock(&S.lock);
        RESOLVE(close)(fd);
        errno = saved;
    }
    return f;
}

EXPORT FILE *fopen(const char *path, const char *mode) { return shield_fopen(path, mode, RESOLVE(fopen)); }
EXPORT FILE *fopen64(const char *path, const char *mode) { return shield_fopen(path, mode, (fopen_fn)RESOLVE(fopen64)); }

/* ------------------------------------------------------------------ close, fsync, dup */

EXPORT int close(int fd)
{
    int rc = 0, saved = 0;
    if (S.active && tracked_fd(fd)) {
        rc = flush_tracked(fd);
        saved = errno;
        pthread_mutex_lock(&S.lock);
        untrack(fd);
        pthread_mutex_unlock(&S.lock);
    }
    int r = RESOLVE(close)(fd);
    if (rc != 0) {
        errno = saved;
        return -1;
    }
    return r;
}

EXPORT int fclose(FILE *f)
{
    int fd = f ? fileno(f) : -1;
    if (S.active && tracked_fd(fd)) {
        int flushed = fflush(f);
        int rc = flush_tracked(fd);
        int saved = errno;
        pthread_mutex_lock(&S.lock);
        untrack(fd);
        pthread_mutex_unlock(&S.lock);
        int r = RESOLVE(fclose)(f);
        if (rc != 0 || flushed != 0) {
            errno = rc != 0 ? saved : errno;
            return EOF;
        }
        return r;
    }
    return RESOLVE(fclose)(f);
}

EXPORT int fsync(int fd)
{
    if (S.active && tracked_fd(fd)) return flush_tracked(fd);
    return RESOLVE(fsync)(fd);
}

EXPORT int fdatasync(int fd)
{
    if (S.active && tracked_fd(fd)) return flush_tracked(fd);
    return RESOLVE(fdatasync)(fd);
}

static int dup_tracked(int from, int to)
{
    if (to >= 0 && S.active) {
        pthread_mutex_lock(&S.lock);
        struct tracked *t = tracked_fd(from);
        if (t) {
            struct svol *vol = t->vol;
            char *path = strdup(t->path);
            track(to, vol, path);
            free(path);
        } else {
            untrack(to);
        }
        pthread_mutex_unlock(&S.lock);
    }
    return to;
}

EXPORT int dup(int fd) { return dup_tracked(fd, RESOLVE(dup)(fd)); }

EXPORT int dup2(int fd, int to)
{
    if (S.active && fd != to && tracked_fd(to)) close(to);
    return dup_tracked(fd, RESOLVE(dup2)(fd, to));
}

EXPORT int dup3(int fd, int to, int flags)
{
    if (S.active && fd != to && tracked_fd(to)) close(to);
    return dup_tracked(fd, RESOLVE(dup3)(fd, to, flags));
}

/* ------------------------------------------------------------------ stat */

static void embedded_stat(const struct target *t, struct stat64 *st)
{
    memset(st, 0, sizeof *st);
    st->st_dev = FAKE_DEV;
    st->st_blksize = 4096;
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

/* 0: filled, -1: error (errno), -2: not ours (real call with t->path). */
static int shield_stat(int dirfd, const char *path, struct stat64 *st, int follow, struct target *t)
{
    if (!ACTIVE() || !path || !*path || target_of(dirfd, path, follow, t) != 0) return -2;
    if (t->kind == T_EMB) {
        if (t->is_dir) {
            in_shield++;
            int rc = stat64(t->path, st);  /* the real directory, when it is there */
            in_shield--;
            if (rc == 0 && S_ISDIR(st->st_mode)) return 0;
        }
        embedded_stat(t, st);
        return 0;
    }
    if (t->kind == T_VOL) {
        in_shield++;
        int rc = follow ? stat64(t->path, st) : lstat64(t->path, st);
        in_shield--;
        if (rc != 0) return -1;
        if (t->vol->ephemeral) {
            pthread_mutex_lock(&S.lock);
            int hidden = ephemeral_hidden(t->vol, t->path);
            pthread_mutex_unlock(&S.lock);
            if (hidden) {
                errno = ENOENT;
                return -1;
            }
        }
        if (S_ISREG(st->st_mode)) {
            pthread_mutex_lock(&S.lock);
            struct fspf_file *rec = fspf_find(&t->vol->fs, t->path);
            if (rec) {
                st->st_size = (off_t)rec->size;
                st->st_blocks = (blkcnt_t)((rec->size + 511) / 512);
            }
            pthread_mutex_unlock(&S.lock);
        }
        return 0;
    }
    return -2;
}

#define STAT_BODY(follow, realcall)                                  \
    struct target t;                                                 \
    t.changed = 0;                                                   \
    int rc = shield_stat(AT_FDCWD, path, (struct stat64 *)st, follow, &t); \
    if (rc != -2) return rc;                                         \
    return realcall;

EXPORT int stat(const char *path, struct stat *st) { STAT_BODY(1, RESOLVE(stat)(PATH_OR_RESOLVED, st)) }
EXPORT int stat64(const char *path, struct stat64 *st) { STAT_BODY(1, RESOLVE(stat64)(PATH_OR_RESOLVED, st)) }
EXPORT int lstat(const char *path, struct stat *st) { STAT_BODY(0, RESOLVE(lstat)(PATH_OR_RESOLVED, st)) }
EXPORT int lstat64(const char *path, struct stat64 *st) { STAT_BODY(0, RESOLVE(lstat64)(PATH_OR_RESOLVED, st)) }

EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    struct target t;
    if (!(flags & AT_EMPTY_PATH) || (path && *path)) {
        int rc = shield_stat(dirfd, path, (struct stat64 *)st, !(flags & AT_SYMLINK_NOFOLLOW), &t);
        if (rc != -2) return rc;
        if (ACTIVE() && t.changed) return RESOLVE(fstatat)(AT_FDCWD, t.path, st, flags);
    }
    return RESOLVE(fstatat)(dirfd, path, st, flags);
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    struct target t;
    if (!(flags & AT_EMPTY_PATH) || (path && *path)) {
        int rc = shield_stat(dirfd, path, st, !(flags & AT_SYMLINK_NOFOLLOW), &t);
        if (rc != -2) return rc;
        if (ACTIVE() && t.changed) return RESOLVE(fstatat64)(AT_FDCWD, t.path, st, flags);
    }
    return RESOLVE(fstatat64)(dirfd, path, st, flags);
}

/* The pre-2.33 glibc entry points, for executables built against an older glibc. */
EXPORT int __xstat(int ver, const char *path, struct stat *st) { (void)ver; return stat(path, st); }
EXPORT int __xstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return stat64(path, st); }
EXPORT int __lxstat(int ver, const char *path, struct stat *st) { (void)ver; return lstat(path, st); }
EXPORT int __lxstat64(int ver, const char *path, struct stat64 *st) { (void)ver; return lstat64(path, st); }
EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags)
{
    (void)ver;
    return fstatat(dirfd, path, st, flags);
}
EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags)
{
    (void)ver;
    return fstatat64(dirfd, path, st, flags);
}

static int shield_access(int dirfd, const char *path, int amode, int flags, struct target *t)
{
    struct stat64 st;
    int rc = shield_stat(dirfd, path, &st, !(flags & AT_SYMLINK_NOFOLLOW), t);
    if (rc == -2 || t->kind != T_EMB) return rc == -1 ? -1 : -2;
    if (amode & W_OK) {
        errno = EROFS;
        return -1;
    }
    if ((amode & X_OK) && !(st.st_mode & 0111)) {
        errno = EACCES;
        return -1;
    }
    return 0;
}

EXPORT int access(const char *path, int amode)
{
    struct target t;
    int rc = shield_access(AT_FDCWD, path, amode, 0, &t);
    if (rc != -2) return rc;
    return RESOLVE(access)(PATH_OR_RESOLVED, amode);
}

EXPORT int faccessat(int dirfd, const char *path, int amode, int flags)
{
    struct target t;
    int rc = shield_access(dirfd, path, amode, flags, &t);
    if (rc != -2) return rc;
    if (ACTIVE() && t.changed) return RESOLVE(faccessat)(AT_FDCWD, t.path, amode, flags);
    return RESOLVE(faccessat)(dirfd, path, amode, flags);
}

static ssize_t shield_readlink(int dirfd, const char *path, char *buf, size_t len, struct target *t)
{
    if (!ACTIVE() || !path || target_of(dirfd, path, 0, t) != 0) return -2;
    if (t->kind == T_VOL && t->vol->ephemeral) {
        pthread_mutex_lock(&S.lock);
        int hidden = ephemeral_hidden(t->vol, t->path);
        pthread_mutex_unlock(&S.lock);
        if (!hidden) return -2;
        errno = ENOENT;
        return -1;
    }
    if (t->kind != T_EMB) return -2;
    if (!t->m || t->m->kind != EMBEDFS_SYMLINK) {
        errno = EINVAL;
        return -1;
    }
    size_t n = t->m->link_len < len ? t->m->link_len : len;
    memcpy(buf, t->m->link, n);
    return (ssize_t)n;
}

EXPORT ssize_t readlink(const char *path, char *buf, size_t len)
{
    struct target t;
    ssize_t rc = shield_readlink(AT_FDCWD, path, buf, len, &t);
    if (rc != -2) return rc;
    return RESOLVE(readlink)(PATH_OR_RESOLVED, buf, len);
}

EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t len)
{
    struct target t;
    ssize_t rc = shield_readlink(dirfd, path, buf, len, &t);
    if (rc != -2) return rc;
    if (ACTIVE() && t.changed) return RESOLVE(readlinkat)(AT_FDCWD, t.path, buf, len);
    return RESOLVE(readlinkat)(dirfd, path, buf, len);
}

EXPORT char *realpath(const char *path, char *resolved)
{
    struct target t;
    if (!ACTIVE() || !path || target_of(AT_FDCWD, path, 1, &t) != 0 || t.kind != T_EMB)
        return RESOLVE(realpath)(ACTIVE() && path && t.changed ? t.path : path, resolved);
    if (!resolved && !(resolved = malloc(PATH_MAX))) return NULL;
    snprintf(resolved, PATH_MAX, "%s", t.path);
    return resolved;
}

/* ------------------------------------------------------------------ directories */

/* A listing made by the shield (opendir, fdopendir): the service's DIR * points to it, and
 * readdir, readdir64, rewinddir, dirfd, closedir and scandir know it by fake_of(). */
struct fake_dir {
    struct fake_dir *next;
    struct dirent64 *ents;
    size_t count, pos;
    int fd;  /* the real directory (opendir: a dup; fdopendir: the service's fd), or -1 */
};

static struct fake_dir *fakes;

/* The fake directory behind d, or NULL for a real DIR. */
static struct fake_dir *fake_of(DIR *d)
{
    if (!fakes) return NULL;
    pthread_mutex_lock(&S.lock);
    struct fake_dir *found = fakes;
    while (found && (void *)found != (void *)d) found = found->next;
    pthread_mutex_unlock(&S.lock);
    return found;
}

struct listing {
    struct dirent64 *ents;
    size_t count, cap;
};

static void add_entry(struct listing *l, const char *name, size_t len, unsigned char type, uint64_t ino)
{
    if (len >= sizeof l->ents[0].d_name) return;
    if (l->count == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->ents = realloc(l->ents, l->cap * sizeof *l->ents);
    }
    struct dirent64 *e = &l->ents[l->count++];
    memset(e, 0, sizeof *e);
    e->d_ino = ino ? ino : 1;
    e->d_reclen = sizeof *e;
    e->d_type = type;
    memcpy(e->d_name, name, len);
    e->d_name[len] = '\0';
}

static int add_embedded(void *ctx, const char *name, size_t len, int is_dir, const struct embedfs_member *m)
{
    unsigned char type = is_dir ? DT_DIR : m && m->kind == EMBEDFS_SYMLINK ? DT_LNK : DT_REG;
    add_entry(ctx, name, len, type, m ? 1 + (uint64_t)(m - S.emb.members) : 1 + S.emb.count + len);
    return 0;
}

static int compare_entries(const void *a, const void *b)
{
    return strcmp(((const struct dirent64 *)a)->d_name, ((const struct dirent64 *)b)->d_name);
}

/* Whether the listing of a directory in vol shows entry e of it (dir: the directory's path).
 * Volumes hide their fspf and the commit's temp files; an ephemeral region also every regular
 * file or symlink its in-memory fspf does not record. */
static int listed(struct svol *vol, const char *dir, const struct dirent64 *e)
{
    if (reserved_name(vol, e->d_name)) return 0;
    if (!vol->ephemeral || strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) return 1;
    if (e->d_type != DT_REG && e->d_type != DT_LNK && e->d_type != DT_UNKNOWN) return 1;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, e->d_name) >= (int)sizeof path) return 0;
    pthread_mutex_lock(&S.lock);
    int shown = fspf_find(&vol->fs, path) != NULL || (e->d_type == DT_UNKNOWN && !ephemeral_hidden(vol, path));
    pthread_mutex_unlock(&S.lock);
    return shown;
}

/* The listing of t (an embedded or volume directory) as a fake directory, from the real one
 * (real: read to its end, then rewound; NULL: none on disk) merged with the embedded tree. */
static struct fake_dir *make_fake_dir(const struct target *t, DIR *real)
{
    int emb_dir = t->kind == T_EMB && t->is_dir;
    struct listing l = {0};
    if (real) {
        struct dirent64 *e;
        in_shield++;
        while ((e = RESOLVE(readdir64)(real)) != NULL)
            if (t->kind != T_VOL || listed(t->vol, t->path, e)) add_entry(&l, e->d_name, strlen(e->d_name), e->d_type, e->d_ino);
        RESOLVE(rewinddir)(real);
        in_shield--;
    } else {
        add_entry(&l, ".", 1, DT_DIR, 1);
        add_entry(&l, "..", 2, DT_DIR, 1);
    }
    if (emb_dir) embedfs_list_dir(&S.emb, t->path + 1, strlen(t->path + 1), add_embedded, &l);
    if (l.count > 1) qsort(l.ents, l.count, sizeof *l.ents, compare_entries);
    size_t kept = 0;
    for (size_t i = 0; i < l.count; i++)
        if (kept == 0 || strcmp(l.ents[kept - 1].d_name, l.ents[i].d_name) != 0) l.ents[kept++] = l.ents[i];
    struct fake_dir *f = calloc(1, sizeof *f);
    if (!f) {
        free(l.ents);
        errno = ENOMEM;
        return NULL;
    }
    f->ents = l.ents;
    f->count = kept;
    f->fd = -1;
    pthread_mutex_lock(&S.lock);
    f->next = fakes;
    fakes = f;
    pthread_mutex_unlock(&S.lock);
    return f;
}

/* The merged listing of an embedded or volume directory: NULL if the path is neither. */
static struct fake_dir *open_fake_dir(const char *path, int *handled)
{
    struct target t;
    *handled = 0;
    if (!ACTIVE() || !path || target_of(AT_FDCWD, path, 1, &t) != 0) return NULL;
    int emb_dir = t.kind == T_EMB && t.is_dir, vol_dir = t.kind == T_VOL;
    if (!emb_dir && !vol_dir) return NULL;
    *handled = 1;
    in_shield++;
    DIR *real = RESOLVE(opendir)(t.path);
    int saved = errno;
    in_shield--;
    if (!real && !emb_dir) {
        errno = saved;
        return NULL;
    }
    struct fake_dir *f = make_fake_dir(&t, real);
    if (real) {
        in_shield++;
        if (f) f->fd = RESOLVE(dup)(RESOLVE(dirfd)(real));
        RESOLVE(closedir)(real);
        in_shield--;
    }
    return f;
}

EXPORT DIR *opendir(const char *path)
{
    int handled;
    struct fake_dir *f = open_fake_dir(path, &handled);
    if (handled) return (DIR *)f;
    return RESOLVE(opendir)(path);
}

/* os.scandir(fd), os.listdir(fd), shutil.rmtree, os.fwalk list a directory by its fd: in a
 * volume or an ephemeral region that listing is the shield's too. It is read through a private
 * dup (glibc checks that it is a readable directory), and the shared offset is put back at 0,
 * so the fd is as the real fdopendir leaves it; closedir closes it. */
EXPORT DIR *fdopendir(int fd)
{
    struct target t;
    char link[64];
    if (!ACTIVE() || !S.nvols) return RESOLVE(fdopendir)(fd);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    in_shield++;
    ssize_t n = RESOLVE(readlink)(link, t.path, sizeof t.path - 1);
    in_shield--;
    if (n <= 0 || t.path[0] != '/') return RESOLVE(fdopendir)(fd);
    t.path[n] = '\0';
    t.changed = 0;
    t.is_dir = 0;
    t.m = NULL;
    if ((t.vol = volume_of(t.path)) == NULL) return RESOLVE(fdopendir)(fd);
    t.kind = T_VOL;
    in_shield++;
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    DIR *real = copy >= 0 ? RESOLVE(fdopendir)(copy) : NULL;
    int saved = errno;
    if (!real && copy >= 0) RESOLVE(close)(copy);
    in_shield--;
    if (!real) {
        errno = saved;
        return NULL;
    }
    struct fake_dir *f = make_fake_dir(&t, real);  /* rewinds: the offset shared with fd is 0 */
    saved = errno;
    in_shield++;
    RESOLVE(closedir)(real);
    in_shield--;
    if (!f) {
        errno = saved;
        return NULL;
    }
    f->fd = fd;
    return (DIR *)f;
}

static struct dirent64 *fake_next(DIR *d, int *handled)
{
    *handled = 0;
    struct fake_dir *f = fake_of(d);
    if (!f) return NULL;
    *handled = 1;
    return f->pos < f->count ? &f->ents[f->pos++] : NULL;
}

EXPORT struct dirent64 *readdir64(DIR *d)
{
    int handled;
    struct dirent64 *e = fake_next(d, &handled);
    return handled ? e : RESOLVE(readdir64)(d);
}

EXPORT struct dirent *readdir(DIR *d)
{
    int handled;
    struct dirent64 *e = fake_next(d, &handled);
    return handled ? (struct dirent *)e : RESOLVE(readdir)(d);
}

EXPORT int closedir(DIR *d)
{
    if (fakes) {
        pthread_mutex_lock(&S.lock);
        for (struct fake_dir **p = &fakes; *p; p = &(*p)->next) {
            if ((void *)*p == (void *)d) {
                struct fake_dir *f = *p;
                *p = f->next;
                pthread_mutex_unlock(&S.lock);
                if (f->fd >= 0) RESOLVE(close)(f->fd);
                free(f->ents);
                free(f);
                return 0;
            }
        }
        pthread_mutex_unlock(&S.lock);
    }
    return RESOLVE(closedir)(d);
}

EXPORT int dirfd(DIR *d)
{
    struct fake_dir *f = fake_of(d);
    if (!f) return RESOLVE(dirfd)(d);
    if (f->fd < 0) errno = ENOTSUP;
    return f->fd;
}

EXPORT void rewinddir(DIR *d)
{
    struct fake_dir *f = fake_of(d);
    if (f) f->pos = 0;
    else RESOLVE(rewinddir)(d);
}

typedef int (*filter64_fn)(const struct dirent64 *);
typedef int (*compar64_fn)(const struct dirent64 **, const struct dirent64 **);

static int fake_scandir(struct fake_dir *f, struct dirent64 ***list, filter64_fn filter, compar64_fn compar)
{
    struct dirent64 **out = malloc((f->count + 1) * sizeof *out);
    int n = 0;
    for (size_t i = 0; out && i < f->count; i++) {
        if (filter && !filter(&f->ents[i])) continue;
        out[n] = malloc(sizeof **out);
        memcpy(out[n++], &f->ents[i], sizeof **out);
    }
    closedir((DIR *)f);
    if (!out) {
        errno = ENOMEM;
        return -1;
    }
    if (compar) qsort(out, (size_t)n, sizeof *out, (int (*)(const void *, const void *))compar);
    *list = out;
    return n;
}

EXPORT int scandir64(const char *path, struct dirent64 ***list, filter64_fn filter, compar64_fn compar)
{
    int handled;
    struct fake_dir *f = open_fake_dir(path, &handled);
    if (!handled) return RESOLVE(scandir64)(path, list, filter, compar);
    if (!f) return -1;
    return fake_scandir(f, list, filter, compar);
}

EXPORT int scandir(const char *path, struct dirent ***list, int (*filter)(const struct dirent *),
                   int (*compar)(const struct dirent **, const struct dirent **))
{
    int handled;
    struct fake_dir *f = open_fake_dir(path, &handled);
    if (!handled) return RESOLVE(scandir)(path, list, filter, compar);
    if (!f) return -1;
    return fake_scandir(f, (struct dirent64 ***)list, (filter64_fn)filter, (compar64_fn)compar);
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
    if (fd >= 0 && fstat64(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == m->size) {
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
    if (!ACTIVE() || !path || !strchr(path, '/') || target_of(AT_FDCWD, path, 1, &t) != 0 || t.kind != T_EMB ||
        !t.m || t.m->kind != EMBEDFS_FILE)
        return RESOLVE(dlopen)(ACTIVE() && path && strchr(path, '/') && t.changed ? t.path : path, flags);
    /* A shared object the conversion kept in place (they all are: their RUNPATH $ORIGIN must
     * name their real directory) is loaded from there once its bytes are checked against the
     * measured member. */
    struct stat64 st;
    in_shield++;
    int on_disk = stat64(t.path, &st) == 0;
    in_shield--;
    if (on_disk) {
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

/* ------------------------------------------------------------------ unlink, rename */

static int shield_unlink(int dirfd, const char *path, int flags, struct target *t)
{
    if (!ACTIVE() || !path || target_of(dirfd, path, 0, t) != 0) return -2;
    if (t->kind == T_EMB && !(flags & AT_REMOVEDIR)) {
        errno = EROFS;
        return -1;
    }
    if (t->kind != T_VOL || (flags & AT_REMOVEDIR)) return -2;
    pthread_mutex_lock(&S.lock);
    int rc = -2;
    if (fspf_find(&t->vol->fs, t->path)) {
        rc = commit(t->vol, NULL, -1, t->path);
        if (rc == 0) retarget_tracked(t->vol, t->path, NULL, 0);
    } else if (ephemeral_hidden(t->vol, t->path)) {
        errno = ENOENT;  /* not this process's: not there */
        rc = -1;
    }
    pthread_mutex_unlock(&S.lock);
    return rc;
}

EXPORT int unlink(const char *path)
{
    struct target t;
    int rc = shield_unlink(AT_FDCWD, path, 0, &t);
    if (rc != -2) return rc;
    return RESOLVE(unlink)(PATH_OR_RESOLVED);
}

EXPORT int unlinkat(int dirfd, const char *path, int flags)
{
    struct target t;
    int rc = shield_unlink(dirfd, path, flags, &t);
    if (rc != -2) return rc;
    if (ACTIVE() && t.changed) return RESOLVE(unlinkat)(AT_FDCWD, t.path, flags);
    return RESOLVE(unlinkat)(dirfd, path, flags);
}

/* A directory renamed within an ephemeral region: the kernel moves it, then every file recorded
 * below it is protected again under its new path (paths are bound into the chunks). Called
 * with S.lock held. Volumes do not do this (it would be one commit per file). */
static int rename_ephemeral_dir(struct svol *vol, const char *from, const char *to)
{
    size_t n = strlen(from);
    if (strncmp(to, from, n) == 0 && to[n] == '/') {
        errno = EINVAL;  /* into itself */
        return -1;
    }
    in_shield++;
    int rc = rename(from, to);
    in_shield--;
    if (rc != 0) return -1;
    size_t count = 0;
    char **moved = malloc(sizeof *moved * (vol->fs.file_count + 1));
    for (uint32_t i = 0; moved && i < vol->fs.file_count; i++)
        if (strncmp(vol->fs.files[i].path, from, n) == 0 && vol->fs.files[i].path[n] == '/')
            moved[count++] = strdup(vol->fs.files[i].path);
    int failed = !moved;
    for (size_t i = 0; i < count; i++) {
        char next[PATH_MAX];
        struct fspf_file *rec = moved[i] ? fspf_find(&vol->fs, moved[i]) : NULL;
        int plain = -1, stored = -1, ok = 0;
        struct rt_error err = {{0}};
        if (rec && snprintf(next, sizeof next, "%s%s", to, moved[i] + n) < (int)sizeof next &&
            (plain = new_memfd(next, 1)) >= 0) {
            in_shield++;
            stored = open(next, O_RDONLY | O_CLOEXEC);  /* already moved: the old record reads it */
            in_shield--;
            if (stored >= 0 && fspf_open_file(rec, stored, plain, &err) == 0) ok = commit(vol, next, plain, NULL) == 0;
            else shield_log("ephemeral region %s: %s", vol->v->path, stored < 0 ? strerror(errno) : err.msg);
        }
        if (stored >= 0) RESOLVE(close)(stored);
        if (plain >= 0) RESOLVE(close)(plain);
        if (moved[i]) fspf_remove(&vol->fs, moved[i]);
        failed |= !ok;
        free(moved[i]);
    }
    free(moved);
    retarget_tracked(vol, from, to, 1);
    if (failed) {
        errno = EIO;
        return -1;
    }
    return 0;
}

static int shield_rename(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    struct target from, to;
    if (!ACTIVE() || !oldpath || !newpath || target_of(olddirfd, oldpath, 0, &from) != 0 ||
        target_of(newdirfd, newpath, 0, &to) != 0)
        return -2;
    if (from.kind == T_EMB || to.kind == T_EMB) {
        errno = EROFS;
        return -1;
    }
    if (from.kind != T_VOL && to.kind != T_VOL) return -2;
    pthread_mutex_lock(&S.lock);
    struct fspf_file *rec = from.kind == T_VOL ? fspf_find(&from.vol->fs, from.path) : NULL;
    if (!rec && from.kind == T_VOL && from.vol->ephemeral) {
        struct stat64 st;
        in_shield++;
        int exists = lstat64(from.path, &st) == 0;
        in_shield--;
        if (!exists || S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)) {
            pthread_mutex_unlock(&S.lock);
            errno = ENOENT;  /* hidden: not this process's */
            return -1;
        }
        int rc = -1;
        if (to.kind != T_VOL || to.vol != from.vol) errno = EXDEV;
        else if (!S_ISDIR(st.st_mode)) rc = -2;  /* a socket or fifo: the kernel's */
        else rc = rename_ephemeral_dir(from.vol, from.path, to.path);
        pthread_mutex_unlock(&S.lock);
        return rc;
    }
    if (!rec) {
        pthread_mutex_unlock(&S.lock);
        struct stat64 st;
        in_shield++;
        int is_dir = stat64(from.path, &st) == 0 && S_ISDIR(st.st_mode);
        in_shield--;
        if (is_dir && from.kind == T_VOL && to.kind == T_VOL && from.vol == to.vol) return -2;
        errno = from.kind == T_VOL && !is_dir ? ENOENT : EXDEV;
        return -1;
    }
    if (to.kind != T_VOL || to.vol != from.vol) {
        pthread_mutex_unlock(&S.lock);
        errno = EXDEV;  /* callers (shutil.move, mv) then copy and unlink */
        return -1;
    }
    /* The path is bound into every chunk: moving a file re-protects it under its new name. */
    int plain = new_memfd(to.path, 1), rc = -1;
    if (plain >= 0) {
        in_shield++;
        int stored = open(from.path, O_RDONLY | O_CLOEXEC);
        in_shield--;
        struct rt_error err;
        if (stored >= 0 && fspf_open_file(rec, stored, plain, &err) == 0) {
            rc = commit(to.vol, to.path, plain, from.path);
            if (rc == 0 && strcmp(from.path, to.path) != 0) {
                retarget_tracked(to.vol, to.path, NULL, 0);  /* the replaced file's fds */
                retarget_tracked(to.vol, from.path, to.path, 0);
            }
        } else {
            shield_log("%s %s: %s", region_word(from.vol), from.vol->v->path, stored < 0 ? strerror(errno) : err.msg);
            errno = EIO;
        }
        if (stored >= 0) RESOLVE(close)(stored);
        RESOLVE(close)(plain);
    }
    pthread_mutex_unlock(&S.lock);
    return rc;
}

EXPORT int rename(const char *oldpath, const char *newpath)
{
    int rc = shield_rename(AT_FDCWD, oldpath, AT_FDCWD, newpath);
    return rc != -2 ? rc : RESOLVE(rename)(oldpath, newpath);
}

EXPORT int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    int rc = shield_rename(olddirfd, oldpath, newdirfd, newpath);
    return rc != -2 ? rc : RESOLVE(renameat)(olddirfd, oldpath, newdirfd, newpath);
}

/* ------------------------------------------------------------------ mkstemp, tmpfile */

/* glibc's mkstemp family and tmpfile() open their file inside libc, past open(): in an
 * ephemeral region the file would be plaintext on disk and, unrecorded, invisible by name. There
 * the shield makes the name and opens it through open(); elsewhere libc's own. */
static int ephemeral_path(const char *path)
{
    struct target t;
    return ACTIVE() && path && S.nvols && target_of(AT_FDCWD, path, 0, &t) == 0 && t.kind == T_VOL && t.vol->ephemeral;
}

static int shield_mkostemps(char *tmpl, int suffixlen, int flags, int large)
{
    if (!ephemeral_path(tmpl)) return large ? RESOLVE(mkostemps64)(tmpl, suffixlen, flags) : RESOLVE(mkostemps)(tmpl, suffixlen, flags);
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    size_t len = strlen(tmpl);
    if (suffixlen < 0 || len < 6 + (size_t)suffixlen || memcmp(tmpl + len - (size_t)suffixlen - 6, "XXXXXX", 6) != 0) {
        errno = EINVAL;
        return -1;
    }
    char *x = tmpl + len - (size_t)suffixlen - 6;
    for (int attempt = 0; attempt < 62 * 62 * 62; attempt++) {
        unsigned char r[6];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) break;
        for (int i = 0; i < 6; i++) x[i] = letters[r[i] % 62];
        int fd = open(tmpl, (flags & ~O_ACCMODE) | O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    memcpy(x, "XXXXXX", 6);
    errno = EEXIST;
    return -1;
}

EXPORT int mkstemp(char *tmpl) { return shield_mkostemps(tmpl, 0, 0, 0); }
EXPORT int mkstemp64(char *tmpl) { return shield_mkostemps(tmpl, 0, 0, 1); }
EXPORT int mkostemp(char *tmpl, int flags) { return shield_mkostemps(tmpl, 0, flags, 0); }
EXPORT int mkostemp64(char *tmpl, int flags) { return shield_mkostemps(tmpl, 0, flags, 1); }
EXPORT int mkstemps(char *tmpl, int suffixlen) { return shield_mkostemps(tmpl, suffixlen, 0, 0); }
EXPORT int mkstemps64(char *tmpl, int suffixlen) { return shield_mkostemps(tmpl, suffixlen, 0, 1); }
EXPORT int mkostemps(char *tmpl, int suffixlen, int flags) { return shield_mkostemps(tmpl, suffixlen, flags, 0); }
EXPORT int mkostemps64(char *tmpl, int suffixlen, int flags) { return shield_mkostemps(tmpl, suffixlen, flags, 1); }

/* tmpfile() uses P_tmpdir (/tmp) whatever TMPDIR says: an anonymous memfd when it is ephemeral. */
static FILE *shield_tmpfile(int large)
{
    if (!ephemeral_path(P_tmpdir)) return large ? RESOLVE(tmpfile64)() : RESOLVE(tmpfile)();
    int fd = new_memfd("tmpfile", 0);
    FILE *f = fd >= 0 ? fdopen(fd, "w+") : NULL;
    if (!f && fd >= 0) {
        int saved = errno;
        RESOLVE(close)(fd);
        errno = saved;
    }
    return f;
}

EXPORT FILE *tmpfile(void) { return shield_tmpfile(0); }
EXPORT FILE *tmpfile64(void) { return shield_tmpfile(1); }

/* ------------------------------------------------------------------ start-up */

static int same_file(const char *a, const char *b)
{
    struct stat64 sa, sb;
    return RESOLVE(stat64)(a, &sa) == 0 && RESOLVE(stat64)(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* libuv calls statx through syscall(), past any interposition: answer ENOSYS so it falls back
 * to stat(), which the shield serves. io_uring would bypass every libc entry point. */
static void install_seccomp(void)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) return;
    if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(statx), 0) == 0 &&
        seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(io_uring_setup), 0) == 0 && seccomp_load(ctx) != 0)
        shield_log("cannot install the seccomp filter (statx -> ENOSYS); embedded files may be invisible to libuv");
    seccomp_release(ctx);
}

static void fatal(const char *msg) __attribute__((noreturn));
static void fatal(const char *msg)
{
    shield_log("%s; the service cannot start", msg);
    _exit(2);
}

/* An ephemeral region: a volume whose fspf (one encrypted kernel region, no files) exists in
 * this process's memory only. It has no fspf key: it is never serialised, and the per-file keys
 * it will hold (fresh from RAND_bytes on every write) never leave the process. A region that
 * is a volume too, or a run-time mount (/proc, /dev, ...), is not one. */
static void add_ephemeral(const char *config_path)
{
    char path[PATH_MAX];
    if (!config_path || config_path[0] != '/' || strlen(config_path) >= sizeof path) return;
    strcpy(path, config_path);
    normalise(path);
    if (run_time_mount(path)) return;
    for (size_t i = 0; i < S.nvols; i++)
        if (strcmp(S.vols[i].v->path, path) == 0) return;
    struct svol *sv = &S.vols[S.nvols];
    struct fspf_region *region = calloc(1, sizeof *region);
    sv->own.path = strdup(path);
    sv->own.fspf_path = NULL;
    sv->own.protection = FSPF_ENCRYPTED;
    if (!region || !sv->own.path || !(region->path = strdup(path)) || !(region->kernel_path = strdup(path)))
        fatal("out of memory");
    region->kind = FSPF_KERNEL;  /* stored at their own paths */
    region->protection = FSPF_ENCRYPTED;
    region->key_length = 32;
    region->chunk_size = 64 * 1024;
    sv->fs.region_count = 1;
    sv->fs.regions = region;
    sv->v = &sv->own;
    sv->len = strlen(path);
    sv->ephemeral = 1;
    S.nvols++;
}

__attribute__((constructor)) static void shield_init(void)
{
    const char *config_path = getenv("SCONIFY_RUNTIME_CONFIG");
    if (!config_path) return;
    in_shield++;
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    struct rt_error err;
    if (config_load(config_path, &S.cfg, &err) != 0) {
        in_shield--;
        return;
    }
    if (!same_file("/proc/self/exe", S.cfg.executable)) {
        config_free(&S.cfg);
        in_shield--;
        return;  /* not the measured executable: it gets no keys and sees what is on disk */
    }
    const void *archive;
    size_t size;
    unsigned char root[32];
    int found = embedfs_find_self(&archive, &size, root, &err);
    if (found < 0) fatal(err.msg);
    if (found == 1) {
        if (embedfs_open(&S.emb, archive, size, &err) != 0) fatal(err.msg);
        if (memcmp(root, S.emb.root_hash, 32) != 0) fatal("the embedfs root hash differs from its descriptor's");
        S.has_emb = 1;
    }
    const char *keys_path = getenv("SCONIFY_KEYS");
    S.vols = calloc(S.cfg.volume_count + S.cfg.ephemeral_count + 1, sizeof *S.vols);
    if (!S.vols) fatal("out of memory");
    if (S.cfg.volume_count) {
        struct rt_keys keys;
        if (!keys_path) fatal("no keys: start the service through sconify-run");
        if (keys_load(keys_path, &keys, &err) != 0) fatal(err.msg);
        S.keys_path = strdup(keys_path);
        S.keys_persist = strncmp(keys_path, "/proc/", 6) != 0;
        for (size_t i = 0; i < S.cfg.volume_count; i++) {
            const struct rt_volume *v = &S.cfg.volumes[i];
            struct rt_key *k = keys_find(&keys, v->path);
            if (!k) continue;  /* sconify-run checked every volume; a SCONE_FSPF debug key covers one */
            struct svol *sv = &S.vols[S.nvols];
            sv->v = v;
            sv->len = strlen(v->path);
            memcpy(sv->key, k->key, 32);
            int fd = RESOLVE(open)(v->fspf_path, O_RDONLY | O_CLOEXEC);
            struct stat64 st;
            if (fd < 0 || fstat64(fd, &st) != 0) fatal("a volume's fspf disappeared after start-up");
            unsigned char *data = malloc((size_t)st.st_size + 1);
            if (!data || pread_full(fd, data, (size_t)st.st_size, 0) != 0) fatal("cannot read a volume's fspf");
            RESOLVE(close)(fd);
            const unsigned char *tag = st.st_size >= 16 ? data + st.st_size - 16 : k->tag;
            int next = k->has_next && memcmp(tag, k->next_tag, 16) == 0;
            if (fspf_load(&sv->fs, data, (size_t)st.st_size, k->key, next ? k->next_tag : k->tag, &err) != 0)
                fatal(err.msg);
            if (sv->fs.region_count != 1 || strcmp(sv->fs.regions[0].path, v->path) != 0)
                fatal("a volume's fspf does not describe that volume");
            memcpy(sv->tag, tag, 16);
            free(data);
            S.nvols++;
        }
        keys_free(&keys);
    }
    for (size_t i = 0; i < S.cfg.ephemeral_count; i++) add_ephemeral(S.cfg.ephemeral[i]);
    install_seccomp();
    S.active = S.has_emb || S.nvols;
    in_shield--;
}

/* Debian's libjansson.a is built as position-dependent code: its json_loadf path refers to
 * stdin with a PC-relative relocation, which a shared object cannot resolve against libc. The
 * shield never loads JSON from stdin; this hidden definition satisfies that one relocation and
 * is pointed at libc's stream at start-up for completeness. */
__attribute__((visibility("hidden"))) FILE *stdin;
__attribute__((constructor(101))) static void bind_stdin(void)
{
    FILE **libc_stdin = dlsym(RTLD_NEXT, "stdin");
    stdin = libc_stdin ? *libc_stdin : NULL;
}
