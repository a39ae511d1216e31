/* The commit protocol: the one place where a volume's or an ephemeral region's stored files,
 * and a volume's fspf, are written. */
#include <sys/file.h>
#include <sys/xattr.h>

#include "shield.h"

static void tmp_name(const char *path, char *out, size_t len) { commit_tmp_name(path, (long)getpid(), out, len); }

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

/* Record a new fspf tag: phase 1 ("next", before the renames: from is the volume's tag) or 2
 * (after: from is the tag it had). In the keys file, in the keys' state store (a compare-and-swap
 * from what this process committed last: if another writer moved the record, the commit is
 * refused), or, for the container's own copy of a volume, in its state file (the keys file keeps
 * the image's tag: docs/runtime.md, "Freshness"). Not synced: a commit is made durable by the
 * service's fsync (volume_sync). */
static int record_tag(struct svol *vol, const unsigned char from[16], const unsigned char tag[16], int next,
                      struct rt_error *err)
{
    if (vol->container_copy)
        return next ? state_record(vol->v->path, vol->key, from, tag, 0, err)
                    : state_record(vol->v->path, vol->key, tag, NULL, 0, err);
    if (!S.keys_persist) {
        if (!next) {
            char hex[33];
            hex_encode(tag, 16, hex);
            shield_log("volume %s: new fspf tag %s (debug-mode keys: record it as SCONE_FSPF_TAG)", vol->v->path, hex);
        }
        return 0;
    }
    if (S.has_store) {
        /* phase 1: {from} -> {from, next tag}; phase 2: {from, next tag} -> {tag} */
        struct store_record with_next = {0}, alone = {0};
        memcpy(with_next.tag, from, 16);
        with_next.has_next = 1;
        memcpy(with_next.next_tag, tag, 16);
        memcpy(alone.tag, next ? from : tag, 16);
        const struct store_record *expected = next ? &alone : &with_next, *new_record = next ? &with_next : &alone;
        S.store.no_sync = 1;
        int rc = store_cas(&S.store, vol->record, expected, new_record, err);
        struct store_record now;
        if (rc == STORE_MOVED && next && store_read(&S.store, vol->record, &now, err) == 1 && now.has_next &&
            memcmp(now.next_tag, from, 16) == 0) {
            /* a commit of this service whose second phase was not recorded (a crash after its
             * renames, the store unreachable then): the fspf carries its tag, settle it first */
            rc = store_cas(&S.store, vol->record, &now, &alone, err);
            if (rc == STORE_SWAPPED) rc = store_cas(&S.store, vol->record, expected, new_record, err);
        }
        S.store.no_sync = 0;
        if (rc == STORE_MOVED && next) {
            char why[sizeof err->msg];
            memcpy(why, err->msg, sizeof why);
            rt_fail(err, "%.400s; this commit is refused (the volume stays as it was): two writers committed from "
                         "the same tag", why);
        }
        return rc == STORE_SWAPPED ? 0 : -1;
    }
    return keys_record_tag(S.keys_path, vol->v->path, tag, next, 0, err);
}

int volume_lock(const struct svol *vol, int op)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s%s" VOLUME_LOCK_NAME, vol->v->path, strcmp(vol->v->path, "/") == 0 ? "" : "/");
    int fd = RESOLVE(open)(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fd = RESOLVE(open)(path, O_RDONLY | O_CLOEXEC);  /* a read-only volume: none to take */
    if (fd < 0) return -1;
    while (flock(fd, op) != 0)
        if (errno != EINTR) {
            int saved = errno;
            RESOLVE(close)(fd);
            errno = saved;
            return -1;
        }
    return fd;
}

/* The record of the volume's current tag made durable: it was written (renamed into place)
 * by the commits without fsync; now the file and its directory are fsynced (the keys file, the
 * container copy's state file, the state directory's record; etcd keeps its own). */
static int record_durably(struct svol *vol, struct rt_error *err)
{
    char state[PATH_MAX];
    const char *path = NULL;
    if (vol->container_copy) {
        snprintf(state, sizeof state, "%s%s" VOLUME_STATE_NAME, vol->v->path, strcmp(vol->v->path, "/") == 0 ? "" : "/");
        path = state;
    } else if (!S.keys_persist) {
        return 0;
    } else if (S.has_store) {
        return store_sync(&S.store, vol->record, err);
    } else {
        path = S.keys_path;
    }
    if (fsync_with_dir(path) != 0) return rt_fail(err, "cannot fsync the record of its tag %s: %s", path, strerror(errno));
    return 0;
}

/* A path this process committed or removed: the next volume_sync fsyncs it (and its directory). */
static void note_dirty(struct svol *vol, const char *path)
{
    if (vol->ephemeral || !path) return;
    for (size_t i = 0; i < vol->ndirty; i++)
        if (strcmp(vol->dirty[i], path) == 0) return;
    char *copy = vol->ndirty < DIRTY_MAX ? strdup(path) : NULL;
    if (copy) vol->dirty[vol->ndirty++] = copy;
    else vol->foreign = 1;  /* too many to name: the next sync flushes the file system */
}

/* fsync, fdatasync, or a directory's fsync in a volume: make durable what the service committed
 * to it so far. Commits write without fsync (the kernel keeps them when the service is killed:
 * docs/runtime.md, "Durability"). Under the volume's lock (no commit half done), after loading
 * its fspf as last committed: the stored files this process committed since its last sync are
 * fsynced with their directories, or, when the fspf holds commits of other processes (or of an
 * earlier start) this process cannot name, the volume's whole file system is flushed (syncfs);
 * then the fspf and the record of its tag. Nothing committed since this process's last sync:
 * nothing to do. Called with S.lock held. 0, or -1 with errno (EIO) and one line logged. */
int volume_sync(struct svol *vol)
{
    if (vol->ephemeral) return 0;
    struct rt_error err = {{0}};
    int rc = 0;
    in_shield++;
    int lock = volume_lock(vol, LOCK_EX);
    if (volume_refresh(vol, 1) < 0) {
        rc = rt_fail(&err, "the fspf on disk is not one the keys record");
    } else if (vol->ndirty || vol->foreign) {
        if (vol->foreign) {
            int dir = RESOLVE(open)(vol->v->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dir < 0 || syncfs(dir) != 0) rc = rt_fail(&err, "cannot flush its file system: %s", strerror(errno));
            if (dir >= 0) RESOLVE(close)(dir);
        }
        for (size_t i = 0; rc == 0 && !vol->foreign && i < vol->ndirty; i++)
            if (fsync_with_dir(vol->dirty[i]) != 0 && (errno != ENOENT || fsync_dir_of(vol->dirty[i]) != 0))
                rc = rt_fail(&err, "cannot fsync %s: %s", vol->dirty[i], strerror(errno));
        if (rc == 0 && fsync_with_dir(vol->v->fspf_path) != 0)
            rc = rt_fail(&err, "cannot fsync its fspf: %s", strerror(errno));
        if (rc == 0) rc = record_durably(vol, &err);
        if (rc == 0) {
            for (size_t i = 0; i < vol->ndirty; i++) free(vol->dirty[i]);
            vol->ndirty = 0;
            vol->foreign = 0;
        }
    }
    if (lock >= 0) RESOLVE(close)(lock);
    if (rc != 0) shield_log("volume %s: sync failed: %s", vol->v->path, err.msg);
    in_shield--;
    if (rc != 0) errno = EIO;
    return rc == 0 ? 0 : -1;
}

/* The extended attributes of the stored file at from, set on to (the new stored file that
 * replaces it): a rewrite, an O_TRUNC or a rename keeps a file's xattrs, as the kernel's do.
 * One the file system refuses to set (security.*, without the right) is left out. */
static void copy_xattrs(const char *from, int to)
{
    static char names[XATTR_LIST_MAX], value[XATTR_SIZE_MAX];  /* commits run under S.lock: one at a time */
    ssize_t len = listxattr(from, names, sizeof names);
    for (ssize_t at = 0; at < len; at += (ssize_t)strlen(names + at) + 1) {
        ssize_t n = getxattr(from, names + at, value, sizeof value);
        if (n >= 0) fsetxattr(to, names + at, value, (size_t)n, 0);
    }
}

/* The commit of a volume change: protect the plaintext in plain_fd (if path) as path, drop the
 * record of remove (if any), and write both the stored file and the fspf atomically (temp
 * files renamed into place after the tag's first phase is recorded; nothing fsynced: a crash of
 * the service keeps the commit, a crash of the machine may lose it until volume_sync). The
 * stored file keeps the mode and extended attributes of the one it replaces (or of remove, a
 * rename); a new one gets
 * mode, less the umask, as the kernel's create would; it gets plain_fd's access and modification times. Called with S.lock held. Returns 0, or
 * -1 with errno set and one line logged. mode S_IFLNK: plain_fd holds a symlink's target; the
 * stored object is a symlink to it, its record FSPF_SYMLINK. An error creating the stored file (a missing
 * directory: ENOENT, EACCES...) is the service's own, as the kernel's open would have given it,
 * without a line.
 * An ephemeral region's stored file is still written to a temp file and renamed into place (a
 * reader sees the old or the new ciphertext), no tag is recorded, and volume_sync does nothing
 * for it (its content is gone at the next start anyway); its fspf is written as a volume's is (under the
 * lock, onto the last committed one) when it is this start's shared one, not at all when it
 * lives in this process's memory only. */
static int commit_as(struct svol *vol, const char *path, int plain_fd, const char *remove, mode_t mode, int create)
{
    struct rt_error err = {{0}};
    const struct fspf_region *region = &vol->fs.regions[0];
    char stored_tmp[PATH_MAX] = "", fspf_tmp[PATH_MAX];
    struct fspf_file rec = {0}, *old = NULL, saved_old = {0}, saved_removed = {0};
    int have_rec = 0, have_removed = 0, saved_errno = EIO, lock = -1;
    unsigned char *sealed = NULL, tag[16];
    size_t sealed_len = 0;
    in_shield++;
    /* The volume's lock is taken before the plaintext is read: a memfd the launcher shares
     * between processes (cache.c) is committed as it is under the lock, so a commit that
     * follows another process's write always includes it. An ephemeral region's shared fspf
     * (this start's /tmp) is committed under its lock too. */
    if (!vol->ephemeral || vol->shared) {
        lock = volume_lock(vol, LOCK_EX);
        if (lock < 0) shield_log("volume %s: cannot take its lock (%s); committing without it", vol->v->path, strerror(errno));
    }
    if (path && S_ISLNK(mode)) {
        /* a symlink: plain_fd holds its target, recorded as authenticated content */
        char target[PATH_MAX];
        ssize_t n = pread(plain_fd, target, sizeof target - 1, 0);
        if (n <= 0) goto fail_errno;
        target[n] = '\0';
        tmp_name(path, stored_tmp, sizeof stored_tmp);
        unlink(stored_tmp);
        if (symlink(target, stored_tmp) != 0) {
            saved_errno = errno;
            stored_tmp[0] = '\0';
            if (lock >= 0) RESOLVE(close)(lock);
            in_shield--;
            errno = saved_errno;
            return -1;
        }
        if (fspf_protect_file(path, FSPF_AUTHENTICATED, region->chunk_size, region->key_length, plain_fd, (uint64_t)n, -1,
                              &rec, &err) != 0) {
            errno = EIO;
            goto fail_errno;
        }
        rec.protection = FSPF_SYMLINK;
        have_rec = 1;
    } else if (path) {
        struct stat64 st;
        if (RESOLVE(fstat64)(plain_fd, &st) != 0) goto fail_errno;
        tmp_name(path, stored_tmp, sizeof stored_tmp);
        struct stat64 was;
        const char *replaced = remove && stat64(remove, &was) == 0 ? remove : stat64(path, &was) == 0 ? path : NULL;
        int keep = replaced != NULL;
        unlink(stored_tmp);  /* an earlier process's with the same pid: O_EXCL applies mode */
        int out = open(stored_tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, keep ? 0600 : mode);
        if (out < 0) {
            saved_errno = errno;
            if (lock >= 0) RESOLVE(close)(lock);
            in_shield--;
            errno = saved_errno;
            return -1;
        }
        if (keep) {
            fchmod(out, was.st_mode & 07777);
            copy_xattrs(replaced, out);
        }
        int rc = fspf_protect_file(path, region->protection, region->chunk_size, region->key_length, plain_fd,
                                   (uint64_t)st.st_size, out, &rec, &err);
        if (rc == 0 && region->protection == FSPF_AUTHENTICATED) rc = copy_fd(plain_fd, out, (uint64_t)st.st_size);
        if (rc == 0) {  /* the plaintext's times (its writes, utime on the fd) are the file's */
            struct timespec times[2] = {st.st_atim, st.st_mtim};
            futimens(out, times);
        }
        saved_errno = errno;
        close(out);
        if (rc != 0) { errno = saved_errno; goto fail_errno; }
        have_rec = 1;
    }
    /* Under the volume's lock, onto the fspf as the service's other processes last committed it:
     * they commit one at a time, and none drops another's records. */
    if (!vol->ephemeral || vol->shared) {
        if (volume_refresh(vol, 1) < 0) {
            rt_fail(&err, "the fspf on disk is not one the keys record");
            saved_errno = EIO;
            goto fail;
        }
        if (create && path && fspf_find(&vol->fs, path)) {
            /* another process created it since this one looked: the kernel's O_CREAT would
             * have opened that file (O_EXCL: EEXIST), never emptied it */
            if (stored_tmp[0]) unlink(stored_tmp);
            if (have_rec) fspf_file_free(&rec);
            if (lock >= 0) RESOLVE(close)(lock);
            in_shield--;
            errno = EEXIST;
            return -1;
        }
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
    if (vol->ephemeral && !vol->shared) {
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
        if (out < 0 || write_full(out, sealed, sealed_len) != 0) {
            rt_fail(&err, "cannot write the fspf of %s %s: %s", region_word(vol), vol->v->path, strerror(errno));
            if (out >= 0) close(out);
            unlink(fspf_tmp);
            goto undo;
        }
        close(out);
    }
    unsigned char was[16];
    memcpy(was, vol->tag, 16);
    if (!vol->ephemeral && record_tag(vol, was, tag, 1, &err) != 0) { unlink(fspf_tmp); goto undo; }
    if ((stored_tmp[0] && rename(stored_tmp, path) != 0) || rename(fspf_tmp, vol->v->fspf_path) != 0) {
        rt_fail(&err, "cannot replace files of %s %s: %s", region_word(vol), vol->v->path, strerror(errno));
        unlink(fspf_tmp);
        goto undo;
    }
    if (remove && (!path || strcmp(remove, path) != 0)) unlink(remove);
    note_dirty(vol, path);
    note_dirty(vol, remove);
    memcpy(vol->tag, tag, 16);
    if (RESOLVE(stat64)(vol->v->fspf_path, &vol->seen) != 0) memset(&vol->seen, 0, sizeof vol->seen);
    vol->seen.st_nlink = 1;  /* vol->fs is loaded */
    if (!vol->ephemeral && record_tag(vol, was, tag, 0, &err) != 0) shield_log("%s", err.msg);  /* "next" is recorded: start-up promotes it */
    if (lock >= 0) RESOLVE(close)(lock);
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
    if (lock >= 0) RESOLVE(close)(lock);
    shield_log("%s %s: write of %s not saved: %s", region_word(vol), vol->v->path, path ? path : remove, err.msg[0] ? err.msg : strerror(saved_errno));
    in_shield--;
    errno = saved_errno;
    return -1;
}

int commit(struct svol *vol, const char *path, int plain_fd, const char *remove, mode_t mode)
{
    return commit_as(vol, path, plain_fd, remove, mode, 0);
}

/* The commit that creates path (O_CREAT of a file this process found absent): -1 with EEXIST,
 * and nothing written, when another process of the service created it in between. */
int commit_new(struct svol *vol, const char *path, int plain_fd, mode_t mode)
{
    return commit_as(vol, path, plain_fd, NULL, mode, 1);
}
