/* probes: behaviour of SECCOMP_RET_TRAP / USER_NOTIF mediation in corner cases.
   Each probe runs in a fresh child; the parent prints what happened.
   usage: probes FILE */
#include "common.h"
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

static const char *g_path;
static volatile long traps;     /* SIGSYS handled by the shield */
static int emulate_masks;       /* strip SIGSYS from masks the app sets */
static void *app_sigsys;        /* the app's SIGSYS handler, kept virtual */

#define SIGBIT(s) (1ull << ((s) - 1))
static const int nrs_file[] = { SYS_openat, SYS_open, SYS_read, SYS_pread64, SYS_fstat, SYS_newfstatat };
static const int nrs_mask[] = { SYS_openat, SYS_open, SYS_read, SYS_pread64, SYS_fstat, SYS_newfstatat,
                                SYS_rt_sigprocmask, SYS_rt_sigaction };

struct ksigaction { void *handler; unsigned long flags; void *restorer; uint64_t mask; };

SHIELD_TEXT static void on_sigsys(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    ucontext_t *uc = ucv;
    greg_t *g = uc->uc_mcontext.gregs;
    traps++;
    if (si->si_syscall == SYS_rt_sigprocmask) {
        /* The mask to change is the one sigreturn will restore: uc_sigmask. */
        uint64_t *cur = (uint64_t *)&uc->uc_sigmask, *set = (uint64_t *)g[REG_RSI], *old = (uint64_t *)g[REG_RDX];
        uint64_t prev = *cur;
        if (set) {
            uint64_t s = *set;
            if (g[REG_RDI] == SIG_BLOCK) *cur |= s;
            else if (g[REG_RDI] == SIG_UNBLOCK) *cur &= ~s;
            else if (g[REG_RDI] == SIG_SETMASK) *cur = s;
            else { g[REG_RAX] = -EINVAL; return; }
            *cur &= ~(SIGBIT(SIGSYS) | SIGBIT(SIGKILL) | SIGBIT(SIGSTOP));
        }
        if (old) *old = prev;
        g[REG_RAX] = 0;
        return;
    }
    if (si->si_syscall == SYS_rt_sigaction) {
        int signo = (int)g[REG_RDI];
        struct ksigaction *act = (void *)g[REG_RSI], *oact = (void *)g[REG_RDX], copy;
        if (signo == SIGSYS) { /* keep ours installed; remember theirs */
            if (oact) { memset(oact, 0, sizeof *oact); oact->handler = app_sigsys; }
            if (act) app_sigsys = act->handler;
            g[REG_RAX] = 0;
            return;
        }
        if (act) { copy = *act; copy.mask &= ~SIGBIT(SIGSYS); act = &copy; }
        g[REG_RAX] = shield_syscall6(SYS_rt_sigaction, signo, (long)act, (long)oact, g[REG_R10], 0, 0);
        return;
    }
    g[REG_RAX] = shield_syscall6(si->si_syscall, g[REG_RDI], g[REG_RSI], g[REG_RDX],
                                 g[REG_R10], g[REG_R8], g[REG_R9]);
}

static void install_shield(void)
{
    struct sigaction sa = { 0 };
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSYS, &sa, NULL);
    if (emulate_masks)
        install_filter(F_TRAP, nrs_mask, 8, (uint64_t)__start_shield_text, (uint64_t)__stop_shield_text, 0);
    else
        install_filter(F_TRAP, nrs_file, 6, (uint64_t)__start_shield_text, (uint64_t)__stop_shield_text, 0);
}

static int fopen_reads(void)
{
    char b[16];
    FILE *f = fopen(g_path, "r");
    if (!f) return -1;
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    return n == sizeof b ? 0 : -1;
}

/* --- the probes (run in a child; return 0 = ok) --- */
static int p_fopen(void) { install_shield(); long t = traps; return fopen_reads() || traps == t ? 1 : 0; }
static int p_rawsyscall(void)
{
    install_shield();
    long t = traps;
    long fd = syscall(SYS_openat, AT_FDCWD, g_path, O_RDONLY);
    return fd >= 0 && traps > t ? 0 : 1;
}
static int p_blocked(void)
{
    install_shield();
    sigset_t s; sigemptyset(&s); sigaddset(&s, SIGSYS);
    sigprocmask(SIG_BLOCK, &s, NULL);
    return fopen_reads();
}
static void usr1(int s) { (void)s; if (fopen_reads()) _exit(3); }
static int p_handler_mask(void)
{
    install_shield();
    struct sigaction sa = { 0 };
    sa.sa_handler = usr1;
    sigfillset(&sa.sa_mask);            /* common: block everything in handlers */
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    return 0;
}
static void app_handler(int s) { (void)s; }
static int p_app_sigsys(void)
{
    install_shield();
    signal(SIGSYS, app_handler);        /* e.g. a runtime that installs its own */
    return fopen_reads();
}
static int p_fork(void)
{
    install_shield();
    pid_t c = fork();
    if (c == 0) { long t = traps; _exit(fopen_reads() || traps == t ? 1 : 0); }
    int st; waitpid(c, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
static int p_exec(void)
{
    install_shield();
    execl("/bin/cat", "cat", g_path, (char *)NULL);
    return 99;
}
static int p_spawn(void)
{
    install_shield();
    pid_t c; char *av[] = { "cat", (char *)g_path, NULL };
    if (posix_spawn(&c, "/bin/cat", NULL, NULL, av, NULL)) return 98;
    int st; waitpid(c, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Deny-list variant: trap file syscalls whose IP lies in libc's text (where
   glibc-internal and syscall() calls come from); everything else passes.
   After exec, libc sits elsewhere (ASLR): the inherited filter is inert. */
static uint64_t libc_lo, libc_hi;
static int find_libc(struct dl_phdr_info *i, size_t sz, void *d)
{
    (void)sz; (void)d;
    if (!strstr(i->dlpi_name, "libc.so")) return 0;
    for (int k = 0; k < i->dlpi_phnum; k++)
        if (i->dlpi_phdr[k].p_type == PT_LOAD && (i->dlpi_phdr[k].p_flags & PF_X)) {
            libc_lo = i->dlpi_addr + i->dlpi_phdr[k].p_vaddr;
            libc_hi = libc_lo + i->dlpi_phdr[k].p_memsz;
        }
    return 1;
}
static int p_denylist_exec(void)
{
    dl_iterate_phdr(find_libc, NULL);
    if (!libc_lo) return 97; /* static build */
    struct sigaction sa = { 0 };
    sa.sa_sigaction = on_sigsys; sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSYS, &sa, NULL);
    struct sock_filter p[64];
    int k = 0;
    /* inverse of build_filter: trap when the IP is inside [lo,hi) */
    p[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < 6; i++) p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs_file[i], (uint8_t)(6 - i), 0);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer) + 4);
    p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(libc_lo >> 32), 0, 4);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer));
    p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, (uint32_t)libc_lo, 0, 2);
    p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, (uint32_t)libc_hi, 1, 0);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog fp = { (unsigned short)k, p };
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fp)) return 96;
    long t = traps;
    if (fopen_reads() || traps == t) return 95;   /* still sees glibc-internal opens */
    execl("/bin/cat", "cat", g_path, (char *)NULL);
    return 99;
}

/* memfd shared by a supervisor: reopen through /proc gives each open its own
   offset and flags on one inode; POSIX locks and O_APPEND then behave. */
static int p_memfd_share(void)
{
    int m = memfd_create("vol-file", 0);
    if (write(m, "0123456789", 10) != 10) return 90;
    char proc[64]; snprintf(proc, sizeof proc, "/proc/self/fd/%d", m);
    int a = open(proc, O_RDWR), b = open(proc, O_RDWR | O_APPEND);
    char c; if (read(a, &c, 1) != 1 || lseek(b, 0, SEEK_CUR) != 0) return 91; /* independent offsets */
    if (write(b, "X", 1) != 1) return 92;
    struct stat st; fstat(m, &st); if (st.st_size != 11) return 93;      /* append went to the end */
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1 };
    if (fcntl(a, F_SETLK, &fl)) return 94;
    pid_t k = fork();
    if (k == 0) { struct flock f2 = fl; _exit(fcntl(b, F_SETLK, &f2) == -1 && (errno == EAGAIN || errno == EACCES) ? 0 : 1); }
    int s; waitpid(k, &s, 0);
    return WIFEXITED(s) && WEXITSTATUS(s) == 0 ? 0 : 89;                 /* lock seen across processes */
}

/* USER_NOTIF: the same exec under a supervisor that answers CONTINUE. */
static int p_notif_exec(void)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    pid_t c = fork();
    if (c == 0) {
        long lfd = install_filter(F_NOTIF, nrs_file, 6, (uint64_t)__start_shield_text,
                                  (uint64_t)__stop_shield_text, SECCOMP_FILTER_FLAG_NEW_LISTENER);
        send_fd(sv[1], (int)lfd);
        close((int)lfd); close(sv[0]); close(sv[1]);
        execl("/bin/cat", "cat", g_path, (char *)NULL);
        _exit(99);
    }
    close(sv[1]);
    int lfd = recv_fd(sv[0]);
    long seen = 0;
    for (;;) {
        struct pollfd p = { lfd, POLLIN, 0 };
        if (poll(&p, 1, -1) < 0 || (p.revents & POLLHUP)) break;
        struct seccomp_notif req; struct seccomp_notif_resp resp;
        memset(&req, 0, sizeof req);
        if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_RECV, &req)) continue;
        seen++;
        memset(&resp, 0, sizeof resp);
        resp.id = req.id; resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(lfd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
    int st; waitpid(c, &st, 0);
    fprintf(stderr, "  (supervisor answered %ld file syscalls of the exec'd /bin/cat)\n", seen);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 && seen > 0 ? 0 : 1;
}

static void run(const char *name, int (*fn)(void), int masks, const char *expect)
{
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        emulate_masks = masks;
        int devnull = open("/dev/null", O_WRONLY); dup2(devnull, 1);
        _exit(fn());
    }
    int st; waitpid(c, &st, 0);
    char res[64];
    if (WIFSIGNALED(st)) snprintf(res, sizeof res, "killed by %s", strsignal(WTERMSIG(st)));
    else snprintf(res, sizeof res, WEXITSTATUS(st) ? "FAILED (exit %d)" : "works", WEXITSTATUS(st));
    printf("%-44s %-26s (expected: %s)\n", name, res, expect);
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: probes FILE\n"); return 2; }
    g_path = argv[1];
    run("trap: glibc-internal fopen+fread", p_fopen, 0, "works");
    run("trap: syscall(SYS_openat)", p_rawsyscall, 0, "works");
    run("trap: SIGSYS blocked (sigprocmask)", p_blocked, 0, "killed");
    run("trap: ... + rt_sigprocmask emulated", p_blocked, 1, "works");
    run("trap: open in handler with full sa_mask", p_handler_mask, 0, "killed");
    run("trap: ... + rt_sigaction emulated", p_handler_mask, 1, "works");
    run("trap: app installs its own SIGSYS handler", p_app_sigsys, 0, "FAILED");
    run("trap: ... + rt_sigaction emulated", p_app_sigsys, 1, "works");
    run("trap: fork, child fopen", p_fork, 0, "works");
    run("trap: posix_spawn /bin/cat (child status)", p_spawn, 0, "FAILED, 159 = SIGSYS");
    run("trap: exec /bin/cat (allow-list filter)", p_exec, 0, "killed");
    run("trap: exec /bin/cat (deny-list: libc IPs)", p_denylist_exec, 0, "works; 97 = static: n/a");
    run("notif: exec /bin/cat, supervisor CONTINUE", p_notif_exec, 0, "works");
    run("memfd reopened via /proc: offsets,append,lock", p_memfd_share, 0, "works");
    return 0;
}
