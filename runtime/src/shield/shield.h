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
 *  - sealed code roots (runtime config code_roots, code_left, code_shallow): under a code root
 *    only the embedfs is there. A path there that is not embedded, not a file left on disk as
 *    not code and not a nested region (or on the way to one) is ENOENT (EROFS for a write or
 *    mkdir), left out of listings, refused by dlopen: a planted module, .pth or pyc never loads.
 *  - volumes: a protected region (encrypted or authenticated) has its own fspf. open() of a
 *    file there returns a memfd with the checked plaintext; a file opened for writing is
 *    protected again on close()/fsync() (if its plaintext changed since it was loaded or last
 *    committed: struct content) with a fresh key and file id, written to a temp file and
 *    renamed over the old one with the re-encrypted fspf, and the new fspf tag is recorded in
 *    the keys file, or for the container's own copy of a volume (nothing mounted there) in its
 *    state file (two phases: "next" before the renames, "current" after). So only ciphertext is
 *    ever on disk and a closed write survives the service's crash; the service's fsync makes
 *    the volume durable (volume_sync: what survives a machine crash). The
 *    processes of the service share a volume: a commit runs under the volume's lock
 *    (.sconify.lock) onto the fspf last committed, and a changed fspf is reloaded (if its tag is
 *    fresh) before open/stat, so a parent sees what its workers wrote.
 *  - ephemeral regions (/tmp): served like an encrypted volume that starts empty at every start
 *    of the service. With a grant, its fspf is the one the launcher wrote for this start
 *    (<region>/.sconify.fspf.<start id>), encrypted with the key it made for this start and
 *    granted (never on disk, never in the environment), and shared by the whole measured tree
 *    as a volume's is: a child sees what its parent wrote and the reverse. Without one (docker
 *    exec, a refused command) the fspf exists only in this process's memory. Files written
 *    there are ciphertext on disk, unreadable once the start's key is gone. A regular file or
 *    symlink the fspf does not record (an earlier start's, an ungranted process's, a planted
 *    one) is not there for the service: hidden from listings, ENOENT for stat/open/unlink,
 *    replaced by a create. Directories, sockets and fifos pass through; O_TMPFILE and tmpfile()
 *    give an anonymous memfd, and the libc mkstemp family (which opens inside glibc) is served
 *    through open().
 *  - links in a region: symlink()/symlinkat() make a kernel symlink recorded in the region's
 *    fspf (FSPF_SYMLINK, its target authenticated); paths through a recorded link are resolved
 *    by the shield (target_of) after the target is checked. link()/linkat() there: EPERM.
 *
 * Every other process (a shell, `ls`) gets plain pass-through: without the keys it sees only
 * ciphertext. Errors the service cannot be told about in detail are reported as EIO, with one
 * line ("sconify-shield: ...") where SCONIFY_LOG says (stderr, a file; by default nowhere: never
 * into the service's own streams). Interposed are the public libc entry points the measured
 * runtimes and C code use (CPython, libuv, stdio, the fortified __open*_2), and syscall() for
 * the file calls the shield serves (SYS_openat, SYS_newfstatat, libuv's SYS_close...); glibc's
 * internal calls (ld.so, gconv, NSS, nftw) and inline syscall instructions are not.
 *
 * Where things are (src/shield/):
 *   shield.h     what the pieces share: the state S, volumes, targets, the real libc functions
 *   state.c      the state S, the real libc functions (dlsym RTLD_NEXT), shield_log
 *   init.c       start-up: the constructor (config, embedfs, keys and volume fspfs, ephemeral
 *                regions, the seccomp filter) and the stdin definition libjansson needs
 *   paths.c      paths: absolute and normalised, embedded symlinks resolved, which region a
 *                path is in (target_of), sealed code roots, run-time mounts, the names
 *                volumes hide
 *   embedded.c   embedded code: sealed memfds with a member's checked content, its stat, dlopen
 *   volumes.c    files in a volume or an ephemeral region: open (a plaintext memfd), unlink,
 *                rename, symlinks and hard links, O_TMPFILE, the mkstemp family and tmpfile
 *   tracked.c    the memfds the service may write (tracked fds): which file each one is, dup,
 *                retargeting on unlink/rename, protection again on close/fsync
 *   cache.c      the launcher's shared plaintext cache (../plaincache.h): one memfd per volume
 *                file for all the processes of the service
 *   commit.c     the commit protocol: the only place a volume's stored files and fspf are written
 *   injected.c   policy mode: the injection files the grant carries, served from sealed memfds at
 *                their paths (read-only: EROFS for a write), and the directories on the way to them
 *   dirs.c       directory listings (opendir, fdopendir, readdir*, scandir*, ...): the real one
 *                merged with the embedded tree, without what a volume hides or a code root seals
 *   interpose.c  the other exported libc entry points (open*, fopen*, freopen*, close, fclose,
 *                fsync, dup*, stat*, statx, access, readlink*, realpath, mkdir*, unlink*,
 *                remove, rename*, renameat2, statvfs*, symlink*, link*, mkstemp*, tmpfile)
 *                and syscall(), which routes the file calls the shield serves to them:
 *                each one decides which piece serves the path, or calls the real function
 *
 * Only the libc entry points are exported (EXPORT); everything declared here is hidden.
 */
#ifndef SCONIFY_SHIELD_H
#define SCONIFY_SHIELD_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "config.h"
#include "embedfs.h"
#include "fspf.h"
#include "statestore.h"
#include "util.h"

#define EXPORT __attribute__((visibility("default")))
#define FAKE_DEV 0x5c0f1fULL

#pragma GCC visibility push(hidden)

/* ------------------------------------------------------------------ real functions */

/* The libc functions the shield calls past itself: RESOLVE(name) is the next definition of
 * name (dlsym RTLD_NEXT, looked up on first use), of type name_fn. Defined in state.c. */
#define REAL_FUNCTIONS(REAL) \
    REAL(int, open, const char *, int, ...) \
    REAL(int, open64, const char *, int, ...) \
    REAL(int, openat, int, const char *, int, ...) \
    REAL(int, openat64, int, const char *, int, ...) \
    REAL(FILE *, fopen, const char *, const char *) \
    REAL(FILE *, fopen64, const char *, const char *) \
    REAL(FILE *, freopen, const char *, const char *, FILE *) \
    REAL(FILE *, freopen64, const char *, const char *, FILE *) \
    REAL(int, stat, const char *, struct stat *) \
    REAL(int, stat64, const char *, struct stat64 *) \
    REAL(int, fstat, int, struct stat *) \
    REAL(int, fstat64, int, struct stat64 *) \
    REAL(int, lstat, const char *, struct stat *) \
    REAL(int, lstat64, const char *, struct stat64 *) \
    REAL(int, fstatat, int, const char *, struct stat *, int) \
    REAL(int, fstatat64, int, const char *, struct stat64 *, int) \
    REAL(int, statx, int, const char *, int, unsigned int, struct statx *) \
    REAL(int, access, const char *, int) \
    REAL(int, faccessat, int, const char *, int, int) \
    REAL(ssize_t, readlink, const char *, char *, size_t) \
    REAL(ssize_t, readlinkat, int, const char *, char *, size_t) \
    REAL(char *, realpath, const char *, char *) \
    REAL(DIR *, opendir, const char *) \
    REAL(DIR *, fdopendir, int) \
    REAL(struct dirent *, readdir, DIR *) \
    REAL(struct dirent64 *, readdir64, DIR *) \
    REAL(int, closedir, DIR *) \
    REAL(int, dirfd, DIR *) \
    REAL(void, rewinddir, DIR *) \
    REAL(int, scandir, const char *, struct dirent ***, int (*)(const struct dirent *),      \
         int (*)(const struct dirent **, const struct dirent **))                            \
    REAL(int, scandir64, const char *, struct dirent64 ***, int (*)(const struct dirent64 *), \
         int (*)(const struct dirent64 **, const struct dirent64 **))                        \
    REAL(void *, dlopen, const char *, int) \
    REAL(int, mkdir, const char *, mode_t) \
    REAL(int, mkdirat, int, const char *, mode_t) \
    REAL(int, close, int) \
    REAL(int, fclose, FILE *) \
    REAL(int, fsync, int) \
    REAL(ssize_t, recvmsg, int, struct msghdr *, int) \
    REAL(int, fsetxattr, int, const char *, const void *, size_t, int) \
    REAL(ssize_t, fgetxattr, int, const char *, void *, size_t) \
    REAL(ssize_t, flistxattr, int, char *, size_t) \
    REAL(int, fremovexattr, int, const char *) \
    REAL(int, fdatasync, int) \
    REAL(int, dup, int) \
    REAL(int, fcntl, int, int, ...) \
    REAL(int, fcntl64, int, int, ...) \
    REAL(int, dup2, int, int) \
    REAL(int, dup3, int, int, int) \
    REAL(int, unlink, const char *) \
    REAL(int, unlinkat, int, const char *, int) \
    REAL(int, rmdir, const char *) \
    REAL(int, rename, const char *, const char *) \
    REAL(int, mkostemps, char *, int, int) \
    REAL(int, mkostemps64, char *, int, int) \
    REAL(FILE *, tmpfile, void) \
    REAL(FILE *, tmpfile64, void) \
    REAL(int, renameat, int, const char *, int, const char *) \
    REAL(int, renameat2, int, const char *, int, const char *, unsigned int) \
    REAL(int, statvfs, const char *, struct statvfs *) \
    REAL(int, statvfs64, const char *, struct statvfs64 *) \
    REAL(int, symlink, const char *, const char *) \
    REAL(int, symlinkat, const char *, int, const char *) \
    REAL(int, link, const char *, const char *) \
    REAL(int, linkat, int, const char *, int, const char *, int) \
    REAL(int, truncate, const char *, off_t) \
    REAL(int, truncate64, const char *, off64_t) \
    REAL(long, syscall, long, ...) \
    REAL(int, execve, const char *, char *const *, char *const *) \
    REAL(int, execv, const char *, char *const *) \
    REAL(int, execvp, const char *, char *const *) \
    REAL(int, execvpe, const char *, char *const *, char *const *) \
    REAL(int, posix_spawn, pid_t *, const char *, const posix_spawn_file_actions_t *, const posix_spawnattr_t *, \
         char *const *, char *const *) \
    REAL(int, posix_spawnp, pid_t *, const char *, const posix_spawn_file_actions_t *, const posix_spawnattr_t *, \
         char *const *, char *const *)

#define REAL_DECLARE(ret, name, ...)       \
    typedef ret (*name##_fn)(__VA_ARGS__); \
    name##_fn get_##name(void);
REAL_FUNCTIONS(REAL_DECLARE)

#define RESOLVE(name) get_##name()

/* ------------------------------------------------------------------ state (state.c) */

#define DIRTY_MAX 32

struct svol {
    const struct rt_volume *v;
    size_t len;                /* strlen(v->path) */
    struct fspf fs;
    unsigned char key[32];
    unsigned char tag[16];
    int ephemeral;             /* starts empty, hides what it does not record; no tag, no fsync */
    int shared;                /* ephemeral: fs is this start's fspf file (v->fspf_path, key), shared
                                * by the service's processes; else in this process's memory only */
    int container_copy;        /* the container's own copy: tags go to its state file (commit.c) */
    int has_links;             /* fs has (or had) an FSPF_SYMLINK record: paths are resolved */
    struct rt_key granted;     /* the grant's key and tags for it (path, name NULL): judge the fspf at start */
    char *record;              /* its record's name in the keys' state store (key_record_name) */
    struct stat64 seen;        /* the fspf file as last loaded or written (volume_refresh) */
    dev_t dev;                 /* its directory's device, once known (region_device) */
    int dev_known;
    struct rt_volume own;      /* ephemeral: what v points to (fspf_path NULL unless shared) */
    /* Durability (commit.c, volume_sync): what the next sync must flush. */
    char *dirty[DIRTY_MAX];    /* paths this process committed (or removed) since its last sync */
    size_t ndirty;
    int foreign;               /* fs was loaded from disk since the last sync (another process's
                                * commits, or the start's): the next sync flushes the file system */
};

struct content {               /* what a memfd held when it was last loaded or committed */
    int known;                 /* 0: unknown (could not be read): every close and fsync commits */
    unsigned char sha256[32];
    off_t size;
    mode_t mode;
    struct timespec mtime;     /* utime/futimens on the descriptor change only this */
};

struct tracked {               /* a memfd the service may write: protected again on close */
    struct svol *vol;
    char *path;
    int reader;                /* opened for reading only: never committed, its identity served */
    dev_t dev;                 /* the memfd's identity (reopen_tracked checks the fd is still it) */
    ino_t ino;
    struct content committed;  /* a close or fsync with the same content commits nothing */
};

struct injected {              /* policy mode: a file the grant carries, served from memory */
    char *path;                /* absolute, normalised */
    char *content;
    size_t len;
};

struct shield_state {
    int active;
    int has_emb;
    struct embedfs emb;
    struct timespec emb_time;  /* every embedded entry's atime, mtime and ctime: the measured
                                * executable's mtime (the embedfs records no times) */
    int has_code_key;          /* the keys' code_key, for the embedfs's encrypted members */
    unsigned char code_key[32];
    struct rt_config cfg;
    char *keys_path;
    int keys_persist;          /* 0: debug-mode keys from the environment (tags printed) */
    int has_store;             /* the keys' "state": mounted volumes' tags are kept in store, not in
                                * the keys file (commit.c, volume_refresh) */
    struct store store;
    int locked;                /* no keys granted: the volumes' files are refused (EACCES) */
    struct svol *vols;
    size_t nvols;
    char cache_socket[64];     /* the launcher's shared plaintext cache (cache.c): its socket's
                                * abstract name, "" without one (not PID 1: private copies) */
    unsigned char cache_token[32];
    pthread_mutex_t lock;      /* volumes, tracked fds, fake directories */
    struct tracked *fds;
    int nfds;
    struct injected *injected; /* policy mode: the injection files (granted processes only) */
    size_t ninjected;
};

extern struct shield_state S;

extern __thread int in_shield;  /* our own libc calls pass straight through */

#define ACTIVE() (S.active && !in_shield)

void shield_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));      /* SCONIFY_LOG */
void shield_refusal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));  /* stderr */

/* init.c: 1 (and one line the first time) if path is a file in a volume this process has no
 * keys for. */
int locked_volume_file(const char *path);
/* init.c: the fspf other processes of the service committed since this one loaded vol's: if
 * the fspf file changed (one stat), it is read again and, if its tag is fresh by the launcher's
 * rule against what the keys file (or the container copy's state) records now, it replaces
 * vol->fs. locked: the caller holds the volume's lock (commit.c), else it is taken shared.
 * 1 reloaded, 0 unchanged (also: ephemeral regions, debug-mode keys), -1 refused (one line). */
int volume_refresh(struct svol *vol, int locked);

/* ------------------------------------------------------------------ paths (paths.c) */

/* T_INJ: an injection file (inj), or a directory on the way to one (inj NULL, is_dir). */
/* T_SEALED: under a code root, neither embedded nor left on disk as not code nor on the way to
 * a region: not there for the measured process (ENOENT; EROFS for a write). */
enum { T_PASS, T_EMB, T_VOL, T_SEALED, T_INJ };

struct target {
    int kind;
    int in_code;                        /* under a code root (T_PASS: a left file or on the way
                                         * to one or to a region): listings of it are filtered */
    int is_dir;                         /* T_EMB: an embedded (implied) directory */
    const struct embedfs_member *m;     /* T_EMB: the member (file or unfollowed symlink) */
    struct svol *vol;                   /* T_VOL */
    const struct injected *inj;         /* T_INJ: the file (NULL: a directory on the way to one) */
    int changed;                        /* path differs from what the caller passed */
    int loop;                           /* T_VOL: too many region symlinks on the way (ELOOP) */
    int bare_root;                      /* a code root no other one holds, not embedded
                                         * (bare_code_root): T_PASS when a real directory */
    char path[PATH_MAX];                /* absolute, normalised, embedded symlinks resolved */
};

void normalise(char *path);
int run_time_mount(const char *path);
struct svol *volume_of(const char *path);
int fd_path(int fd, char *out, size_t len);
int target_of(int dirfd, const char *path, int follow, struct target *t);
int under_code_root(const char *path);
int shallow_code(const char *path);
int bare_code_root(const char *path);
int unsealed(const char *path);
int reserved_name(const struct svol *vol, const char *name);

/* ------------------------------------------------------------------ embedded code (embedded.c) */

int new_memfd(const char *path, int cloexec);
int open_embedded(const struct embedfs_member *m, const char *path, int cloexec);
void embedded_stat(const struct target *t, struct stat64 *st);
int beside_encrypted_code(const char *path);

/* ------------------------------------------------------------------ injection files (injected.c) */

int injected_target(struct target *t, int dirs);
int open_injected(const struct injected *f, int flags);
int injected_stat(const struct target *t, struct stat64 *st);

/* ------------------------------------------------------------------ volumes (volumes.c) */

const char *region_word(const struct svol *vol);
int region_device(struct svol *vol, dev_t *dev);
int ephemeral_hidden(struct svol *vol, const char *path);
int dir_syntax(const char *path);
int region_dir_syntax(struct target *t, int flags);
int follow_into_region(int dirfd, const char *path, struct target *t, struct stat64 *st);
int open_volume_file(struct target *t, int flags, mode_t mode);
int shield_truncate(const char *path, off64_t length, struct target *t);
int open_anonymous(const struct target *t, int flags);
int shield_unlink(int dirfd, const char *path, int flags, struct target *t);
int shield_rename(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
ssize_t region_link(struct svol *vol, const struct fspf_file *rec, const char *ondisk, char *buf, size_t size);
int resolve_region_links(struct target *t, int follow);
int shield_symlink(const char *target, int dirfd, const char *path);
int shield_link(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags);
int shield_mkostemps(char *tmpl, int suffixlen, int flags, int large);
FILE *shield_tmpfile(int large);

/* ------------------------------------------------------------------ tracked fds (tracked.c) */

void track(int fd, struct svol *vol, const char *path);
void track_reader(int fd, struct svol *vol, const char *path);
struct tracked *tracked_fd(int fd);
void untrack(int fd);
void retarget_tracked(struct svol *vol, const char *from, const char *to, int prefix);
int reopen_tracked(struct svol *vol, const char *path, int flags);
int flush_tracked(int fd, int durable);
/* 1 and the stored file's path in out (n bytes) if fd is a tracked memfd, else 0. */
int tracked_stored_path(int fd, char *out, size_t n);
int close_tracked(int fd);
int dup_tracked(int from, int to);

/* ------------------------------------------------------------------ the shared cache (cache.c) */

/* Whether vol's files are shared through the launcher's plaintext cache (plaincache.h). */
int cache_enabled(const struct svol *vol);
/* A new open file description of path's shared memfd (access mode and O_APPEND of flags,
 * close-on-exec with O_CLOEXEC), or -1 with *status: ENOENT not cached yet (send plain_fd, the
 * plaintext just decrypted, and the answer is the memfd the cache keeps: plain_fd, or another
 * process's if it came first), anything else: keep a private copy. Called with S.lock held. */
int cache_open(const char *path, int flags, int plain_fd, int *status);
/* path was removed or replaced (unlink, rename): its shared memfd is dropped, the next open
 * reads the stored file. Called with S.lock held. */
void cache_forget(const struct svol *vol, const char *path);
void cache_adopt_received(int fd);
void cache_adopt_inherited(void);

/* ------------------------------------------------------------------ the commit (commit.c) */

int commit(struct svol *vol, const char *path, int plain_fd, const char *remove, mode_t mode);
int commit_new(struct svol *vol, const char *path, int plain_fd, mode_t mode);
/* The volume's lock file (<volume>/.sconify.lock) taken with flock(op): its fd (close it to
 * release), or -1 (errno). A new open per call: a lock shared through a forked fd is no lock. */
int volume_lock(const struct svol *vol, int op);
int volume_sync(struct svol *vol);
int sync_untracked(int fd);

#pragma GCC visibility pop

/* In an entry point with a struct target t: the path to hand to the real function. */
#define PATH_OR_RESOLVED (ACTIVE() && t.changed ? t.path : path)

#endif
