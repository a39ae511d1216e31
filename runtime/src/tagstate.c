#include "tagstate.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static void tag_state_paths(const char *dir, const char *policy, const char *volume, char *policy_dir,
                            char *file, char *identity)
{
    snprintf(policy_dir, PATH_MAX, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, policy);
    snprintf(file, PATH_MAX, "%s/%s.json", policy_dir, volume);
    snprintf(identity, PATH_MAX, "%s/%s", policy, volume);
}

int tag_state_read(const char *dir, const char *policy, const char *volume, const unsigned char key[32],
                   struct rt_state *st, struct rt_error *err)
{
    char policy_dir[PATH_MAX], file[PATH_MAX], identity[PATH_MAX];
    tag_state_paths(dir, policy, volume, policy_dir, file, identity);
    memset(st, 0, sizeof *st);
    if (access(file, F_OK) != 0 && errno == ENOENT) return 0;
    if (state_file_load(file, identity, key, st)) return 1;
    return rt_fail(err, "volume %s: the state file %s is not this deployment's for it (changed, or written with "
                        "another key); refusing to start", volume, file);
}

int tag_state_record(const char *dir, const char *policy, const char *volume, const unsigned char key[32],
                     const unsigned char tag[16], const unsigned char *next, struct rt_error *err)
{
    char policy_dir[PATH_MAX], file[PATH_MAX], identity[PATH_MAX], tmp[PATH_MAX + 32];
    tag_state_paths(dir, policy, volume, policy_dir, file, identity);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return rt_fail(err, "cannot create the state directory %s (%s); mount a small volume there (-v STATE:%s) "
                            "or set sconify.state.dir in the policy", dir, strerror(errno), dir);
    if (mkdir(policy_dir, 0700) != 0 && errno != EEXIST)
        return rt_fail(err, "cannot create the state directory %s (%s)", policy_dir, strerror(errno));
    int lock = open(policy_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (lock >= 0 && flock(lock, LOCK_EX) != 0 && errno == EINTR) {}
    snprintf(tmp, sizeof tmp, "%s/.%s.json.tmp-%ld", policy_dir, volume, (long)getpid());
    int rc = state_file_record(file, tmp, identity, key, tag, next, err);
    if (lock >= 0) close(lock);
    return rc;
}
