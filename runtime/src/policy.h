/* The policy a converted image records (runtime config "policy", docs/runtime.md "The policy"):
 * which command the keys are granted to, and which environment variables the host may not
 * change because they choose the code an interpreter or the loader runs. The launcher checks
 * both before it grants the keys. */
#ifndef SCONIFY_POLICY_H
#define SCONIFY_POLICY_H

#include <stddef.h>

#include "config.h"

/* 1 if the variable NAME chooses code (PYTHONPATH, NODE_OPTIONS, LD_PRELOAD, PATH...). */
int policy_code_choosing(const char *name);

/* argv (after `--`) against the recorded command: 0 if it is the command (followed by more
 * arguments only when the policy allows them), else -1 and one line in msg naming the first
 * argument that differs. */
int policy_check_command(const struct rt_config *cfg, int argc, char **argv, char *msg, size_t len);

/* The environment against the recorded one: every code-choosing variable must have its
 * recorded value (or be unset when none is recorded) unless the policy allows it. The
 * shield's own entry in LD_PRELOAD (shield, the library's path) is not the host's choice and
 * is left out of the comparison. 0, or -1 and one line in msg naming the variable. */
int policy_check_environment(const struct rt_config *cfg, char **envp, const char *shield, char *msg, size_t len);

/* The program execvp would run for name, into out: name itself when it holds a '/', else the
 * first entry of path (':' separated; NULL: POLICY_DEFAULT_PATH) where usable(candidate) says
 * an executable file is. 1 if found, else 0 and out "". usable does the file system checks, so
 * that the shield can pass one that calls past its own interposers (it runs between fork and
 * exec). */
#define POLICY_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
int policy_lookup(const char *name, const char *path, int (*usable)(const char *candidate), char *out, size_t len);

/* LD_PRELOAD's value without the entries naming shield (':' or ' ' separated) into out. */
void policy_preload_without(const char *value, const char *shield, char *out, size_t len);

#endif
