/*
 * The parent's side of a spawn: the clone itself on each path, reaping a
 * child that must not outlive an interrupted spawn, and the fd cells a spawn
 * keeps its own fds in.
 */
#include "_clone3.h"

/* ---- the parent ------------------------------------------------------------ */

/* vfork in a frame of its own: the child runs pyclone3_spawn_child and never returns
 * here, and the caller's locals are safe from the shared-stack child. */
__attribute__((noinline))
static long spawn_vfork(struct pyclone3_spawn *s)
{
    pid_t pid = vfork();
    if (pid == 0)
        pyclone3_spawn_child(s);                /* never returns */
    return pid;
}

static int max_fd(int a, int b)
{
    return a > b ? a : b;
}

/* One above every fd the child uses: the fds it copies when it leaves the
 * fd table it was born sharing. Those it only closes (our ends of its
 * pipes) need not be copied: closing an fd it lacks does nothing. */
static int child_fds_end(const struct pyclone3_spawn *s)
{
    int top = 2;

    top = max_fd(top, s->p2cread);
    top = max_fd(top, s->c2pwrite);
    top = max_fd(top, s->errwrite);
    if (s->n_keep_fds > 0)
        top = max_fd(top, s->keep_fds[s->n_keep_fds - 1]);    /* sorted */
    top = max_fd(top, s->errpipe);
    top = max_fd(top, s->pidfd_sock);
    top = max_fd(top, s->sync_fd);
    top = max_fd(top, s->setns_fd);
    if (s->cgroup_in_child)
        top = max_fd(top, s->cgroup_fd);
    if (s->sandbox)
        top = max_fd(top, s->sandbox->landlock_fd);
    return top + 1;
}

/* Where a pidfd goes once the low fds are crowded: a parent that holds many
 * children keeps their pidfds above the fds a spawn's child needs (its
 * pipes, pass_fds), so that what a sharing child copies stays small. Kept
 * under the soft RLIMIT_NOFILE, and, for select(2), under 1024 where the
 * limit allows it. A pidfd that cannot move stays where it is. */
#define PIDFD_CROWDED 64
#define PIDFD_HIGH 1024

/* Whether the last spawn's pidfd arrived at PIDFD_CROWDED or above: our fd
 * table is big. Only then does a child share it: a small table costs next to
 * nothing to copy at clone, and sharing adds a syscall to the child. Written
 * by any thread without a lock: it is a hint. */
static volatile int fds_crowded;

static void move_pidfd_up(int *pidfd)
{
    struct rlimit lim;
    long base, fd;

    fds_crowded = *pidfd >= PIDFD_CROWDED;
    if (!fds_crowded || getrlimit(RLIMIT_NOFILE, &lim) < 0)
        return;
    base = lim.rlim_cur / 2 < PIDFD_HIGH ? (long)(lim.rlim_cur / 2) : PIDFD_HIGH;
    if (*pidfd >= base)
        return;
    fd = fcntl(*pidfd, F_DUPFD_CLOEXEC, base);
    if (fd < 0)
        return;
    close(*pidfd);
    *pidfd = (int)fd;
}

long pyclone3_spawn(struct pyclone3_spawn *s, int method, int clear_sighand,
                    char *stack, size_t stack_size, int *pidfd)
{
    uint64_t all = ~(uint64_t)0, old = 0;
    long pid = -1;
    int saved_errno = errno, err = 0;
    /* The stack grows down on every supported architecture. */
    char *top = (char *)((uintptr_t)(stack + stack_size) & ~(uintptr_t)15);

    int fork_like = method == SPAWN_CLONE3_FORK || method == SPAWN_CLONE_FORK ||
                    method == SPAWN_FORK;
    int exit_signal = s->exit_signal;
    uint64_t share = 0;

    s->err_step = SPAWN_ERR_NONE;
    s->err_errno = 0;
    if (!fork_like)
        s->errpipe = -1;        /* shared memory carries the report */
    if (s->share_files && fds_crowded && method != SPAWN_VFORK) {
        /* The child shares our fd table until its first step: we must not
         * run meanwhile, so a child in a copy of our memory is a vfork
         * child too. */
        s->share_from = child_fds_end(s);
        share = CLONE_FILES | (fork_like ? CLONE_VFORK : 0);
    } else {
        s->share_files = 0;
    }
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
        args.flags = CLONE_PIDFD | share | s->clone_flags | (clear_sighand ? CLONE_CLEAR_SIGHAND : 0);
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
                pyclone3_spawn_child(s);        /* never returns */
            if (pid < 0)
                err = errno;
            break;
        }
#if HAVE_CLONE3_STACK
        args.flags |= CLONE_VM | CLONE_VFORK;
        args.stack = (uint64_t)(uintptr_t)stack;
        args.stack_size = (uint64_t)(top - stack);
        pid = pyclone3_clone3_stack(&args, size, pyclone3_spawn_child, s);
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
        pid = clone(pyclone3_spawn_child, top,
                    CLONE_VM | CLONE_VFORK | (pidfd ? CLONE_PIDFD : 0) | (int)share | (int)s->clone_flags |
                        exit_signal, s, pidfd);
        if (pid < 0)
            err = errno;
        break;
    case SPAWN_CLONE_FORK:
    case SPAWN_FORK: {
        /* clone(flags, newsp, parent_tid, ...): the pidfd goes to parent_tid
         * on every architecture we build for. SPAWN_FORK is the vfork paths'
         * copy-of-memory twin, for a sandbox that refuses CLONE_PIDFD: the
         * clone glibc's fork() makes, without its atfork handlers (the child
         * runs no library code). */
        int with_pidfd = method == SPAWN_CLONE_FORK;
        unsigned long flags = (unsigned long)(share | s->clone_flags | (with_pidfd ? CLONE_PIDFD : 0));

        pid = syscall(SYS_clone, flags | (unsigned long)exit_signal, NULL,
                      with_pidfd ? pidfd : NULL, NULL, NULL);
        if (pid == 0)
            pyclone3_spawn_child(s);            /* never returns */
        if (pid < 0)
            err = errno;
        break;
    }
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
    if (pid > 0) {
        s->child_pid = pid;
        if (pidfd && *pidfd >= 0)
            move_pidfd_up(pidfd);
    }
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

/* Copy `blob` (`len` bytes: n NUL-terminated strings one after the other)
 * into the room after out[0..n + 1] and point out[] at the copies: the first
 * `na` then NULL, then the next `nb` then NULL. One allocation and one call
 * whatever the number of strings. Returns -1 when blob does not hold exactly
 * na + nb strings (a string had a NUL of its own). */
static int pack(char **out, const char *blob, size_t len, size_t na, size_t nb)
{
    char *p = (char *)(out + na + nb + 2), *end = p + len;
    size_t i, j = 0;

    memcpy(p, blob, len);
    for (i = 0; i < na + nb; i++) {
        char *nul = memchr(p, '\0', (size_t)(end - p));

        if (!nul)
            return -1;
        if (i == na)
            out[j++] = NULL;
        out[j++] = p;
        p = nul + 1;
    }
    if (p != end)
        return -1;              /* more strings than said: one had a NUL inside */
    if (nb == 0)
        out[j++] = NULL;
    out[j] = NULL;
    return 0;
}

int pyclone3_set_argv(struct pyclone3_spawn *s, char **out, const char *blob, size_t len,
                      size_t n_argv, size_t n_paths)
{
    if (pack(out, blob, len, n_argv, n_paths) < 0)
        return -1;
    s->argv = out;
    s->exec_paths = out + n_argv + 1;
    return 0;
}

int pyclone3_set_envp(struct pyclone3_spawn *s, char **out, const char *blob, size_t len,
                      size_t n)
{
    if (pack(out, blob, len, n, 0) < 0)
        return -1;
    s->envp = out;
    return 0;
}
