/* Paths: what a path the service passes names (embedded code, a volume or ephemeral region,
 * or neither), and the names a volume keeps to itself. */
#include "shield.h"

/* Lexically normalise an absolute path (collapse //, ., ..). */
void normalise(char *path)
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
            if (fd_path(dirfd, base, sizeof base) != 0) return -1;
        }
        if (strlen(base) + strlen(path) + 2 > len) return -1;
        snprintf(out, len, "%s/%s", base, path);
    }
    normalise(out);
    return 0;
}

/* Mounted at run time, never part of the image: not in a '/' volume (--authenticate-root). */
int run_time_mount(const char *path)
{
    static const char *const mounts[] = {"/proc", "/dev", "/sys", "/run", "/.sconify"};
    for (size_t i = 0; i < sizeof mounts / sizeof mounts[0]; i++) {
        size_t n = strlen(mounts[i]);
        if (strncmp(path, mounts[i], n) == 0 && (path[n] == '/' || path[n] == '\0')) return 1;
    }
    return 0;
}

/* The absolute path the kernel gives for fd (/proc/self/fd), NUL-terminated: 0, or -1 (not a
 * path: a socket, a pipe, a memfd). */
int fd_path(int fd, char *out, size_t len)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    in_shield++;
    ssize_t n = RESOLVE(readlink)(link, out, len - 1);
    in_shield--;
    if (n <= 0 || out[0] != '/') return -1;
    out[n] = '\0';
    return 0;
}

struct svol *volume_of(const char *path)
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

static int real_directory(const char *path);

/* Resolve embedded symlinks in t->path (the last component only when follow) and find out
 * whether it names embedded code, a volume, or neither. */
static void locate_once(struct target *t, int follow)
{
    t->kind = T_PASS;
    t->m = NULL;
    t->is_dir = t->bare_root = 0;
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
    if (S.nvols && (t->vol = volume_of(t->path)) != NULL) {
        t->kind = T_VOL;
        return;
    }
    if (t->kind == T_PASS && (under_code_root(t->path) || shallow_code(t->path)) && !unsealed(t->path)) {
        t->kind = T_SEALED;
        if ((t->bare_root = bare_code_root(t->path)) && real_directory(t->path)) t->kind = T_PASS;
    }
}

/* locate_once, then the symlinks the service made in a region (volumes.c), as often as one of
 * them leads on (40 at most, as the kernel's ELOOP limit). */
static void locate(struct target *t, int follow)
{
    t->inj = NULL;
    if (S.ninjected && injected_target(t, 0)) return;  /* an injection file: before anything on disk */
    for (int round = 0;; round++) {
        locate_once(t, follow);
        if (t->kind != T_VOL) break;
        volume_refresh(t->vol, 0);  /* a link another process of the service made */
        if (!t->vol->has_links || resolve_region_links(t, follow) != 1) break;
        if (round == 40) {
            t->loop = 1;  /* a link loop: the kernel's ELOOP */
            break;
        }
    }
    /* a directory on the way to an injection file, where nothing else serves the path */
    if (S.ninjected && (t->kind == T_PASS || t->kind == T_SEALED)) injected_target(t, 1);
}

/* What path (relative to dirfd) names, in t: -1 if it cannot be made absolute. */
int target_of(int dirfd, const char *path, int follow, struct target *t)
{
    t->changed = t->loop = 0;
    if (absolute(dirfd, path, t->path, sizeof t->path) != 0) return -1;
    /* t->changed only once locate() resolved an embedded symlink: otherwise a call passed to
     * the kernel keeps the caller's spelling ("name/" names a directory, ".." is the kernel's) */
    locate(t, follow);
    t->in_code = t->kind != T_VOL && t->kind != T_INJ && under_code_root(t->path);
    return 0;
}

/* ------------------------------------------------------------------ sealed code roots */

/* Whether path is a code root or inside one (lexically: the service names code by these paths;
 * a symlink planted on disk under a root is never followed for a sealed path). */
int under_code_root(const char *path)
{
    if (!S.cfg.code_root_count || run_time_mount(path)) return 0;
    for (size_t i = 0; i < S.cfg.code_root_count; i++) {
        const char *root = S.cfg.code_roots[i];
        size_t n = strlen(root);
        if (strncmp(path, root, n) == 0 && (path[n] == '/' || path[n] == '\0')) return 1;
    }
    return 0;
}

/* Whether path is itself a code root that no other code root holds and that is not a code
 * name of a shallow root: a place the interpreter searches that the image lacks (the user site
 * ~/.local/lib/python3.11/site-packages). The service may create it (mkdir reaches the kernel:
 * test_site's os.makedirs(site.USER_SITE)) and sees it while it is a real directory
 * (real_directory), empty of all but the measured code: every path below it stays sealed.
 * No package name leads to it (no code root holds it), so even one the host made is an empty
 * sys.path entry, never code. */
int bare_code_root(const char *path)
{
    int root = 0;
    size_t len = strlen(path);
    for (size_t i = 0; i < S.cfg.code_root_count; i++) {
        const char *r = S.cfg.code_roots[i];
        size_t n = strlen(r);
        if (n == len && strcmp(r, path) == 0) root = 1;
        else if (n < len && strncmp(path, r, n) == 0 && (path[n] == '/' || n == 1)) return 0;  /* held by r */
    }
    return root && !shallow_code(path);
}

/* Whether path is a directory on disk with no symlink on the way (its own realpath): a file
 * or a symlink at a bare code root could be code (python311.zip is such a root, a symlink could
 * lead to a directory of code), and stays sealed. */
static int real_directory(const char *path)
{
    struct stat64 st;
    char real[PATH_MAX];
    in_shield++;
    int is = RESOLVE(lstat64)(path, &st) == 0 && S_ISDIR(st.st_mode) && RESOLVE(realpath)(path, real) &&
             strcmp(real, path) == 0;
    in_shield--;
    return is;
}

/* Whether name is one the interpreter loads as code (runtime config "code_extensions"; ".so"
 * also matches libfoo.so.1). */
static int code_name(const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < S.cfg.code_extension_count; i++) {
        const char *ext = S.cfg.code_extensions[i];
        size_t n = strlen(ext);
        if (n > 1 && len > n && strcmp(name + len - n, ext) == 0) return 1;
        if (strcmp(ext, ".so") == 0 && strstr(name, ".so.")) return 1;
    }
    return 0;
}

/* Whether a shallow code root (a system directory on the search path: /usr/local/bin for a
 * console script there, / for WORKDIR /; runtime config "code_shallow") would load path as
 * code: a module or .pth directly in it, its __pycache__, the __init__ of a package directly
 * in it, or anything in a package the conversion embedded there. The rest of it is not code. */
int shallow_code(const char *path)
{
    for (size_t i = 0; i < S.cfg.code_shallow_count; i++) {
        const char *root = S.cfg.code_shallow[i];
        size_t n = strcmp(root, "/") == 0 ? 0 : strlen(root);
        if (strncmp(path, root, n) != 0 || path[n] != '/' || !path[n + 1]) continue;
        const char *rest = path + n + 1, *slash = strchr(rest, '/');
        if (!slash) {
            if (code_name(rest) || strcmp(rest, "__pycache__") == 0) return 1;
            continue;
        }
        if (slash - rest == 11 && strncmp(rest, "__pycache__", 11) == 0) return 1;
        if (!strchr(slash + 1, '/') && strncmp(slash + 1, "__init__.", 9) == 0 && code_name(slash + 1)) return 1;
        char init[PATH_MAX];
        int len = snprintf(init, sizeof init, "%.*s/__init__.py", (int)(slash - path - 1), path + 1);
        if (S.has_emb && len > 0 && (size_t)len < sizeof init && embedfs_lookup(&S.emb, init, (size_t)len)) return 1;
    }
    return 0;
}

/* Whether one of the n sorted paths lies below directory dir. */
static int leads_to(char *const *sorted, size_t n, const char *dir)
{
    char below[PATH_MAX];
    int len = snprintf(below, sizeof below, "%s/", strcmp(dir, "/") == 0 ? "" : dir);
    if (len < 0 || (size_t)len >= sizeof below) return 0;
    size_t lo = 0, hi = n;
    while (lo < hi) {  /* the first path >= "dir/": any path below dir is there or after it */
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(sorted[mid], below) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && strncmp(sorted[lo], below, (size_t)len) == 0;
}

static int compare_path(const void *key, const void *entry)
{
    return strcmp(key, *(char *const *)entry);
}

/* Whether a path under a code root that is not embedded is there all the same: a file the
 * conversion left on disk as not code (runtime config "code_left"), a directory on the way to
 * one, or a volume or ephemeral region (not code) or a directory on the way to one. */
int unsealed(const char *path)
{
    const struct rt_config *c = &S.cfg;
    if (bsearch(path, c->code_left, c->code_left_count, sizeof *c->code_left, compare_path)) return 1;
    if (leads_to(c->code_left, c->code_left_count, path)) return 1;
    size_t n = strlen(path);
    for (size_t i = 0; i < c->volume_count + c->ephemeral_count; i++) {
        const char *region = i < c->volume_count ? c->volumes[i].path : c->ephemeral[i - c->volume_count];
        size_t r = strlen(region);
        if (strncmp(path, region, r) == 0 && (path[r] == '/' || path[r] == '\0' || r == 1)) return 1;  /* in it */
        if (strncmp(region, path, n) == 0 && region[n] == '/') return 1;                       /* on the way */
    }
    return 0;
}

static int hidden_name(const char *name)
{
    return strcmp(name, VOLUME_FSPF_NAME) == 0 || strcmp(name, VOLUME_STATE_NAME) == 0 ||
           strcmp(name, VOLUME_LOCK_NAME) == 0 || strncmp(name, HIDDEN_TMP, strlen(HIDDEN_TMP)) == 0;
}

/* Names the service never sees as files of its own in vol: a volume's fspf, a container
 * copy's state file, the commit's lock file and the commit's temp files; in an ephemeral region
 * the lock file, the temp files and the fspfs of its starts (this one's, those earlier starts left). */
int reserved_name(const struct svol *vol, const char *name)
{
    if (!vol->ephemeral) return hidden_name(name);
    return strcmp(name, VOLUME_LOCK_NAME) == 0 || strncmp(name, HIDDEN_TMP, strlen(HIDDEN_TMP)) == 0 ||
           strncmp(name, EPHEMERAL_FSPF_PREFIX, strlen(EPHEMERAL_FSPF_PREFIX)) == 0;
}
