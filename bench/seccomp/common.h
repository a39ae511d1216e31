/* Shared helpers for the seccomp mediation prototypes (x86_64 Linux only). */
#ifndef MED_COMMON_H
#define MED_COMMON_H
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

/* Code placed in this section is "the shield's text": its syscall
   instructions are the only ones the trap filter lets through. */
#define SHIELD_TEXT __attribute__((section("shield_text"), noinline, used))
extern char __start_shield_text[], __stop_shield_text[];

SHIELD_TEXT long shield_syscall6(long nr, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

enum { F_ALLOW_CONST, F_ALLOW_IP, F_TRAP, F_NOTIF };

/* Filter: for the listed syscalls, ALLOW when the instruction pointer lies in
   [lo, hi) (the shield's text), else `miss` (TRAP, USER_NOTIF or ALLOW).
   Other syscalls: ALLOW. F_ALLOW_CONST allows everything without looking at
   the IP (the kernel's per-syscall action cache then skips the BPF run). */
static int build_filter(struct sock_filter *p, int kind, const int *nrs, int n,
                        uint64_t lo, uint64_t hi)
{
    int k = 0;
    uint32_t miss = kind == F_TRAP ? SECCOMP_RET_TRAP
                  : kind == F_NOTIF ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_ALLOW;
    p[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    if (kind == F_ALLOW_CONST) {
        p[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
        for (int i = 0; i < n; i++)
            p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[i], 0, 0);
        p[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        return k;
    }
    p[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    /* n compare-jumps: match -> jump to the IP check after the "allow" below */
    for (int i = 0; i < n; i++)
        p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[i], (uint8_t)(n - i), 0);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    /* IP check; lo and hi must share the upper 32 bits */
    p[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer) + 4);
    p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(lo >> 32), 0, 3);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, instruction_pointer));
    p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, (uint32_t)lo, 0, 1);
    p[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, (uint32_t)hi, 0, 1);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, miss);
    p[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    return k;
}

static long install_filter(int kind, const int *nrs, int n, uint64_t lo, uint64_t hi, unsigned flags)
{
    struct sock_filter prog[64];
    int len = build_filter(prog, kind, nrs, n, lo, hi);
    struct sock_fprog fp = { .len = (unsigned short)len, .filter = prog };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) { perror("no_new_privs"); exit(1); }
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fp);
    if (r < 0) { perror("seccomp"); exit(1); }
    return r;
}
/* Pass the listener fd from the filtered child to the supervisor. */
static void send_fd(int sock, int fd)
{
    char c = 0, ctl[CMSG_SPACE(sizeof(int))];
    struct iovec io = { &c, 1 };
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS; cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    if (sendmsg(sock, &m, 0) != 1) { perror("sendmsg"); exit(1); }
}
static int recv_fd(int sock)
{
    char c, ctl[CMSG_SPACE(sizeof(int))];
    struct iovec io = { &c, 1 };
    struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    if (recvmsg(sock, &m, 0) != 1) { perror("recvmsg"); exit(1); }
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
    return fd;
}

#endif
