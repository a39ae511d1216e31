/* Tracked fds: the memfds the service may write, each one the plaintext of a file in a
 * volume or ephemeral region, protected again (commit) on close and fsync. */
#include "shield.h"
#include "measure.h"

/* What fd's memfd holds now (its SHA-256, size, mode and modification time); known = 0 if it
 * cannot be read (a write-only descriptor). Reading it leaves its access time as it was: that
 * time is the file's, which a commit stores. */
static struct content content_of(int fd)
{
    struct content c = {0};
    struct stat64 st;
    if (RESOLVE(fstat64)(fd, &st) != 0) return c;
    int hashed = file_sha256(fd, c.sha256) == 0;
    struct timespec times[2] = {st.st_atim, {.tv_nsec = UTIME_OMIT}};
    futimens(fd, times);
    if (!hashed) return c;
    c.known = 1;
    c.size = st.st_size;
    c.mode = st.st_mode;
    c.mtime = st.st_mtim;
    return c;
}

static int same_content(const struct content *a, const struct content *b)
{
    return a->known && b->known && a->size == b->size && a->mode == b->mode && a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec && memcmp(a->sha256, b->sha256, sizeof a->sha256) == 0;
}

/* The memfd (dev, ino) was committed holding c: so every descriptor of it knows. */
static void committed_as(dev_t dev, ino_t ino, const struct content *c)
{
    for (int fd = 0; fd < S.nfds; fd++)
        if (S.fds[fd].path && S.fds[fd].dev == dev && S.fds[fd].ino == ino) S.fds[fd].committed = *c;
}

/* fd, a memfd holding the plaintext of path in vol as last loaded or committed (or a new
 * descriptor of a memfd already tracked: dup, reopen), is tracked from now on; a reader's
 * content is not hashed (it commits nothing). */
static void track_fd(int fd, struct svol *vol, const char *path, int reader)
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
    S.fds[fd].reader = reader;
    struct stat64 st;
    int known = RESOLVE(fstat64)(fd, &st) == 0;
    S.fds[fd].dev = known ? st.st_dev : 0;
    S.fds[fd].ino = known ? st.st_ino : 0;
    S.fds[fd].committed = (struct content){0};
    for (int other = 0; known && other < S.nfds; other++) {
        if (other != fd && S.fds[other].path && S.fds[other].dev == st.st_dev && S.fds[other].ino == st.st_ino) {
            S.fds[fd].committed = S.fds[other].committed;  /* the same memfd: what it last committed */
            return;
        }
    }
    if (known && !reader) S.fds[fd].committed = content_of(fd);
}

void track(int fd, struct svol *vol, const char *path) { track_fd(fd, vol, path, 0); }

/* A region file opened for reading only (a sealed memfd, or a reopened one): nothing to commit,
 * but fstat gives the file's identity, as stat(path) does (shutil.rmtree compares the two). */
void track_reader(int fd, struct svol *vol, const char *path) { track_fd(fd, vol, path, 1); }

struct tracked *tracked_fd(int fd)
{
    return fd >= 0 && fd < S.nfds && S.fds[fd].path ? &S.fds[fd] : NULL;
}

void untrack(int fd)
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
void retarget_tracked(struct svol *vol, const char *from, const char *to, int prefix)
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

/* If this process has path open for writing, a new open file description of that memfd (with
 * its own offset and access mode), so that the service sees its own writes before they are
 * committed and every descriptor of the file shares one content, as with the kernel
 * (NamedTemporaryFile: write, flush, open by name; two SQLite connections to one database).
 * -1 if there is none. Called with S.lock held. */
int reopen_tracked(struct svol *vol, const char *path, int flags)
{
    int reflags = flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW | O_DIRECTORY);
    if ((flags & O_ACCMODE) == O_RDONLY) reflags &= ~O_TRUNC;
    for (int fd = 0; fd < S.nfds; fd++) {
        struct tracked *t = &S.fds[fd];
        struct stat64 st;
        if (!t->path || t->reader || t->vol != vol || strcmp(t->path, path) != 0) continue;
        if (RESOLVE(fstat64)(fd, &st) != 0 || st.st_dev != t->dev || st.st_ino != t->ino) continue;
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        in_shield++;
        int copy = open(proc, reflags);
        in_shield--;
        if (copy >= 0) return copy;
    }
    return -1;
}

int tracked_stored_path(int fd, char *out, size_t n)
{
    if (!S.active) return 0;
    pthread_mutex_lock(&S.lock);
    struct tracked *t = tracked_fd(fd);
    struct stat64 st;
    int found = t && RESOLVE(fstat64)(fd, &st) == 0 && st.st_dev == t->dev && st.st_ino == t->ino &&
                snprintf(out, n, "%s", t->path) < (int)n;
    pthread_mutex_unlock(&S.lock);
    return found;
}

/* Protect a tracked memfd's content again (close, fsync). An fd that is no longer the memfd
 * it was (closed past the shield, its number reused) is forgotten, never committed: its
 * content is not the file's. durable (fsync, fdatasync): the volume is synced after the commit,
 * or without one when nothing changed (what an earlier close committed becomes durable). */
int flush_tracked(int fd, int durable)
{
    if (!S.active) return 0;
    pthread_mutex_lock(&S.lock);
    struct tracked *t = tracked_fd(fd);
    struct stat64 st;
    if (t && (RESOLVE(fstat64)(fd, &st) != 0 || st.st_dev != t->dev || st.st_ino != t->ino)) {
        untrack(fd);
        t = NULL;
    }
    if (t && t->reader) {  /* nothing written: an fsync still syncs what others wrote, as the kernel's */
        int rc = durable ? volume_sync(t->vol) : 0;
        pthread_mutex_unlock(&S.lock);
        return rc;
    }
    int readable = fd, rc = 0;
    if (t && (fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY) {
        /* a write-only open file description (reopen_tracked): the commit reads the same
         * memfd through a readable one */
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        in_shield++;
        readable = open(proc, O_RDONLY | O_CLOEXEC);
        in_shield--;
    }
    if (t && readable < 0) {
        shield_log("%s %s: write of %s not saved: cannot read its plaintext back: %s", region_word(t->vol),
                   t->vol->v->path, t->path, strerror(errno));
        errno = EIO;
        rc = -1;
    } else if (t) {
        /* Nothing written since the memfd was loaded or last committed (a reader that opened
         * for writing, as SQLite always does): nothing to commit, as with the kernel; a commit
         * would write this process's copy over what another process committed since. */
        struct content now = content_of(readable);
        if (!same_content(&now, &t->committed)) {
            rc = commit(t->vol, t->path, readable, NULL, 0666);
            if (rc == 0) committed_as(t->dev, t->ino, &now);
        }
        if (rc == 0 && durable) rc = volume_sync(t->vol);
    }
    if (readable != fd && readable >= 0) {
        int saved = errno;
        RESOLVE(close)(readable);
        errno = saved;
    }
    pthread_mutex_unlock(&S.lock);
    return rc;
}

/* fsync of an fd the shield does not track: the kernel's, and when it is a directory of a
 * volume, that volume's commits made durable too (its entries are what the commits changed). */
int sync_untracked(int fd)
{
    struct stat64 st;
    if (RESOLVE(fstat64)(fd, &st) != 0 || !S_ISDIR(st.st_mode)) return RESOLVE(fsync)(fd);
    char path[PATH_MAX];
    struct svol *vol = fd_path(fd, path, sizeof path) == 0 ? volume_of(path) : NULL;
    if (!vol || vol->ephemeral) return RESOLVE(fsync)(fd);
    pthread_mutex_lock(&S.lock);
    int rc = volume_sync(vol);
    pthread_mutex_unlock(&S.lock);
    return rc;
}

/* close() of a tracked fd: protect its content again, forget it, close it. -1 with errno if
 * the commit failed (the fd is closed all the same, as the kernel's close does). */
int close_tracked(int fd)
{
    int rc = flush_tracked(fd, 0), saved = errno;
    pthread_mutex_lock(&S.lock);
    untrack(fd);
    pthread_mutex_unlock(&S.lock);
    int r = RESOLVE(close)(fd);
    if (rc != 0) {
        errno = saved;
        return -1;
    }
    return r;
}

/* After dup*(from) gave to: to is the same file as from (or, untracked, no file of ours). */
int dup_tracked(int from, int to)
{
    if (to >= 0 && S.active) {
        pthread_mutex_lock(&S.lock);
        struct tracked *t = tracked_fd(from);
        if (t) {
            struct svol *vol = t->vol;
            char *path = strdup(t->path);
            int reader = t->reader;
            (reader ? track_reader : track)(to, vol, path);
            free(path);
        } else {
            untrack(to);
        }
        pthread_mutex_unlock(&S.lock);
    }
    return to;
}

/* At exit (exit(), a return from main; not _exit), the files the process still has open for
 * writing are protected as they are: the kernel's close at exit keeps what was written (a
 * process that sends its stderr to a file and exits without closing it). C streams first, as
 * exit() would flush them after this. */
__attribute__((destructor)) static void flush_at_exit(void)
{
    if (!S.active || !S.nfds) return;
    fflush(NULL);
    for (int fd = 0; fd < S.nfds; fd++)
        if (tracked_fd(fd) && !S.fds[fd].reader) flush_tracked(fd, 0);
}
