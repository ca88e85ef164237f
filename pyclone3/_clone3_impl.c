/*
 * C half of pyclone3's private compiled module, pyclone3._clone3.
 *
 * Declared for Python in _clone3.cdef; build_ffi.py reads both files.
 * Every syscall wrapper here is thin: it returns -1 and leaves errno set on
 * failure and checks nothing. Argument checking, errno-to-exception mapping
 * and EINTR retries live in pyclone3/syscalls.py.
 *
 * Only glibc's headers are included, never <linux/sched.h> or
 * <linux/pidfd.h>: they clash with <sched.h> on some systems and are often
 * older than the running kernel. Whatever the build machine's headers lack
 * is defined below from the kernel's stable user-space ABI; what the running
 * kernel actually supports is probed at run time (pyclone3/features.py).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

/* In the stable ABI since 3.7, but cffi builds against the 3.2 limited API,
 * which hides their prototypes. */
extern void PyOS_BeforeFork(void);
extern void PyOS_AfterFork_Parent(void);
extern void PyOS_AfterFork_Child(void);

/* ---- syscall numbers ---------------------------------------------------
 * Syscalls added after 5.0 share one number on every architecture that uses
 * the generic table (x86_64, i386, arm, arm64, riscv, powerpc, s390, ...).
 * Architectures with their own offsets (alpha, mips, ia64) must have headers
 * new enough to define them. */
#ifdef SYS_clone3
static const int HAS_HEADER_SYS_CLONE3 = 1;
#else
static const int HAS_HEADER_SYS_CLONE3 = 0;
# if defined(__alpha__) || defined(__mips__) || defined(__ia64__)
#  error "pyclone3: these kernel headers lack SYS_clone3 for this architecture"
# endif
# define SYS_clone3 435
#endif

#ifdef SYS_pidfd_open
static const int HAS_HEADER_SYS_PIDFD_OPEN = 1;
#else
static const int HAS_HEADER_SYS_PIDFD_OPEN = 0;
# define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
# define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_getfd
# define SYS_pidfd_getfd 438
#endif

/* ---- struct clone_args (Linux 5.3; set_tid 5.5; cgroup 5.7) ------------ */
struct clone_args {
    uint64_t flags __attribute__((aligned(8)));
    uint64_t pidfd __attribute__((aligned(8)));
    uint64_t child_tid __attribute__((aligned(8)));
    uint64_t parent_tid __attribute__((aligned(8)));
    uint64_t exit_signal __attribute__((aligned(8)));
    uint64_t stack __attribute__((aligned(8)));
    uint64_t stack_size __attribute__((aligned(8)));
    uint64_t tls __attribute__((aligned(8)));
    uint64_t set_tid __attribute__((aligned(8)));
    uint64_t set_tid_size __attribute__((aligned(8)));
    uint64_t cgroup __attribute__((aligned(8)));
};
#define CLONE_ARGS_SIZE_VER0 64
#define CLONE_ARGS_SIZE_VER1 80
#define CLONE_ARGS_SIZE_VER2 88

/* ---- clone flags: the classic ones come from <sched.h> ----------------- */
#ifndef CSIGNAL
# define CSIGNAL 0x000000ff
#endif
#ifndef CLONE_NEWTIME
# define CLONE_NEWTIME 0x00000080
#endif
#ifdef CLONE_PIDFD
static const int HAS_HEADER_CLONE_PIDFD = 1;
#else
static const int HAS_HEADER_CLONE_PIDFD = 0;
# define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_DETACHED
# define CLONE_DETACHED 0x00400000
#endif
#ifndef CLONE_NEWCGROUP
# define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef CLONE_CLEAR_SIGHAND
# define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif
#ifndef CLONE_INTO_CGROUP
# define CLONE_INTO_CGROUP 0x200000000ULL
#endif

/* ---- pidfd flags ------------------------------------------------------- */
#ifndef PIDFD_NONBLOCK
# define PIDFD_NONBLOCK O_NONBLOCK            /* Linux 5.10 */
#endif
#ifndef PIDFD_THREAD
# define PIDFD_THREAD O_EXCL                  /* Linux 6.9 */
#endif
#ifndef PIDFD_SIGNAL_THREAD
# define PIDFD_SIGNAL_THREAD (1UL << 0)       /* Linux 6.9 */
#endif
#ifndef PIDFD_SIGNAL_THREAD_GROUP
# define PIDFD_SIGNAL_THREAD_GROUP (1UL << 1)
#endif
#ifndef PIDFD_SIGNAL_PROCESS_GROUP
# define PIDFD_SIGNAL_PROCESS_GROUP (1UL << 2)
#endif

/* ---- waitid ------------------------------------------------------------
 * P_PIDFD is an enum member in glibc >= 2.36 and absent before; a macro of
 * the same value is harmless in both cases. */
#ifdef P_PIDFD
static const int HAS_HEADER_P_PIDFD = 1;
#else
static const int HAS_HEADER_P_PIDFD = 0;
# define P_PIDFD 3                            /* Linux 5.4 */
#endif
#ifndef __WNOTHREAD
# define __WNOTHREAD 0x20000000
#endif
#ifndef __WALL
# define __WALL 0x40000000
#endif
#ifndef __WCLONE
# define __WCLONE 0x80000000
#endif

/* ---- PIDFD_GET_INFO (Linux 6.13; exit_code 6.15; coredump_mask 6.16) ----
 * An extensible ioctl: the kernel reads the struct size from the request
 * number and zero-fills or ignores the difference. */
struct pidfd_info {
    uint64_t mask;
    uint64_t cgroupid;
    uint32_t pid;
    uint32_t tgid;
    uint32_t ppid;
    uint32_t ruid;
    uint32_t rgid;
    uint32_t euid;
    uint32_t egid;
    uint32_t suid;
    uint32_t sgid;
    uint32_t fsuid;
    uint32_t fsgid;
    int32_t exit_code;
    uint32_t coredump_mask;
    uint32_t spare1;
};
#define PIDFD_INFO_PID (1ULL << 0)
#define PIDFD_INFO_CREDS (1ULL << 1)
#define PIDFD_INFO_CGROUPID (1ULL << 2)
#define PIDFD_INFO_EXIT (1ULL << 3)
#define PIDFD_INFO_COREDUMP (1ULL << 4)
#define PIDFD_INFO_SIZE_VER0 64
#ifdef PIDFD_GET_INFO
# undef PIDFD_GET_INFO
#endif
#define PIDFD_GET_INFO _IOWR(0xFF, 11, struct pidfd_info)

/* ---- flattened waitid results ---------------------------------------- */
struct pyclone3_timeval {
    long tv_sec;
    long tv_usec;
};
struct pyclone3_rusage {                       /* the kernel's struct rusage */
    struct pyclone3_timeval ru_utime;
    struct pyclone3_timeval ru_stime;
    long ru_maxrss;
    long ru_ixrss;
    long ru_idrss;
    long ru_isrss;
    long ru_minflt;
    long ru_majflt;
    long ru_nswap;
    long ru_inblock;
    long ru_oublock;
    long ru_msgsnd;
    long ru_msgrcv;
    long ru_nsignals;
    long ru_nvcsw;
    long ru_nivcsw;
};
struct pyclone3_waitinfo {
    int pid;
    unsigned int uid;
    int signo;
    int status;
    int code;
};

/* ---- raw syscalls ------------------------------------------------------ */

long sys_clone3(struct clone_args *args, size_t size)
{
    return syscall(SYS_clone3, args, size);
}

int pyclone3_set_child_subreaper(int on)
{
    return (int)syscall(SYS_prctl, PR_SET_CHILD_SUBREAPER, (unsigned long)on, 0UL, 0UL, 0UL);
}

int pyclone3_get_child_subreaper(void)
{
    int value = 0;
    if (syscall(SYS_prctl, PR_GET_CHILD_SUBREAPER, &value, 0UL, 0UL, 0UL) < 0)
        return -1;
    return value;
}

/* 1 if fd is on a cgroup v2 filesystem, 0 if not, -1 with errno. */
int pyclone3_is_cgroup2(int fd)
{
    struct statfs st;
    if (fstatfs(fd, &st) < 0)
        return -1;
    return st.f_type == 0x63677270;    /* CGROUP2_SUPER_MAGIC */
}

int sys_pidfd_open(int pid, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

int sys_pidfd_send_signal(int pidfd, int sig, void *info, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, info, flags);
}

int sys_pidfd_getfd(int pidfd, int targetfd, unsigned int flags)
{
    return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
}

int sys_waitid(int idtype, int id, struct pyclone3_waitinfo *info,
               int options, struct pyclone3_rusage *ru)
{
    siginfo_t si;
    long ret;

    /* With WNOHANG and no child ready the kernel leaves si untouched;
     * zeroing it first is what makes si_pid == 0 mean "nothing yet". */
    memset(&si, 0, sizeof(si));
    ret = syscall(SYS_waitid, idtype, id, &si, options, ru);
    if (ret < 0)
        return -1;
    info->pid = si.si_pid;
    info->uid = si.si_uid;
    info->signo = si.si_signo;
    info->status = si.si_status;
    info->code = si.si_code;
    return 0;
}

int sys_setns(int fd, int nstype)
{
    return (int)syscall(SYS_setns, fd, nstype);
}

int sys_pidfd_get_info(int pidfd, struct pidfd_info *info)
{
    return ioctl(pidfd, PIDFD_GET_INFO, info);
}

/* ---- helpers ----------------------------------------------------------- */

/* wait_all's sweep (pyclone3/multi.py): poll(2), without blocking, every
 * pidfd in fds[0..n) that is not negative, then one
 * waitid(P_PIDFD, WEXITED|WNOHANG|__WALL) for each that is readable, its
 * status into info[i] and its rusage into ru[i]. A reaped child's fds[i]
 * becomes -1, so later sweeps skip it, and i is appended to reaped. A
 * readable pidfd that cannot be reaped (a zombie held by a tracer, a process
 * that is not our child or that another thread reaped) is left as it was,
 * for the caller's general path. pfds and where are scratch space (n
 * entries each). Returns how many were reaped, or -1 with errno if poll
 * failed. The caller keeps the fds open meanwhile. */
int pyclone3_reap_exited(int *fds, int n, struct pollfd *pfds, int *where,
                         int *reaped, struct pyclone3_waitinfo *info,
                         struct pyclone3_rusage *ru)
{
    struct rlimit lim;
    int i, k, live = 0, count = 0;
    int start, slice = n;

    for (i = 0; i < n; i++) {
        if (fds[i] < 0)
            continue;
        pfds[live].fd = fds[i];
        pfds[live].events = POLLIN;
        pfds[live].revents = 0;
        where[live++] = i;
    }
    /* poll refuses more entries than RLIMIT_NOFILE (EINVAL), and one pidfd
     * may be given twice (a Popen and its PidFd): poll in slices that fit. */
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < (rlim_t)slice)
        slice = lim.rlim_cur > 0 ? (int)lim.rlim_cur : 1;
    for (start = 0; start < live; start += slice) {
        int size = live - start < slice ? live - start : slice;
        int ready;

        do
            ready = poll(pfds + start, (nfds_t)size, 0);
        while (ready < 0 && errno == EINTR);
        if (ready < 0)
            return -1;
        for (k = start; k < start + size && ready > 0; k++) {
            if (pfds[k].revents == 0)
                continue;
            ready--;
            i = where[k];
            if (sys_waitid(P_PIDFD, fds[i], &info[i], WEXITED | WNOHANG | __WALL,
                           &ru[i]) < 0 || info[i].pid == 0)
                continue;
            fds[i] = -1;
            reaped[count++] = i;
        }
    }
    return count;
}

/* Run make(arg), which creates a child that returns here like fork(), inside
 * the interpreter's fork hooks, as os.fork() does: the GIL held (cffi released
 * it around our call), PyOS_BeforeFork (import lock, os.register_at_fork
 * callbacks), then PyOS_AfterFork_Child or _Parent (thread states). */
static long with_fork_hooks(long (*make)(void *), void *arg)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    long ret;
    int saved_errno;

    PyOS_BeforeFork();
    ret = make(arg);
    saved_errno = errno;
    if (ret == 0)
        PyOS_AfterFork_Child();
    else
        PyOS_AfterFork_Parent();
    PyGILState_Release(gil);
    errno = saved_errno;
    return ret;
}

struct clone3_call {
    struct clone_args *args;
    size_t size;
};

static long make_clone3(void *arg)
{
    struct clone3_call *call = arg;
    return syscall(SYS_clone3, call->args, call->size);
}

static long make_fork(void *arg)
{
    (void)arg;
    return fork();   /* glibc's: its atfork handlers reset malloc's locks */
}

long fork_clone3(struct clone_args *args, size_t size)
{
    struct clone3_call call = {args, size};
    return with_fork_hooks(make_clone3, &call);
}

long fork_with_hooks(void)
{
    /* As subprocess does for preexec_fn; unlike os.fork(), no warning about
     * other threads. */
    return with_fork_hooks(make_fork, NULL);
}

long probe_clone3(uint64_t flags, int *pidfd)
{
    struct clone_args args;
    long ret;

    memset(&args, 0, sizeof(args));
    args.flags = flags | CLONE_VFORK;
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.exit_signal = 0;
    ret = syscall(SYS_clone3, &args, (size_t)CLONE_ARGS_SIZE_VER0);
    if (ret == 0) {
        /* A child in a copy of our address space: leave at once, raw. */
        syscall(SYS_exit_group, 0);
        for (;;)
            ;
    }
    return ret;
}
