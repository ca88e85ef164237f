/*
 * The child's side of a spawn: everything it runs between clone and exec.
 *
 * EVERYTHING HERE MUST BE ASYNC-SIGNAL-SAFE. On the fast paths the child
 * shares the parent's memory (CLONE_VM | CLONE_VFORK) and runs on a small
 * stack of its own while the parent is suspended: it may not allocate, take
 * a lock, or touch any library state. It makes raw syscalls on data the
 * parent prepared (struct pyclone3_spawn) and reports a failure by writing
 * into that same struct (shared memory) or into an error pipe (a copy of the
 * parent's memory), then exits 255. The only library state it touches is
 * errno, which syscall() sets; the parent saves and restores its own around
 * the spawn.
 */
#include "_clone3.h"

/* ---- the child ----------------------------------------------------------- */

#define child_fail pyclone3_child_fail

__attribute__((noreturn))
void pyclone3_child_fail(struct pyclone3_spawn *s, int step, int err)
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

    /* Born sharing the parent's fd table (CLONE_FILES): before touching any
     * fd, take a table of our own holding only the fds below share_from,
     * which the parent computed to cover every fd we use. The copy costs
     * what those low fds cost, not what the parent holds above them. */
    if (s->share_files) {
        if (syscall(SYS_close_range, (unsigned int)s->share_from, ~0U, CLOSE_RANGE_UNSHARE) < 0 &&
            syscall(SYS_unshare, CLONE_FILES) < 0)
            child_fail(s, SPAWN_ERR_FILES, errno);
    }
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
        child_fail(s, SPAWN_ERR_CHDIR, errno);
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
    /* The sandbox steps that may need privilege the id change below gives
     * up: raising a hard limit, lowering nice or oom_score_adj, dropping
     * from the bounding set (CAP_SYS_RESOURCE, CAP_SYS_NICE, CAP_SETPCAP). */
    if (s->sandbox)
        pyclone3_sandbox_before_ids(s);
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
    /* no_new_privs and Landlock: after every step that changes credentials. */
    if (s->sandbox)
        pyclone3_sandbox_after_ids(s);
    return 0;
}

/* The kernel's struct linux_dirent64, which glibc does not declare; the
 * kernel aligns each record to 8 bytes. */
struct child_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Close [lo, hi] one fd at a time, up to the soft RLIMIT_NOFILE (no fd can
 * be opened at or above it), when neither close_range nor /proc is there. */
static void child_close_each(unsigned int lo, unsigned int hi)
{
    struct rlimit lim;
    unsigned long fd, top = hi;

    if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
        lim.rlim_cur > 0 && lim.rlim_cur - 1 < top)
        top = lim.rlim_cur - 1;
    for (fd = lo; fd <= top; fd++)
        syscall(SYS_close, fd);
}

/* Close [lo, hi], with close_range (5.9+) or, before it, by listing
 * /proc/self/fd with getdents64 into a stack buffer (no allocation). */
static void child_close_range(unsigned int lo, unsigned int hi)
{
    char buf[1024] __attribute__((aligned(8)));
    long dir, n, off;

    if (lo > hi)
        return;
    if (syscall(SYS_close_range, lo, hi, 0) == 0)
        return;
    dir = syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        child_close_each(lo, hi);
        return;
    }
    while ((n = syscall(SYS_getdents64, dir, buf, sizeof(buf))) > 0) {
        for (off = 0; off < n;) {
            const struct child_dirent64 *entry = (const void *)(buf + off);
            const char *name = entry->d_name;
            unsigned long fd = 0;

            off += entry->d_reclen;
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
    /* The seccomp filter last: it need only allow execve (and, should that
     * fail, write and exit_group for the report), not our setup. */
    if (s->sandbox)
        pyclone3_sandbox_before_exec(s);
    for (path = s->exec_paths; *path; path++) {
        syscall(SYS_execve, *path, s->argv, envp);
        err = errno;
        if (err != ENOENT && err != ENOTDIR && saved == 0)
            saved = err;
    }
    child_fail(s, SPAWN_ERR_EXEC, saved ? saved : err);
}

int pyclone3_spawn_child(void *arg)
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
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl pyclone3_clone3_stack\n"      /* called from _spawn_parent.c */
    ".hidden pyclone3_clone3_stack\n"
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
__asm__(
    ".text\n"
    ".p2align 2\n"
    ".globl pyclone3_clone3_stack\n"
    ".hidden pyclone3_clone3_stack\n"
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
#endif


