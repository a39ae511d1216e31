/* bench: ns per call of openat+close, pread 4 KiB, fstat under each mediation.
   usage: bench MODE FILE   MODE = none | allow-const | allow-ip | trap |
                                   notif-cont | notif-emul | notif-emul-sync
   (the LD_PRELOAD baseline is `LD_PRELOAD=./preload.so bench none FILE`). */
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

static const int file_nrs[] = { SYS_openat, SYS_pread64, SYS_read, SYS_fstat, SYS_newfstatat };
#define NNRS (int)(sizeof file_nrs / sizeof file_nrs[0])

static int rounds = 7;
static long iters = 10000;

/* ---- (ii) in-process trap: emulate from the shield's text ---- */
SHIELD_TEXT static void on_sigsys(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    greg_t *g = ((ucontext_t *)ucv)->uc_mcontext.gregs;
    /* A real shield would look the path / fd up in its tables here. */
    g[REG_RAX] = shield_syscall6(si->si_syscall, g[REG_RDI], g[REG_RSI], g[REG_RDX],
                                 g[REG_R10], g[REG_R8], g[REG_R9]);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void run_ops(const char *label, const char *path)
{
    char buf[4096];
    struct stat st;
    uint64_t r_open[16], r_read[16], r_stat[16];
    int fd = open(path, O_RDONLY);
    if (fd < 0) { perror("open"); exit(1); }
    for (int r = 0; r < rounds; r++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < iters; i++) { int f = open(path, O_RDONLY); close(f); }
        uint64_t t1 = now_ns();
        for (long i = 0; i < iters; i++)
            if (pread(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf) { perror("pread"); exit(1); }
        uint64_t t2 = now_ns();
        for (long i = 0; i < iters; i++)
            if (fstat(fd, &st)) { perror("fstat"); exit(1); }
        uint64_t t3 = now_ns();
        r_open[r] = (t1 - t0) / iters; r_read[r] = (t2 - t1) / iters; r_stat[r] = (t3 - t2) / iters;
    }
    qsort(r_open, rounds, 8, cmp_u64); qsort(r_read, rounds, 8, cmp_u64); qsort(r_stat, rounds, 8, cmp_u64);
    /* the minimum over rounds: the machine is shared, interference only adds */
    printf("%-16s %10lu %10lu %10lu\n", label, (unsigned long)r_open[0],
           (unsigned long)r_read[0], (unsigned long)r_stat[0]);
    fflush(stdout);
    close(fd);
}

/* ---- (iii) USER_NOTIF supervisor (a separate process, like the launcher) ---- */
static int own_fd[4096]; /* target fd -> the supervisor's fd on the same file */

/* process_vm_readv/writev; where a seccomp profile refuses them (Docker's
   default profile allows them only with CAP_SYS_PTRACE), /proc/PID/mem. */
static int use_procmem, memfd_pid = -1, memfd = -1;
static int procmem(pid_t pid)
{
    if (memfd_pid != pid) {
        char p[64];
        if (memfd >= 0) close(memfd);
        snprintf(p, sizeof p, "/proc/%d/mem", (int)pid);
        memfd = open(p, O_RDWR | O_CLOEXEC);
        memfd_pid = pid;
    }
    return memfd;
}
static int rd_remote(pid_t pid, uint64_t addr, void *dst, size_t n)
{
    if (!use_procmem) {
        struct iovec l = { dst, n }, r = { (void *)addr, n };
        ssize_t got = process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (got == (ssize_t)n) return 0;
        if (got >= 0 || errno != EPERM) return -1;
        use_procmem = 1;
        fprintf(stderr, "process_vm_readv: EPERM, using /proc/PID/mem\n");
    }
    return pread(procmem(pid), dst, n, (off_t)addr) == (ssize_t)n ? 0 : -1;
}
static int wr_remote(pid_t pid, uint64_t addr, const void *src, size_t n)
{
    if (!use_procmem) {
        struct iovec l = { (void *)src, n }, r = { (void *)addr, n };
        ssize_t put = process_vm_writev(pid, &l, 1, &r, 1, 0);
        if (put == (ssize_t)n) return 0;
        if (put >= 0 || errno != EPERM) return -1;
        use_procmem = 1;
    }
    return pwrite(procmem(pid), src, n, (off_t)addr) == (ssize_t)n ? 0 : -1;
}

/* A C string from the caller: read page by page (never past a mapping's end). */
static int rd_remote_str(pid_t pid, uint64_t addr, char *dst, size_t cap)
{
    size_t got = 0;
    while (got < cap) {
        size_t n = 4096 - ((addr + got) & 4095);
        if (n > cap - got) n = cap - got;
        if (rd_remote(pid, addr + got, dst + got, n)) return -1;
        if (memchr(dst + got, 0, n)) return 0;
        got += n;
    }
    return -1; /* longer than cap: a real supervisor would use PATH_MAX */
}

static void emulate(int lfd, struct seccomp_notif *req, struct seccomp_notif_resp *resp)
{
    const struct seccomp_data *d = &req->data;
    pid_t pid = req->pid;
    char path[256], buf[4096];
    struct stat st;
    resp->error = 0; resp->val = 0; resp->flags = 0;
    switch (d->nr) {
    case SYS_openat: {
        if (rd_remote_str(pid, d->args[1], path, sizeof path)) {
            resp->error = -EFAULT; return;
        }
        /* TOCTOU: the path was read from the caller's memory; check that the
           request is still alive before acting on it. */
        if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id)) { resp->error = -ENOENT; return; }
        int f = openat((int)d->args[0], path, (int)d->args[2] | O_CLOEXEC, (mode_t)d->args[3]);
        if (f < 0) { resp->error = -errno; return; }
        struct seccomp_notif_addfd a = { .id = req->id, .flags = SECCOMP_ADDFD_FLAG_SEND,
                                         .srcfd = (uint32_t)f, .newfd = 0,
                                         .newfd_flags = (uint32_t)(d->args[2] & O_CLOEXEC) };
        int tfd = ioctl(lfd, SECCOMP_IOCTL_NOTIF_ADDFD, &a); /* answers the call too */
        if (tfd >= 0 && tfd < 4096) {
            if (own_fd[tfd] > 0) close(own_fd[tfd]);
            own_fd[tfd] = f;
        } else close(f);
        resp->id = 0; /* already answered */
        return;
    }
    case SYS_pread64: case SYS_read: {
        int fd = (int)d->args[0];
        size_t n = d->args[2] < sizeof buf ? d->args[2] : sizeof buf;
        if (fd < 0 || fd >= 4096 || own_fd[fd] <= 0) { resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE; return; }
        ssize_t got = pread(own_fd[fd], buf, n, d->nr == SYS_pread64 ? (off_t)d->args[3] : 0);
        if (got < 0) { resp->error = -errno; return; }
        if (wr_remote(pid, d->args[1], buf, got)) { resp->error = -EFAULT; return; }
        resp->val = got; return;
    }
    case SYS_fstat: case SYS_newfstatat: {
        int fd = (int)d->args[0];
        uint64_t out = d->nr == SYS_fstat ? d->args[1] : d->args[2];
        if (fd < 0 || fd >= 4096 || own_fd[fd] <= 0) { resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE; return; }
        if (fstat(own_fd[fd], &st)) { resp->error = -errno; return; }
        if (wr_remote(pid, out, &st, sizeof st)) { resp->error = -EFAULT; return; }
        return;
    }
    default:
        resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    }
}

static void supervise(int lfd, int emul)
{
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    for (;;) {
        struct pollfd p = { lfd, POLLIN, 0 };
        if (poll(&p, 1, -1) < 0) { if (errno == EINTR) continue; break; }
        if (p.revents & POLLHUP) break;
        memset(&req, 0, sizeof req);
        if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_RECV, &req)) {
            if (errno == EINTR || errno == ENOENT) continue; /* ENOENT: caller gone */
            break;
        }
        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        if (emul) emulate(lfd, &req, &resp);
        else resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE; /* let the kernel run it */
        if (resp.id && ioctl(lfd, SECCOMP_IOCTL_NOTIF_SEND, &resp) && errno != ENOENT) perror("NOTIF_SEND");
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: bench MODE FILE\n"); return 2; }
    const char *mode = argv[1], *path = argv[2];
    if (getenv("BENCH_ITERS")) iters = atol(getenv("BENCH_ITERS"));
    uint64_t lo = (uint64_t)__start_shield_text, hi = (uint64_t)__stop_shield_text;
    if (lo >> 32 != hi >> 32) { fprintf(stderr, "shield text crosses a 4 GiB boundary\n"); return 1; }
    const char *label = getenv("BENCH_LABEL") ? getenv("BENCH_LABEL") : mode;

    if (!strcmp(mode, "none")) {
        run_ops(label, path);
    } else if (!strcmp(mode, "allow-const")) {
        install_filter(F_ALLOW_CONST, file_nrs, NNRS, lo, hi, 0);
        run_ops(label, path);
    } else if (!strcmp(mode, "allow-ip")) {
        install_filter(F_ALLOW_IP, file_nrs, NNRS, lo, hi, 0);
        run_ops(label, path);
    } else if (!strcmp(mode, "trap")) {
        struct sigaction sa = { 0 };
        sa.sa_sigaction = on_sigsys;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigaction(SIGSYS, &sa, NULL);
        install_filter(F_TRAP, file_nrs, NNRS, lo, hi, 0);
        run_ops(label, path);
    } else if (!strncmp(mode, "notif-", 6)) {
        int emul = strncmp(mode, "notif-emul", 10) == 0, sync = strstr(mode, "-sync") != NULL;
        iters = iters / 4 ? iters / 4 : 1; /* each call is a round trip: keep the run short */
        int sv[2];
        socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
        pid_t child = fork();
        if (child == 0) {
            close(sv[0]);
            long lfd = install_filter(F_NOTIF, file_nrs, NNRS, lo, hi, SECCOMP_FILTER_FLAG_NEW_LISTENER);
            send_fd(sv[1], (int)lfd);
            close((int)lfd);
            run_ops(label, path);
            _exit(0);
        }
        close(sv[1]);
        int lfd = recv_fd(sv[0]);
        if (sync) {
            uint64_t fl = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
            if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, fl)) perror("NOTIF_SET_FLAGS");
        }
        supervise(lfd, emul);
        int st;
        waitpid(child, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) fprintf(stderr, "%s: child status %#x\n", mode, st);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}
