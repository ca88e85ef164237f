/*
 * Thin syscall wrappers, the wait_all sweep and the interpreter's fork hooks.
 *
 * Every wrapper here returns -1 and leaves errno set on failure and checks
 * nothing. Argument checking, errno-to-exception mapping and EINTR retries
 * live in pyclone3/syscalls.py.
 */
#define Py_LIMITED_API
#include <Python.h>
#include "_clone3.h"

/* In the stable ABI since 3.7, but cffi builds against the 3.2 limited API,
 * which hides their prototypes. */
extern void PyOS_BeforeFork(void);
extern void PyOS_AfterFork_Parent(void);
extern void PyOS_AfterFork_Child(void);

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

/* waitid(2) into si: with WNOHANG and no child ready the kernel leaves si
 * untouched; zeroing it first is what makes si_pid == 0 mean "nothing yet". */
static int waitid_raw(int idtype, int id, siginfo_t *si, int options, struct pyclone3_rusage *ru)
{
    memset(si, 0, sizeof(*si));
    return syscall(SYS_waitid, idtype, id, si, options, ru) < 0 ? -1 : 0;
}

/* The SIGCHLD fields of si into *dst, a struct pyclone3_waitinfo or waitbuf. */
#define FLATTEN_SIGINFO(dst, si)      \
    do {                              \
        (dst)->pid = (si).si_pid;     \
        (dst)->uid = (si).si_uid;     \
        (dst)->signo = (si).si_signo; \
        (dst)->status = (si).si_status; \
        (dst)->code = (si).si_code;   \
    } while (0)

int sys_waitid(int idtype, int id, struct pyclone3_waitinfo *info,
               int options, struct pyclone3_rusage *ru)
{
    siginfo_t si;

    if (waitid_raw(idtype, id, &si, options, ru) < 0)
        return -1;
    FLATTEN_SIGINFO(info, si);
    return 0;
}

int sys_waitid_into(int idtype, int id, struct pyclone3_waitbuf *buf, int options)
{
    siginfo_t si;

    if (waitid_raw(idtype, id, &si, options, &buf->rusage) < 0)
        return -1;
    FLATTEN_SIGINFO(buf, si);
    return 0;
}

int sys_close_range(unsigned int first, unsigned int last, unsigned int flags)
{
    return (int)syscall(SYS_close_range, first, last, flags);
}

/* Landlock (5.13+), for building a child's ruleset in the parent. */
int sys_landlock_create_ruleset(const void *attr, size_t size, uint32_t flags)
{
    return (int)syscall(SYS_landlock_create_ruleset, attr, size, flags);
}

int sys_landlock_add_rule(int ruleset_fd, int rule_type, const void *attr, uint32_t flags)
{
    return (int)syscall(SYS_landlock_add_rule, ruleset_fd, rule_type, attr, flags);
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
