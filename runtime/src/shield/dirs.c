/* Directories: listings made by the shield (fake directories) for embedded and volume
 * directories: the real listing merged with the embedded tree, without what a volume hides. */
#include "shield.h"

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

/* Whether the listing of dir, a directory under a code root, shows its entry e from the disk:
 * only what is there although not embedded (a file left as not code, a region, the way to one);
 * the embedded entries are added from the embedfs. */
static int listed_in_code(const char *dir, const struct dirent64 *e)
{
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) return 1;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, e->d_name) >= (int)sizeof path) return 0;
    return unsealed(path);
}

/* The listing of t (an embedded, volume or code-root directory) as a fake directory, from the
 * real one (real: read to its end, then rewound; NULL: none on disk) merged with the embedded
 * tree. */
static struct fake_dir *make_fake_dir(const struct target *t, DIR *real)
{
    int emb_dir = t->kind == T_EMB && t->is_dir;
    struct listing l = {0};
    if (t->kind == T_VOL) volume_refresh(t->vol, 0);  /* the files the service's other processes wrote */
    if (real) {
        struct dirent64 *e;
        in_shield++;
        while ((e = RESOLVE(readdir64)(real)) != NULL)
            if (t->kind == T_VOL ? listed(t->vol, t->path, e) : !t->in_code || listed_in_code(t->path, e))
                add_entry(&l, e->d_name, strlen(e->d_name), e->d_type, e->d_ino);
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
    int emb_dir = t.kind == T_EMB && t.is_dir, vol_dir = t.kind == T_VOL, code_dir = t.kind == T_PASS && t.in_code;
    if (t.kind == T_SEALED || (t.kind == T_EMB && !t.is_dir)) {
        *handled = 1;
        errno = t.kind == T_SEALED ? ENOENT : ENOTDIR;
        return NULL;
    }
    if (!emb_dir && !vol_dir && !code_dir) return NULL;
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
    char dir[PATH_MAX];
    if (!ACTIVE() || (!S.nvols && !S.cfg.code_root_count)) return RESOLVE(fdopendir)(fd);
    if (fd_path(fd, dir, sizeof dir) != 0) return RESOLVE(fdopendir)(fd);
    /* A directory in a volume, or under a code root (listed as by opendir: the embedded
     * entries merged in, what is sealed left out). */
    if (target_of(AT_FDCWD, dir, 1, &t) != 0 || !(t.kind == T_VOL || t.in_code)) return RESOLVE(fdopendir)(fd);
    if (t.kind == T_SEALED) {
        errno = ENOENT;
        return NULL;
    }
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
