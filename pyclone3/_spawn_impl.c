/*
 * The spawn core: create a child and exec a program in it, with the child's
 * pidfd taken at creation.
 *
 * Part of pyclone3._clone3 (build_ffi.py appends this file to
 * _clone3_impl.c); declared for Python in _clone3.cdef.
 *
 * EVERYTHING THE CHILD RUNS BETWEEN CLONE AND EXEC MUST BE
 * ASYNC-SIGNAL-SAFE. On the fast paths the child shares the parent's memory
 * (CLONE_VM | CLONE_VFORK) and runs on a small stack of its own while the
 * parent is suspended: it may not allocate, take a lock, or touch any
 * library state. It makes raw syscalls on data the parent prepared
 * (struct pyclone3_spawn) and reports a failure by writing into that same
 * struct (vfork paths) or into an error pipe (fork path), then exits 255.
 * The only library state it touches is errno, which syscall() sets; the
 * parent saves and restores its own around the spawn.
 */
#include <sys/prctl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

extern char **environ;

#define SPAWN_ERR_NONE 0
#define SPAWN_ERR_NOEXEC 1   /* failed before exec: chdir, dup2, setsid, ... */
#define SPAWN_ERR_EXEC 2     /* execve failed for every candidate path */
#define SPAWN_ERR_PREEXEC 3  /* preexec_fn raised (fork path, set by Python) */
#define SPAWN_ERR_PIDFD 4    /* the child could not open or send its pidfd */
#define SPAWN_ERR_CGROUP 5   /* the child could not join its cgroup */
#define SPAWN_ERR_SETNS 6    /* the child could not enter the namespaces */

#define SPAWN_CLONE3 0       /* clone3(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) */
#define SPAWN_CLONE 1        /* clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) */
#define SPAWN_VFORK 2        /* vfork(); pidfd sent by the child if asked */
#define SPAWN_CLONE3_FORK 3  /* clone3(CLONE_PIDFD), no shared memory */
#define SPAWN_CLONE_FORK 4   /* clone(CLONE_PIDFD), no shared memory */

struct pyclone3_spawn {
    char *const *exec_paths;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite;
    const int *keep_fds;
    int n_keep_fds;
    int close_fds;
    int umask;
    int restore_signals;
    int setsid;
    int pgid;
    long long gid;             /* -1: unchanged; else a uid_t/gid_t */
    long long uid;
    const unsigned int *groups;
    int n_groups;
    int pidfd_sock;
    int errpipe;
    int err_step;
    int err_errno;
    int reset_handlers;
    int restore_mask;
    uint64_t sigmask;
    int pdeathsig;
    int parent_pid;
    uint64_t clone_flags;
    int exit_signal;
    const int *set_tid;
    int set_tid_size;
    int cgroup_fd;
    int cgroup_in_child;
    int setns_fd;
    int setns_flags;
    int sync_fd;
    int sync_wfd;
    long child_pid;
};

/* ---- the child ----------------------------------------------------------- */

__attribute__((noreturn))
static void child_fail(struct pyclone3_spawn *s, int step, int err)
{
    s->err_step = step;        /* seen by the parent on the vfork paths */
    s->err_errno = err;
    if (s->errpipe >= 0) {     /* the fork path: a separate address space */
        int record[2] = {step, err};
        syscall(SYS_write, s->errpipe, record, sizeof(record));
    }
    for (;;)
        syscall(SYS_exit_group, 255);
}

/* Reset every handled signal to SIG_DFL (exec would, but it has not run yet
 * and a handler would run Python in our shared memory). Ignored signals stay
 * ignored, as across exec. The kernel's struct sigaction starts with the
 * handler on every supported architecture; 64 zero bytes cover the rest. */
static void child_reset_handlers(void)
{
    int sig;
    for (sig = 1; sig < 65; sig++) {
        uint64_t old[8] = {0}, dfl[8] = {0};
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (syscall(SYS_rt_sigaction, sig, NULL, old, 8) < 0)
            continue;
        if (old[0] != (uint64_t)(uintptr_t)SIG_IGN && old[0] != (uint64_t)(uintptr_t)SIG_DFL)
            syscall(SYS_rt_sigaction, sig, dfl, NULL, 8);
    }
}

/* One byte and room for one SCM_RIGHTS fd: the pidfd a child sends. */
union pidfd_control {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
};

static void pidfd_msg_init(struct msghdr *msg, struct iovec *iov, char *byte,
                           union pidfd_control *control)
{
    memset(msg, 0, sizeof(*msg));
    memset(control, 0, sizeof(*control));
    iov->iov_base = byte;
    iov->iov_len = 1;
    msg->msg_iov = iov;
    msg->msg_iovlen = 1;
    msg->msg_control = control->buf;
    msg->msg_controllen = sizeof(control->buf);
}

static int child_send_pidfd(int sock)
{
    union pidfd_control control;
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *cmsg;
    char byte = 'p';
    long me = syscall(SYS_getpid);
    long fd = syscall(SYS_pidfd_open, me, 0);

    if (fd < 0)
        return -1;
    pidfd_msg_init(&msg, &iov, &byte, &control);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &(int){(int)fd}, sizeof(int));
    if (syscall(SYS_sendmsg, sock, &msg, MSG_NOSIGNAL) < 0)
        return -1;
    syscall(SYS_close, fd);
    return 0;
}

static int child_set_cloexec(int fd, int on)
{
    long flags = syscall(SYS_fcntl, fd, F_GETFD);
    if (flags < 0)
        return -1;
    flags = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
    return (int)syscall(SYS_fcntl, fd, F_SETFD, flags);
}

/* Put `fd` on `target`; dup2 clears FD_CLOEXEC, but is a no-op when they are
 * the same fd, so clear it by hand then. */
static int child_dup_to(int fd, int target)
{
    if (fd == target)
        return child_set_cloexec(fd, 0);
    return (int)syscall(SYS_dup3, fd, target, 0);
}

/* The setup subprocess.Popen's child does before preexec_fn, in its order. */
int pyclone3_child_setup(struct pyclone3_spawn *s)
{
    int i, c2pwrite = s->c2pwrite, errwrite = s->errwrite;

    if (s->reset_handlers)
        child_reset_handlers();
    if (s->restore_mask)
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &s->sigmask, NULL, 8);
    if (s->pidfd_sock >= 0 && child_send_pidfd(s->pidfd_sock) < 0)
        child_fail(s, SPAWN_ERR_PIDFD, errno);
    if (s->sync_fd >= 0) {
        /* Wait for the parent's go (it writes our uid/gid maps first). EOF
         * or anything else means it gave up: leave without a report. */
        char go = 0;
        long n;
        syscall(SYS_close, s->sync_wfd);
        do
            n = syscall(SYS_read, s->sync_fd, &go, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1 || go != 'g')
            for (;;)
                syscall(SYS_exit_group, 255);
        syscall(SYS_close, s->sync_fd);
    }
    if (s->cgroup_in_child && s->cgroup_fd >= 0) {
        /* No CLONE_INTO_CGROUP on this path: move ourselves in before
         * anything of the program runs. */
        long fd = syscall(SYS_openat, s->cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
        if (fd < 0 || syscall(SYS_write, fd, "0", 1) != 1)
            child_fail(s, SPAWN_ERR_CGROUP, errno);
        syscall(SYS_close, fd);
    }
    if (s->setns_fd >= 0 && syscall(SYS_setns, s->setns_fd, s->setns_flags) < 0)
        child_fail(s, SPAWN_ERR_SETNS, errno);

    /* The parent's ends of the pipes. */
    if (s->p2cwrite >= 0)
        syscall(SYS_close, s->p2cwrite);
    if (s->c2pread >= 0)
        syscall(SYS_close, s->c2pread);
    if (s->errread >= 0)
        syscall(SYS_close, s->errread);

    for (i = 0; i < s->n_keep_fds; i++) {
        if (s->keep_fds[i] != s->errpipe && child_set_cloexec(s->keep_fds[i], 0) < 0)
            child_fail(s, SPAWN_ERR_NOEXEC, errno);
    }

    /* Move the child's ends out of the way of 0..2 before dup'ing onto them. */
    if (c2pwrite == 0) {
        c2pwrite = (int)syscall(SYS_fcntl, c2pwrite, F_DUPFD_CLOEXEC, 3);
        if (c2pwrite < 0)
            child_fail(s, SPAWN_ERR_NOEXEC, errno);
    }
    while (errwrite == 0 || errwrite == 1) {
        errwrite = (int)syscall(SYS_fcntl, errwrite, F_DUPFD_CLOEXEC, 3);
        if (errwrite < 0)
            child_fail(s, SPAWN_ERR_NOEXEC, errno);
    }
    if (s->p2cread >= 0 && child_dup_to(s->p2cread, 0) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);
    if (c2pwrite >= 0 && child_dup_to(c2pwrite, 1) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);
    if (errwrite >= 0 && child_dup_to(errwrite, 2) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);

    if (s->cwd && syscall(SYS_chdir, s->cwd) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);
    if (s->umask >= 0)
        syscall(SYS_umask, s->umask);
    if (s->restore_signals) {                  /* Python ignores these two */
        uint64_t dfl[8] = {0};
        syscall(SYS_rt_sigaction, SIGPIPE, dfl, NULL, 8);
        syscall(SYS_rt_sigaction, SIGXFSZ, dfl, NULL, 8);
    }
    if (s->setsid && syscall(SYS_setsid) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);
    if (s->pgid >= 0 && syscall(SYS_setpgid, 0, s->pgid) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);
    if (s->n_groups >= 0 && syscall(SYS_setgroups, s->n_groups, s->groups) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);
    if (s->gid >= 0 && syscall(SYS_setregid, (long)s->gid, (long)s->gid) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);
    if (s->uid >= 0 && syscall(SYS_setreuid, (long)s->uid, (long)s->uid) < 0)
        child_fail(s, SPAWN_ERR_NOEXEC, errno);
    /* Last: a change of credentials clears the parent-death signal. If the
     * parent died before the prctl took effect, the signal will never come:
     * deliver it now, as the kernel would have. */
    if (s->pdeathsig > 0) {
        long ppid;

        if (syscall(SYS_prctl, PR_SET_PDEATHSIG, s->pdeathsig, 0, 0, 0) < 0)
            child_fail(s, SPAWN_ERR_NOEXEC, errno);
        ppid = syscall(SYS_getppid);
        /* 0: a parent outside our PID namespace (setns into one), still alive;
         * once it dies we are reparented to a reaper we can see. */
        if (ppid != 0 && ppid != s->parent_pid)
            syscall(SYS_kill, syscall(SYS_getpid), s->pdeathsig);
    }
    return 0;
}

/* Close [lo, hi], with close_range (5.9+) or, before it, by listing
 * /proc/self/fd with getdents64 into a stack buffer (no allocation). */
static void child_close_range(unsigned int lo, unsigned int hi)
{
    char buf[1024];
    long dir, n, off;

    if (lo > hi)
        return;
    if (syscall(SYS_close_range, lo, hi, 0) == 0)
        return;
    dir = syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        unsigned int fd;
        for (fd = lo; fd <= hi && fd < 65536; fd++)
            syscall(SYS_close, fd);
        return;
    }
    while ((n = syscall(SYS_getdents64, dir, buf, sizeof(buf))) > 0) {
        for (off = 0; off < n;) {
            /* struct linux_dirent64: ino 8, off 8, reclen 2, type 1, name */
            unsigned short reclen;
            const char *name = buf + off + 19;
            unsigned long fd = 0;
            memcpy(&reclen, buf + off + 16, sizeof(reclen));
            off += reclen;
            if (*name < '0' || *name > '9')
                continue;
            for (; *name >= '0' && *name <= '9'; name++)
                fd = fd * 10 + (unsigned long)(*name - '0');
            if (fd >= lo && fd <= hi && (long)fd != dir)
                syscall(SYS_close, fd);
        }
    }
    syscall(SYS_close, dir);
}

/* close_fds, then exec each candidate path in turn; never returns. */
void pyclone3_child_exec(struct pyclone3_spawn *s)
{
    char *const *path;
    char *const *envp = s->envp ? s->envp : environ;
    int saved = 0, err = ENOENT;

    if (s->close_fds) {
        unsigned int lo = 3;
        int i;
        for (i = 0; i < s->n_keep_fds; i++) {    /* sorted, includes errpipe */
            unsigned int keep = (unsigned int)s->keep_fds[i];
            if (keep < lo)
                continue;
            child_close_range(lo, keep - 1);
            lo = keep + 1;
        }
        child_close_range(lo, ~0U);
    }
    for (path = s->exec_paths; *path; path++) {
        syscall(SYS_execve, *path, s->argv, envp);
        err = errno;
        if (err != ENOENT && err != ENOTDIR && saved == 0)
            saved = err;
    }
    child_fail(s, SPAWN_ERR_EXEC, saved ? saved : err);
}

static int spawn_child(void *arg)
{
    struct pyclone3_spawn *s = arg;
    pyclone3_child_setup(s);
    pyclone3_child_exec(s);
    return 255;
}

/* ---- clone3 onto a new stack: a few instructions of assembly ---------------
 * clone3 takes the child's stack in clone_args and the child resumes right
 * after the syscall instruction on that stack, so no C function may return in
 * it: call fn(arg) there and exit with its result. Returns the pid, or
 * -errno, in the parent. */
#if defined(__x86_64__)
# define HAVE_CLONE3_STACK 1
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".type pyclone3_clone3_stack, @function\n"
    "pyclone3_clone3_stack:\n"
    "    movq %rdx, %r8\n"              /* fn: r8 and r9 survive the syscall */
    "    movq %rcx, %r9\n"              /* arg */
    "    movl $435, %eax\n"             /* SYS_clone3 */
    "    syscall\n"
    "    testq %rax, %rax\n"
    "    jz 1f\n"
    "    ret\n"
    "1:  xorl %ebp, %ebp\n"
    "    andq $-16, %rsp\n"
    "    movq %r9, %rdi\n"
    "    callq *%r8\n"
    "    movl %eax, %edi\n"
    "    movl $231, %eax\n"             /* SYS_exit_group */
    "    syscall\n"
    "    hlt\n"
    ".size pyclone3_clone3_stack, .-pyclone3_clone3_stack\n");
#elif defined(__aarch64__)
# define HAVE_CLONE3_STACK 1
__asm__(
    ".text\n"
    ".p2align 2\n"
    ".type pyclone3_clone3_stack, %function\n"
    "pyclone3_clone3_stack:\n"
    "    mov x9, x2\n"                  /* fn */
    "    mov x10, x3\n"                 /* arg */
    "    mov x8, #435\n"                /* SYS_clone3 */
    "    svc #0\n"
    "    cbz x0, 1f\n"
    "    ret\n"
    "1:  mov x29, #0\n"
    "    mov x30, #0\n"
    "    mov x0, x10\n"
    "    blr x9\n"
    "    mov x8, #94\n"                 /* SYS_exit_group */
    "    svc #0\n"
    "    brk #0\n"
    ".size pyclone3_clone3_stack, .-pyclone3_clone3_stack\n");
#else
# define HAVE_CLONE3_STACK 0
#endif

#if HAVE_CLONE3_STACK
long pyclone3_clone3_stack(struct clone_args *args, size_t size,
                           int (*fn)(void *), void *arg);
static const int HAS_CLONE3_SPAWN = 1;
#else
static const int HAS_CLONE3_SPAWN = 0;
#endif

/* ---- the parent ------------------------------------------------------------ */

/* vfork in a frame of its own: the child runs spawn_child and never returns
 * here, and the caller's locals are safe from the shared-stack child. */
__attribute__((noinline))
static long spawn_vfork(struct pyclone3_spawn *s)
{
    pid_t pid = vfork();
    if (pid == 0)
        spawn_child(s);                /* never returns */
    return pid;
}

long pyclone3_spawn(struct pyclone3_spawn *s, int method, int clear_sighand,
                    char *stack, size_t stack_size, int *pidfd)
{
    uint64_t all = ~(uint64_t)0, old = 0;
    long pid = -1;
    int saved_errno = errno, err = 0;
    /* The stack grows down on every supported architecture. */
    char *top = (char *)((uintptr_t)(stack + stack_size) & ~(uintptr_t)15);

    int fork_like = method == SPAWN_CLONE3_FORK || method == SPAWN_CLONE_FORK;
    int exit_signal = s->exit_signal;

    s->err_step = SPAWN_ERR_NONE;
    s->err_errno = 0;
    if (!fork_like)
        s->errpipe = -1;        /* shared memory carries the report */
    /* No signal handler may run in the child while it shares our memory.
     * With CLONE_CLEAR_SIGHAND the kernel resets the child's handlers as it
     * creates it, so there is no window to close; otherwise block every
     * signal around the clone and let the child reset its handlers, then
     * restore our mask in it. */
    s->reset_handlers = !((method == SPAWN_CLONE3 || method == SPAWN_CLONE3_FORK) && clear_sighand);
    s->restore_mask = s->reset_handlers;
    if (s->restore_mask) {
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, 8);
        s->sigmask = old;
    }

    switch (method) {
    case SPAWN_CLONE3:
    case SPAWN_CLONE3_FORK: {
        struct clone_args args;
        size_t size = CLONE_ARGS_SIZE_VER0;
        memset(&args, 0, sizeof(args));
        args.flags = CLONE_PIDFD | s->clone_flags | (clear_sighand ? CLONE_CLEAR_SIGHAND : 0);
        args.pidfd = (uint64_t)(uintptr_t)pidfd;
        args.exit_signal = (uint64_t)exit_signal;
        if (s->set_tid_size > 0) {
            args.set_tid = (uint64_t)(uintptr_t)s->set_tid;
            args.set_tid_size = (uint64_t)s->set_tid_size;
            size = CLONE_ARGS_SIZE_VER1;
        }
        if (s->cgroup_fd >= 0 && !s->cgroup_in_child) {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = (uint64_t)s->cgroup_fd;
            size = CLONE_ARGS_SIZE_VER2;
        }
        if (method == SPAWN_CLONE3_FORK) {
            /* A copy of our memory, like fork: the child returns here. */
            pid = syscall(SYS_clone3, &args, size);
            if (pid == 0)
                spawn_child(s);        /* never returns */
            if (pid < 0)
                err = errno;
            break;
        }
#if HAVE_CLONE3_STACK
        args.flags |= CLONE_VM | CLONE_VFORK;
        args.stack = (uint64_t)(uintptr_t)stack;
        args.stack_size = (uint64_t)(top - stack);
        pid = pyclone3_clone3_stack(&args, size, spawn_child, s);
        if (pid < 0) {
            err = (int)-pid;
            pid = -1;
        }
#else
        err = ENOSYS;
#endif
        break;
    }
    case SPAWN_CLONE:
        pid = clone(spawn_child, top,
                    CLONE_VM | CLONE_VFORK | (pidfd ? CLONE_PIDFD : 0) | (int)s->clone_flags |
                        exit_signal, s, pidfd);
        if (pid < 0)
            err = errno;
        break;
    case SPAWN_CLONE_FORK:
        /* clone(flags, newsp, parent_tid, ...): the pidfd goes to parent_tid
         * on every architecture we build for. */
        pid = syscall(SYS_clone, (unsigned long)(CLONE_PIDFD | s->clone_flags) |
                                     (unsigned long)exit_signal, NULL, pidfd, NULL, NULL);
        if (pid == 0)
            spawn_child(s);            /* never returns */
        if (pid < 0)
            err = errno;
        break;
    case SPAWN_VFORK:
        pid = spawn_vfork(s);
        if (pid < 0)
            err = errno;
        break;
    default:
        err = EINVAL;
    }

    /* Recorded before anything of Python can run again: an exception raised by
     * a signal handler as this call returns must not lose the child. */
    if (pid > 0)
        s->child_pid = pid;
    if (s->restore_mask)
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, 8);
    errno = pid < 0 ? err : saved_errno;
    return pid;
}

long pyclone3_fork(struct pyclone3_spawn *s)
{
    long pid = fork_with_hooks();

    if (pid > 0)
        s->child_pid = pid;
    return pid;
}

int pyclone3_kill_and_reap(int pidfd, long pid, int kill_first)
{
    siginfo_t si;
    int wstatus = 0, err;
    long ret;

    if (kill_first) {
        if (pidfd < 0 || syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) < 0)
            kill((pid_t)pid, SIGKILL);  /* unreaped: the PID is still the child's */
    }
    if (pidfd >= 0) {
        memset(&si, 0, sizeof(si));
        do
            ret = syscall(SYS_waitid, P_PIDFD, pidfd, &si, WEXITED | __WALL, NULL);
        while (ret < 0 && errno == EINTR);
        if (ret == 0) {
            if (si.si_code == CLD_EXITED)
                return (si.si_status & 0xff) << 8;
            return (si.si_status & 0x7f) | (si.si_code == CLD_DUMPED ? 0x80 : 0);
        }
        err = errno;
        if (err != ENOSYS && err != EINVAL)
            return -1;  /* ECHILD: reaped already, by someone else */
    }
    do
        ret = waitpid((pid_t)pid, &wstatus, __WALL);
    while (ret < 0 && errno == EINTR);
    return ret < 0 ? -1 : wstatus;
}

int pyclone3_reap_cell(struct pyclone3_spawn *s, int *pidfd, int kill_first)
{
    int wstatus = -1;

    if (s->child_pid > 0)
        wstatus = pyclone3_kill_and_reap(*pidfd, s->child_pid, kill_first);
    s->child_pid = -1;
    if (*pidfd >= 0) {
        close(*pidfd);
        *pidfd = -1;
    }
    return wstatus;
}

/* Fds a spawn makes for itself live in C cells from birth to close, so that
 * an exception raised by a signal handler as a call returns cannot lose one:
 * whatever is still in a cell is closed by pyclone3_close_cells. */
int pyclone3_error_pipe(int *cells)
{
    int fds[2], w;

    if (pipe2(fds, O_CLOEXEC) < 0)
        return -1;
    /* the write end clear of the child's 0..2, which it is about to set */
    w = fds[1] >= 3 ? fds[1] : fcntl(fds[1], F_DUPFD_CLOEXEC, 3);
    if (w < 0) {
        int err = errno;
        close(fds[0]);
        close(fds[1]);
        errno = err;
        return -1;
    }
    if (w != fds[1])
        close(fds[1]);
    cells[0] = fds[0];
    cells[1] = w;
    return 0;
}

int pyclone3_eventfd_cell(int *cell)
{
    cell[0] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return cell[0];
}

int pyclone3_pipe_cells(int *cells)
{
    return pipe2(cells, O_CLOEXEC);
}

int pyclone3_socketpair_cells(int *cells)
{
    return socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, cells);
}

void pyclone3_close_cells(int *cells, int n)
{
    int i, fd;

    for (i = 0; i < n; i++) {
        fd = cells[i];
        cells[i] = -1;
        if (fd >= 0)
            close(fd);
    }
}

int pyclone3_write_file(const char *path, const char *data, size_t len)
{
    int fd, err = 0;
    ssize_t n;

    do
        fd = open(path, O_WRONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno;
    do
        n = write(fd, data, len);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        err = errno;
    else if ((size_t)n != len)
        err = EIO;
    close(fd);
    return err;
}

int pyclone3_recv_pidfd_into(int sock, int *cell)
{
    cell[0] = pyclone3_recv_pidfd(sock);
    return cell[0];
}

/* Receive the pidfd a child sent over `sock` (MSG_CMSG_CLOEXEC); -1 if none. */
int pyclone3_recv_pidfd(int sock)
{
    union pidfd_control control;
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *cmsg;
    char byte;
    int fd = -1;

    pidfd_msg_init(&msg, &iov, &byte, &control);
    if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT) < 1)
        return -1;
    cmsg = CMSG_FIRSTHDR(&msg);
    if (cmsg && cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS &&
        cmsg->cmsg_len == CMSG_LEN(sizeof(int)))
        memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
    else
        errno = EPROTO;
    return fd;
}

/* Point out[] at the strings packed one after the other in `blob`: the
 * first `na` then NULL, then the next `nb` then NULL (argv and the exec
 * candidates in one call instead of one allocation per string). The caller
 * checked that blob holds exactly na + nb NULs. */
void pyclone3_split(char *blob, char **out, size_t na, size_t nb)
{
    size_t i, j = 0;
    for (i = 0; i < na + nb; i++) {
        if (i == na)
            out[j++] = NULL;
        out[j++] = blob;
        while (*blob)
            blob++;
        blob++;
    }
    if (na + nb == na)
        out[j++] = NULL;
    out[j] = NULL;
}
