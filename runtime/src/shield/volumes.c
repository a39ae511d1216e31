/* Files in a volume or an ephemeral region: open (a memfd with the checked plaintext), unlink
 * and rename (a commit each), O_TMPFILE, and the libc mkstemp family and tmpfile(). */
#include <sys/file.h>
#include <sys/random.h>

#include "shield.h"

const char *region_word(const struct svol *vol) { return vol->ephemeral ? "ephemeral region" : "volume"; }

/* Ephemeral regions start empty: a regular file or a symlink at path that the region's fspf
 * does not record was not written by the service in this start (an earlier start's, a process's
 * without the grant, or planted) and is not there for the service. Directories, sockets, fifos
 * and devices are. Called with S.lock held. */
int ephemeral_hidden(struct svol *vol, const char *path)
{
    if (!vol->ephemeral || strcmp(path, vol->v->path) == 0) return 0;
    volume_refresh(vol, 0);  /* what the service's other processes wrote */
    if (fspf_find(&vol->fs, path)) return 0;
    struct stat64 st;
    in_shield++;
    int rc = lstat64(path, &st);
    in_shield--;
    return rc == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode));
}

/* "name/" or "name/.": the caller asks for a directory, which the normalised t->path no longer
 * says. */
int dir_syntax(const char *path)
{
    size_t n = path ? strlen(path) : 0;
    return n && (path[n - 1] == '/' || (path[n - 1] == '.' && (n == 1 || path[n - 2] == '/')));
}

/* A path in a region with dir_syntax: -2, the kernel's answer for the caller's spelling (it
 * opens a directory, or says ENOTDIR, EISDIR, ENOENT, and never creates a file), or -1 with
 * the errno for a name the region hides (as if absent). */
int region_dir_syntax(struct target *t, int flags)
{
    pthread_mutex_lock(&S.lock);
    int hidden = ephemeral_hidden(t->vol, t->path);
    pthread_mutex_unlock(&S.lock);
    if (!hidden) return -2;
    errno = flags & O_CREAT ? EISDIR : ENOENT;
    return -1;
}

/* ------------------------------------------------------------------ symlinks into a region */

/* The device of the region's directory into dev, looked up once: 1, or 0 if it cannot be
 * (the directory is missing). Called with S.lock held. */
int region_device(struct svol *vol, dev_t *dev)
{
    if (!vol->dev_known) {
        struct stat64 st;
        in_shield++;
        if (stat64(vol->v->path, &st) == 0) {
            vol->dev = st.st_dev;
            vol->dev_known = 1;
        }
        in_shield--;
    }
    *dev = vol->dev;
    return vol->dev_known;
}

/* Whether dev is the device of a region's directory: a file on another device is in no region. */
static int on_a_region_device(dev_t dev)
{
    pthread_mutex_lock(&S.lock);
    int found = 0;
    for (size_t i = 0; i < S.nvols; i++) {
        dev_t region;
        found |= region_device(&S.vols[i], &region) && region == dev;
    }
    pthread_mutex_unlock(&S.lock);
    return found;
}

/* A path outside every region (t->kind T_PASS) that is a symlink on disk to a regular file in
 * one: t becomes that file, so that stat and open serve it as under its own name, not its
 * ciphertext. st: the path's real stat (followed). Only a link as the last component: an lstat
 * answers for every other path, at the cost of the stat it replaces (a realpath of each would
 * slow every start-up), so a path through a symlinked directory is read as stored.
 * -1: no such file (errno), 0: not in a region, 1: t changed. */
int follow_into_region(int dirfd, const char *path, struct target *t, struct stat64 *st)
{
    in_shield++;
    int rc = t->changed ? lstat64(t->path, st) : fstatat64(dirfd, path, st, AT_SYMLINK_NOFOLLOW);
    int link = rc == 0 && S_ISLNK(st->st_mode);
    if (link) rc = t->changed ? stat64(t->path, st) : fstatat64(dirfd, path, st, 0);
    in_shield--;
    if (rc != 0) return -1;
    if (!link || !S.nvols || !S_ISREG(st->st_mode) || !on_a_region_device(st->st_dev)) return 0;
    char real[PATH_MAX];
    in_shield++;
    char *resolved = realpath(t->path, real);
    in_shield--;
    struct svol *vol = resolved ? volume_of(real) : NULL;
    if (!vol || strcmp(real, t->path) == 0) return 0;
    strcpy(t->path, real);
    t->kind = T_VOL;
    t->vol = vol;
    t->changed = 1;
    return 1;
}

/* A file moved keeps its times, as with the kernel's rename: plain (its new plaintext) gets
 * those of its stored file. */
static void keep_times(int stored, int plain)
{
    struct stat64 st;
    if (fstat64(stored, &st) != 0) return;
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    futimens(plain, times);
}

/* ------------------------------------------------------------------ symlinks in a region */

/* The target of the symlink rec records in vol, read from the disk (at ondisk: rec->path unless
 * the kernel already moved it) and checked against the record (the target is not secret, but
 * it must be the one the service wrote): its length (NUL-terminated in buf), or -1 with EIO and
 * one line. Called with S.lock held. */
ssize_t region_link(struct svol *vol, const struct fspf_file *rec, const char *ondisk, char *buf, size_t size)
{
    in_shield++;
    ssize_t n = RESOLVE(readlink)(ondisk ? ondisk : rec->path, buf, size - 1);
    int saved = errno;
    in_shield--;
    struct rt_error err = {{0}};
    if (n < 0) rt_fail(&err, "symlink %s: %s", rec->path, strerror(saved));
    else if ((size_t)n == size - 1) rt_fail(&err, "symlink %s: target too long", rec->path);
    if (n < 0 || (size_t)n == size - 1 || fspf_check_link(rec, buf, (size_t)n, &err) != 0) {
        shield_log("%s %s: %s", region_word(vol), vol->v->path, err.msg);
        errno = EIO;
        return -1;
    }
    buf[n] = '\0';
    return n;
}

/* The kernel keeps a region's symlinks (their targets are plain strings on disk, checked by
 * their records) but the shield names files by path: a path through a recorded symlink (the
 * last component only when follow) is rewritten to where it leads, as the kernel would. 1: t
 * changed (locate again), 0: no recorded symlink on the way (or one whose target does not
 * check: the path is left as it is and its record refuses it). */
int resolve_region_links(struct target *t, int follow)
{
    struct svol *vol = t->vol;
    char *p = t->path;
    size_t len = strlen(p);
    int changed = 0;
    pthread_mutex_lock(&S.lock);
    for (size_t end = vol->len + 1; end <= len && !changed; end++) {
        if (end < len && p[end] != '/') continue;
        if (end == len && !follow) break;
        char saved = p[end];
        p[end] = '\0';
        struct fspf_file *rec = fspf_find(&vol->fs, p);
        p[end] = saved;
        if (!rec || rec->protection != FSPF_SYMLINK) continue;
        char link[PATH_MAX], next[PATH_MAX];
        if (region_link(vol, rec, NULL, link, sizeof link) < 0) break;
        int n;
        if (link[0] == '/') n = snprintf(next, sizeof next, "%s%s", link, p + end);
        else {
            const char *slash = memrchr(p, '/', end);
            n = snprintf(next, sizeof next, "%.*s/%s%s", (int)(slash - p), p, link, p + end);
        }
        if (n < 0 || (size_t)n >= sizeof next) break;
        normalise(next);
        strcpy(t->path, next);
        t->changed = changed = 1;
    }
    pthread_mutex_unlock(&S.lock);
    return changed;
}

/* The symlink rec records, found on disk at ondisk, recorded again as to (its path is bound
 * into its tag), remove's record dropped: commit()'s result. Called with S.lock held. */
static int move_link(struct svol *vol, const struct fspf_file *rec, const char *ondisk, const char *to, const char *remove)
{
    char link[PATH_MAX];
    ssize_t n = region_link(vol, rec, ondisk, link, sizeof link);
    if (n < 0) return -1;
    int fd = new_memfd(to, 1), rc = -1;
    if (fd < 0) return -1;
    if (pwrite_full(fd, link, (size_t)n, 0) == 0) rc = commit(vol, to, fd, remove, S_IFLNK | 0777);
    else errno = EIO;
    int saved = errno;
    RESOLVE(close)(fd);
    errno = saved;
    return rc;
}

/* symlink, symlinkat with the link in a region: a kernel symlink, recorded in the region's fspf
 * (FSPF_SYMLINK: a volume's later processes follow it too). 0, -1 (errno), -2: not ours. */
int shield_symlink(const char *target, int dirfd, const char *path)
{
    struct target t;
    if (!ACTIVE() || !path || !target || target_of(dirfd, path, 0, &t) != 0) return -2;
    if (t.kind == T_EMB || t.kind == T_SEALED || (t.kind == T_PASS && t.in_code)) {
        errno = t.kind == T_EMB ? EEXIST : EROFS;
        return -1;
    }
    if (t.kind != T_VOL || dir_syntax(path)) return -2;
    if (strcmp(t.path, t.vol->v->path) == 0 || reserved_name(t.vol, base_name(t.path))) {
        errno = EEXIST;
        return -1;
    }
    size_t n = strlen(target);
    if (!n || n >= PATH_MAX) {
        errno = n ? ENAMETOOLONG : ENOENT;
        return -1;
    }
    pthread_mutex_lock(&S.lock);
    struct stat64 st;
    in_shield++;
    int exists = lstat64(t.path, &st) == 0;
    in_shield--;
    int rc = -1;
    if (fspf_find(&t.vol->fs, t.path) || (exists && !ephemeral_hidden(t.vol, t.path))) {
        errno = EEXIST;  /* (a hidden one in an ephemeral region is replaced) */
    } else {
        int fd = new_memfd(t.path, 1);
        if (fd >= 0 && pwrite_full(fd, target, n, 0) == 0) {
            rc = commit(t.vol, t.path, fd, NULL, S_IFLNK | 0777);
            if (rc == 0) t.vol->has_links = 1;
        } else if (fd >= 0) {
            errno = EIO;
        }
        if (fd >= 0) {
            int saved = errno;
            RESOLVE(close)(fd);
            errno = saved;
        }
    }
    pthread_mutex_unlock(&S.lock);
    return rc;
}

/* link, linkat with either name in a region: refused with EPERM, what file systems without
 * hard links say (callers such as CPython's tests then skip). A second name would need a second
 * record sharing the first one's content and key: not served. */
int shield_link(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
{
    struct target from, to;
    if (!ACTIVE()) return -2;
    int old_in = oldpath && *oldpath && target_of(olddirfd, oldpath, !!(flags & AT_SYMLINK_FOLLOW), &from) == 0 &&
                 from.kind == T_VOL;
    int new_in = newpath && target_of(newdirfd, newpath, 0, &to) == 0 && to.kind == T_VOL;
    if (!old_in && !new_in) return -2;
    errno = EPERM;
    return -1;
}

/* ------------------------------------------------------------------ open */

/* rec's checked plaintext, from t's stored file, into fd (emptied first): 0, or -1 (err). */
static int load_record(const struct target *t, const struct fspf_file *rec, int fd, struct rt_error *err)
{
    in_shield++;
    int stored = open(t->path, O_RDONLY | O_CLOEXEC), missing = errno;
    in_shield--;
    int rc = stored < 0 ? rt_fail(err, "%s: stored file missing (%s)", t->path, strerror(missing))
             : ftruncate(fd, 0) != 0 ? rt_fail(err, "%s: %s", t->path, strerror(errno))
             : fspf_open_file(rec, stored, fd, err);
    if (stored >= 0) RESOLVE(close)(stored);
    return rc;
}

/* The checked plaintext of t's stored file (record rec) into fd: 0, or -1 (err). Another
 * process may commit the file between this one's reload of the fspf and its open of the stored
 * file (a mismatch): then once more, with the fspf reloaded and the stored file opened under the
 * volume's lock (shared), where the two agree; -2 when the file is gone then (removed by
 * another process: the open came after the unlink, as the kernel would order them). Called with
 * S.lock held. */
static int read_stored(struct target *t, struct fspf_file *rec, int fd, unsigned char read_id[16], struct rt_error *err)
{
    for (int attempt = 0;; attempt++) {
        int lock = attempt ? volume_lock(t->vol, LOCK_SH) : -1;
        if (attempt && volume_refresh(t->vol, 1) >= 0) rec = fspf_find(&t->vol->fs, t->path);
        int rc = rec ? load_record(t, rec, fd, err) : -2;
        if (lock >= 0) RESOLVE(close)(lock);
        if (rc == 0) memcpy(read_id, rec->file_id, 16);
        if (rc != -1 || attempt || (t->vol->ephemeral && !t->vol->shared)) return rc;
    }
}

/* t names a file in t->vol: a memfd with its checked plaintext (writable: tracked, protected
 * again on close/fsync), -1 with errno, or -2 when the kernel's (a directory, a socket...). */
int open_volume_file(struct target *t, int flags, mode_t mode)
{
    int writable = (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
    unsigned char held_id[16] = {0};  /* the file id of the record whose content fd holds */
    struct rt_error err = {{0}};
    pthread_mutex_lock(&S.lock);
    volume_refresh(t->vol, 0);  /* what the service's other processes committed (a child's new file) */
    struct fspf_file *rec = fspf_find(&t->vol->fs, t->path);
    int fd = -1;
    struct stat64 st;
    in_shield++;
    /* an ephemeral region does not follow a symlink nobody recorded: it is hidden */
    int exists = (t->vol->ephemeral ? lstat64(t->path, &st) : stat64(t->path, &st)) == 0;
    int lookup = errno;
    in_shield--;
    if (!exists && lookup != ENOENT) {
        pthread_mutex_unlock(&S.lock);
        errno = lookup;  /* ENOTDIR (through a file), EACCES, ELOOP...: the kernel's */
        return -1;
    }
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
    } else if (rec->protection == FSPF_SYMLINK) {
        /* not followed: O_NOFOLLOW, or a link whose target did not check (logged) */
        pthread_mutex_unlock(&S.lock);
        errno = flags & O_NOFOLLOW || t->loop ? ELOOP : EIO;
        return -1;
    }
    /* a file this process has open for writing: the same plaintext, as with the kernel (two
     * SQLite connections of one process to one database see each other's commits) */
    if (rec && (fd = reopen_tracked(t->vol, t->path, flags)) >= 0) {
        (writable ? track : track_reader)(fd, t->vol, t->path);  /* the content is shared: either close commits it */
        goto out;
    }
    /* The launcher's shared memfd of the file, if a process of the service has it open: its
     * content, times and mode are the file's (an O_TRUNC truncates it for every process, as
     * the kernel's would). */
    int shared = rec && cache_enabled(t->vol), status = ENOENT;
    if (shared && (fd = cache_open(t->path, flags, -1, &status)) >= 0) {
        if (exists) fchmod(fd, st.st_mode & 07777);  /* a chmod by path changed the stored file's */
        if (writable && (flags & O_TRUNC) && ftruncate(fd, 0) != 0) {
            int saved = errno;
            RESOLVE(close)(fd);
            fd = -1;
            errno = saved;
            goto out;
        }
        goto opened;
    }
    shared = cache_enabled(t->vol) && (!rec || status == ENOENT);
    fd = new_memfd(t->path, flags & O_CLOEXEC);
    if (fd < 0) goto out;
    if (rec && !(flags & O_TRUNC && writable)) {
        int rc = read_stored(t, rec, fd, held_id, &err);
        if (rc == -2) {  /* removed meanwhile: ENOENT, or (O_CREAT) a new file after all */
            RESOLVE(close)(fd);
            pthread_mutex_unlock(&S.lock);
            if (flags & O_CREAT) return open_volume_file(t, flags, mode);
            errno = ENOENT;
            return -1;
        }
        if (rc != 0) goto unreadable;
        lseek(fd, 0, SEEK_SET);
    }
    if (exists) {  /* fstat of the memfd: the file's mode and times (a commit keeps them) */
        struct timespec times[2] = {st.st_atim, st.st_mtim};
        if (rec && !(flags & O_TRUNC && writable)) futimens(fd, times);
        fchmod(fd, st.st_mode & 07777);
    }
    if (writable) {
        if (flags & O_APPEND) fcntl(fd, F_SETFL, O_APPEND);
        if (!rec || (flags & O_TRUNC)) {
            /* a new or truncated file exists (empty) from now on, as with the kernel */
            if ((rec ? commit(t->vol, t->path, fd, NULL, mode) : commit_new(t->vol, t->path, fd, mode)) != 0) {
                int saved = errno;
                if (!rec && saved == EEXIST && !(flags & O_EXCL)) {  /* created by another process meanwhile: open it */
                    RESOLVE(close)(fd);
                    pthread_mutex_unlock(&S.lock);
                    return open_volume_file(t, flags, mode);
                }
                RESOLVE(close)(fd);
                fd = -1;
                errno = saved;
                goto out;
            }
            in_shield++;
            if (!exists && stat64(t->path, &st) == 0) fchmod(fd, st.st_mode & 07777);
            in_shield--;
            struct fspf_file *made = fspf_find(&t->vol->fs, t->path);
            if (made) memcpy(held_id, made->file_id, 16);
        }
    }
    if (shared) {  /* the first open: this plaintext becomes the shared one (or another process's, first) */
        /* Under the volume's lock (shared: no commit in between), what fd holds must still be
         * the file: another process may have opened, written, committed and closed it since
         * this one read (or created) it, and the cache would drop that process's memfd, unheld,
         * for this stale one. Then it is read again. */
        int lock = volume_lock(t->vol, LOCK_SH);
        volume_refresh(t->vol, 1);
        struct fspf_file *now = fspf_find(&t->vol->fs, t->path);
        if (now && memcmp(now->file_id, held_id, 16) != 0) {
            if (load_record(t, now, fd, &err) != 0) {
                if (lock >= 0) RESOLVE(close)(lock);
                goto unreadable;
            }
            lseek(fd, 0, SEEK_SET);
        }
        int kept = cache_open(t->path, flags, fd, &status);
        if (lock >= 0) RESOLVE(close)(lock);
        if (kept >= 0) {
            RESOLVE(close)(fd);
            fd = kept;
            goto opened;
        }
    }
    if (!writable) fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
opened:
    (writable ? track : track_reader)(fd, t->vol, t->path);  /* a reader too: fstat's identity */
out:
    pthread_mutex_unlock(&S.lock);
    return fd;
unreadable:  /* err says why: one line, EIO */
    shield_log("%s %s: %s", region_word(t->vol), t->vol->v->path, err.msg);
    RESOLVE(close)(fd);
    pthread_mutex_unlock(&S.lock);
    errno = EIO;
    return -1;
}

/* O_TMPFILE in an ephemeral region: an unnamed file that lives as long as its descriptors.
 * An anonymous memfd: its content never reaches the disk. (linkat() cannot give it a name.) */
int open_anonymous(const struct target *t, int flags)
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

/* truncate, truncate64 of a file in a region: the plaintext is truncated and protected again
 * (the stored ciphertext truncated would be unreadable). 0, -1 (errno), or -2: not ours (the
 * real call with t->path). */
int shield_truncate(const char *path, off64_t length, struct target *t)
{
    if (!ACTIVE() || !path || target_of(AT_FDCWD, path, 1, t) != 0) return -2;
    if (t->kind == T_EMB && t->m && t->m->kind == EMBEDFS_FILE) {
        errno = dir_syntax(path) ? ENOTDIR : EROFS;
        return -1;
    }
    struct stat64 st;
    if (t->kind == T_PASS && S.nvols && !dir_syntax(path)) {  /* a link outside a region to a file in one */
        int followed = follow_into_region(AT_FDCWD, path, t, &st);
        if (followed != 1) return followed == -1 ? -1 : -2;
    }
    if (t->kind != T_VOL || strcmp(t->path, t->vol->v->path) == 0 || reserved_name(t->vol, base_name(t->path)))
        return -2;
    if (dir_syntax(path)) return region_dir_syntax(t, 0);
    int fd = open_volume_file(t, O_WRONLY | O_CLOEXEC, 0);
    if (fd < 0) return fd;  /* -2: a directory, the kernel's EISDIR */
    int rc = ftruncate64(fd, length), saved = errno;
    if (close_tracked(fd) != 0 && rc == 0) return -1;
    errno = saved;
    return rc;
}

/* ------------------------------------------------------------------ unlink, rename */

/* The entries of directory dir (in an ephemeral region) that the region hides: whether there
 * are only such (1), and with unlink, removes them. Called with S.lock held. */
static int only_hidden_entries(struct svol *vol, const char *dir, int unlink)
{
    in_shield++;
    DIR *d = RESOLVE(opendir)(dir);
    int only = d != NULL;
    for (struct dirent64 *e; only && (e = RESOLVE(readdir64)(d)) != NULL;) {
        char entry[PATH_MAX];
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        only = snprintf(entry, sizeof entry, "%s/%s", dir, e->d_name) < (int)sizeof entry && ephemeral_hidden(vol, entry);
        if (only && unlink) only = unlinkat(RESOLVE(dirfd)(d), e->d_name, 0) == 0 || errno == ENOENT;
    }
    if (d) RESOLVE(closedir)(d);
    in_shield--;
    return only;
}

/* rmdir, unlinkat(AT_REMOVEDIR) of a directory in an ephemeral region that holds nothing but
 * what the region hides (an earlier start's files, a tool's output, planted ones): it is empty
 * to the service, which removes it as on a local disk, those entries first. 0, -1 (errno), or
 * -2: the kernel's (t->path). */
static int remove_region_dir(struct target *t)
{
    if (!t->vol->ephemeral || strcmp(t->path, t->vol->v->path) == 0) return -2;
    in_shield++;
    int rc = rmdir(t->path);
    in_shield--;
    if (rc == 0 || errno != ENOTEMPTY) return rc;
    pthread_mutex_lock(&S.lock);
    if (only_hidden_entries(t->vol, t->path, 0) && only_hidden_entries(t->vol, t->path, 1)) {
        in_shield++;
        rc = rmdir(t->path);
        in_shield--;
    } else {
        errno = ENOTEMPTY;
    }
    pthread_mutex_unlock(&S.lock);
    return rc;
}

/* unlink, unlinkat, rmdir: 0 or -1 (errno), or -2: not ours (the real call with t->path). */
int shield_unlink(int dirfd, const char *path, int flags, struct target *t)
{
    if (!ACTIVE() || !path || target_of(dirfd, path, 0, t) != 0) return -2;
    if (t->kind == T_EMB && !(flags & AT_REMOVEDIR)) {
        errno = EROFS;
        return -1;
    }
    if (t->kind == T_VOL && (flags & AT_REMOVEDIR)) return remove_region_dir(t);
    if (t->kind != T_VOL || (flags & AT_REMOVEDIR)) return -2;
    if (dir_syntax(path)) return region_dir_syntax(t, 0);  /* ENOTDIR for a file, EISDIR... */
    pthread_mutex_lock(&S.lock);
    int rc = -2;
    volume_refresh(t->vol, 0);
    if (fspf_find(&t->vol->fs, t->path)) {
        rc = commit(t->vol, NULL, -1, t->path, 0);
        if (rc == 0) retarget_tracked(t->vol, t->path, NULL, 0);
        if (rc == 0) cache_forget(t->vol, t->path);
    } else if (ephemeral_hidden(t->vol, t->path)) {
        errno = ENOENT;  /* not this process's: not there */
        rc = -1;
    }
    pthread_mutex_unlock(&S.lock);
    return rc;
}

/* A directory renamed within a volume or an ephemeral region: the kernel moves it, then every
 * file recorded below it is protected again under its new path (paths are bound into the
 * chunks), one commit per file (commits fsync nothing: "Durability"). A crash of the service in
 * between leaves the files not yet committed unreadable under their old names: the Design's
 * journal makes it one commit. Called with S.lock held. */
static int rename_region_dir(struct svol *vol, const char *from, const char *to)
{
    size_t n = strlen(from);
    if (strncmp(to, from, n) == 0 && to[n] == '/') {
        errno = EINVAL;  /* into itself */
        return -1;
    }
    if (strcmp(from, to) == 0) return 0;  /* the kernel's: nothing moves */
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
        if (rec && rec->protection == FSPF_SYMLINK) {
            if (snprintf(next, sizeof next, "%s%s", to, moved[i] + n) < (int)sizeof next)
                ok = move_link(vol, rec, next, next, moved[i]) == 0;  /* already moved by the kernel */
        } else if (rec && snprintf(next, sizeof next, "%s%s", to, moved[i] + n) < (int)sizeof next &&
            (plain = new_memfd(next, 1)) >= 0) {
            in_shield++;
            stored = open(next, O_RDONLY | O_CLOEXEC);  /* already moved: the old record reads it */
            in_shield--;
            if (stored >= 0 && fspf_open_file(rec, stored, plain, &err) == 0) {
                keep_times(stored, plain);
                ok = commit(vol, next, plain, moved[i], 0600) == 0;  /* (the old name is gone already) */
            }
            else shield_log("%s %s: %s", region_word(vol), vol->v->path, stored < 0 ? strerror(errno) : err.msg);
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

/* rename, renameat: 0 or -1 (errno), or -2: not ours (the real call). */
int shield_rename(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
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
    if (dir_syntax(oldpath) || dir_syntax(newpath)) {
        struct stat64 st;
        in_shield++;
        int is_dir = stat64(from.path, &st) == 0 && S_ISDIR(st.st_mode);
        in_shield--;
        if (!is_dir) return -2;  /* the kernel: ENOTDIR or ENOENT, nothing renamed */
    }
    pthread_mutex_lock(&S.lock);
    if (from.kind == T_VOL) volume_refresh(from.vol, 0);
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
        else rc = rename_region_dir(from.vol, from.path, to.path);
        pthread_mutex_unlock(&S.lock);
        return rc;
    }
    if (!rec) {
        struct stat64 st;
        in_shield++;
        int is_dir = stat64(from.path, &st) == 0 && S_ISDIR(st.st_mode);
        in_shield--;
        int rc = -1;
        if (is_dir && from.kind == T_VOL && to.kind == T_VOL && from.vol == to.vol) rc = rename_region_dir(from.vol, from.path, to.path);
        else errno = from.kind == T_VOL && !is_dir ? ENOENT : EXDEV;
        pthread_mutex_unlock(&S.lock);
        return rc;
    }
    if (to.kind != T_VOL || to.vol != from.vol) {
        pthread_mutex_unlock(&S.lock);
        errno = EXDEV;  /* callers (shutil.move, mv) then copy and unlink */
        return -1;
    }
    if (rec->protection == FSPF_SYMLINK) {  /* the link itself moves, as the kernel's rename */
        int rc = strcmp(from.path, to.path) == 0 ? 0 : move_link(to.vol, rec, NULL, to.path, from.path);
        if (rc == 0 && strcmp(from.path, to.path) != 0) cache_forget(to.vol, to.path);
        pthread_mutex_unlock(&S.lock);
        return rc;
    }
    /* The path is bound into every chunk: moving a file re-protects it under its new name. */
    int plain = new_memfd(to.path, 1), rc = -1;
    if (plain >= 0) {
        in_shield++;
        int stored = open(from.path, O_RDONLY | O_CLOEXEC);
        in_shield--;
        struct rt_error err;
        if (stored >= 0 && fspf_open_file(rec, stored, plain, &err) == 0) {
            keep_times(stored, plain);
            rc = commit(to.vol, to.path, plain, from.path, 0600);
            if (rc == 0 && strcmp(from.path, to.path) != 0) {
                retarget_tracked(to.vol, to.path, NULL, 0);  /* the replaced file's fds */
                retarget_tracked(to.vol, from.path, to.path, 0);
                cache_forget(to.vol, from.path);
                cache_forget(to.vol, to.path);
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

/* ------------------------------------------------------------------ mkstemp, tmpfile */

/* glibc's mkstemp family and tmpfile() open their file inside libc, past open(): in an
 * ephemeral region the file would be plaintext on disk and, unrecorded, invisible by name. There
 * the shield makes the name and opens it through open(); elsewhere libc's own. */
static int ephemeral_path(const char *path)
{
    struct target t;
    return ACTIVE() && path && S.nvols && target_of(AT_FDCWD, path, 0, &t) == 0 && t.kind == T_VOL && t.vol->ephemeral;
}

int shield_mkostemps(char *tmpl, int suffixlen, int flags, int large)
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

/* tmpfile() uses P_tmpdir (/tmp) whatever TMPDIR says: an anonymous memfd when it is ephemeral. */
FILE *shield_tmpfile(int large)
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
