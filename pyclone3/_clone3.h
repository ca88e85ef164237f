/*
 * The one header of pyclone3's private compiled module, pyclone3._clone3:
 * what its translation units share, and what cffi's generated module sees.
 *
 *   _syscalls.c      thin syscall wrappers, the wait_all sweep, fork hooks
 *   _spawn_child.c   what the child runs between clone and exec
 *   _sandbox_child.c the child's sandbox steps, just before exec
 *   _spawn_parent.c  the parent's side of a spawn, and its fd cells
 *
 * Declared for Python in _clone3.cdef; build_ffi.py compiles the files.
 *
 * Only glibc's headers are included, never <linux/sched.h> or
 * <linux/pidfd.h>: they clash with <sched.h> on some systems and are often
 * older than the running kernel. Whatever the build machine's headers lack
 * is defined below from the kernel's stable user-space ABI; what the running
 * kernel actually supports is probed at run time (pyclone3/_features.py).
 */
#ifndef PYCLONE3_CLONE3_H
#define PYCLONE3_CLONE3_H

#ifndef _GNU_SOURCE
# define _GNU_SOURCE 1
#endif
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
#ifndef SYS_landlock_create_ruleset
# define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
# define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
# define SYS_landlock_restrict_self 446
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

struct pyclone3_waitbuf {                      /* one waitid's siginfo and rusage */
    int pid;
    unsigned int uid;
    int signo;
    int status;
    int code;
    struct pyclone3_rusage rusage;
};


/* ---- the spawn core ------------------------------------------------------ */

#ifndef CLOSE_RANGE_UNSHARE
# define CLOSE_RANGE_UNSHARE (1U << 1)        /* Linux 5.9 */
#endif
#ifndef SYS_close_range
# define SYS_close_range 436
#endif

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

extern char **environ;

#define SPAWN_ERR_NONE 0
#define SPAWN_ERR_NOEXEC 1   /* failed before exec: dup2, setsid, setgroups, ... */
#define SPAWN_ERR_EXEC 2     /* execve failed for every candidate path */
#define SPAWN_ERR_PREEXEC 3  /* preexec_fn raised (fork path, set by Python) */
#define SPAWN_ERR_PIDFD 4    /* the child could not open or send its pidfd */
#define SPAWN_ERR_CGROUP 5   /* the child could not join its cgroup */
#define SPAWN_ERR_SETNS 6    /* the child could not enter the namespaces */
#define SPAWN_ERR_FILES 7    /* the child could not take its own fd table */
#define SPAWN_ERR_CHDIR 8    /* chdir(cwd) failed */
/* The sandbox steps (_sandbox_child.c). A step's report may carry a detail
 * in its bits 8 and up: which rlimit, which capability. */
#define SPAWN_ERR_RLIMIT 9         /* prlimit64: detail = index in rlimits */
#define SPAWN_ERR_NICE 10          /* setpriority */
#define SPAWN_ERR_OOM_SCORE_ADJ 11 /* writing /proc/self/oom_score_adj */
#define SPAWN_ERR_AFFINITY 12      /* sched_setaffinity */
#define SPAWN_ERR_CAPS 13          /* PR_CAPBSET_DROP: detail = the capability;
                                      capset / PR_CAP_AMBIENT: detail = 255 */
#define SPAWN_ERR_NO_NEW_PRIVS 14  /* PR_SET_NO_NEW_PRIVS */
#define SPAWN_ERR_LANDLOCK 15      /* landlock_restrict_self */
#define SPAWN_ERR_SECCOMP 16       /* seccomp(SECCOMP_SET_MODE_FILTER) */
#define SPAWN_ERR_AMBIENT 17       /* PR_CAP_AMBIENT_RAISE: detail = the capability */
#define SPAWN_ERR_DETAIL_SHIFT 8

#define SPAWN_CLONE3 0       /* clone3(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) */
#define SPAWN_CLONE 1        /* clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) */
#define SPAWN_VFORK 2        /* vfork(); pidfd sent by the child if asked */
#define SPAWN_CLONE3_FORK 3  /* clone3(CLONE_PIDFD), no shared memory */
#define SPAWN_CLONE_FORK 4   /* clone(CLONE_PIDFD), no shared memory */
#define SPAWN_FORK 5         /* clone(exit signal) as fork() makes it: no pidfd */

/* One resource limit to set in the child: prlimit64's struct, and which. */
struct pyclone3_rlimit {
    int resource;
    uint64_t soft;
    uint64_t hard;
};

/* What the child sets up about itself just before exec, prepared by the
 * parent (pyclone3/_sandbox_plan.py). -1 / 0 / NULL: leave it. */
struct pyclone3_sandbox {
    const struct pyclone3_rlimit *rlimits;
    int n_rlimits;
    int set_nice;
    int nice;
    const char *oom_score_adj;   /* the text to write, e.g. "-500" */
    int oom_score_adj_len;       /* 0: leave it */
    const unsigned long *cpu_mask;
    size_t cpu_mask_size;        /* bytes; 0: leave the affinity */
    int drop_caps;               /* 1: drop cap_drop from the bounding and
                                    inheritable sets, clear the ambient set
                                    (so does a cap_ambient) */
    uint64_t cap_drop;           /* one bit per capability number */
    uint64_t cap_ambient;        /* raised in the ambient set after the id
                                    change, kept through it by KEEPCAPS */
    int no_new_privs;
    int landlock_fd;             /* >= 0: a ruleset to restrict ourselves with */
    const void *seccomp_filter;  /* struct sock_filter[seccomp_len] */
    unsigned short seccomp_len;  /* 0: no filter */
};

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
    int share_files;
    int share_from;
    long child_pid;
    const struct pyclone3_sandbox *sandbox;  /* NULL: none */
};


/* The clone3-onto-a-stack trampoline exists for these architectures only
 * (_spawn_child.c); elsewhere SPAWN_CLONE3 fails with ENOSYS. */
#if defined(__x86_64__) || defined(__aarch64__)
# define HAVE_CLONE3_STACK 1
#else
# define HAVE_CLONE3_STACK 0
#endif
static const int HAS_CLONE3_SPAWN = HAVE_CLONE3_STACK;

/* One byte and room for one SCM_RIGHTS fd: the pidfd a child sends. */
union pidfd_control {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
};

static inline void pidfd_msg_init(struct msghdr *msg, struct iovec *iov, char *byte,
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

/* ---- shared between the translation units, not exposed to Python -------- */

/* The child's whole life after clone: setup, then exec; never returns. */
__attribute__((noreturn))
void pyclone3_child_fail(struct pyclone3_spawn *s, int step, int err);
/* The sandbox steps, in three places of the child's setup (_sandbox_child.c). */
void pyclone3_sandbox_before_ids(struct pyclone3_spawn *s);
void pyclone3_sandbox_after_ids(struct pyclone3_spawn *s);
void pyclone3_sandbox_before_exec(struct pyclone3_spawn *s);
int pyclone3_spawn_child(void *arg);
#if HAVE_CLONE3_STACK
long pyclone3_clone3_stack(struct clone_args *args, size_t size,
                           int (*fn)(void *), void *arg);
#endif

/* Everything declared to Python in _clone3.cdef. */
long sys_clone3(struct clone_args *args, size_t size);
int pyclone3_set_child_subreaper(int on);
int pyclone3_get_child_subreaper(void);
int pyclone3_is_cgroup2(int fd);
int sys_pidfd_open(int pid, unsigned int flags);
int sys_pidfd_send_signal(int pidfd, int sig, void *info, unsigned int flags);
int sys_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);
int sys_waitid(int idtype, int id, struct pyclone3_waitinfo *info,
               int options, struct pyclone3_rusage *ru);
int sys_waitid_into(int idtype, int id, struct pyclone3_waitbuf *buf, int options);
int sys_setns(int fd, int nstype);
int sys_landlock_create_ruleset(const void *attr, size_t size, uint32_t flags);
int sys_landlock_add_rule(int ruleset_fd, int rule_type, const void *attr, uint32_t flags);
int sys_close_range(unsigned int first, unsigned int last, unsigned int flags);
int sys_pidfd_get_info(int pidfd, struct pidfd_info *info);
int pyclone3_reap_exited(int *fds, int n, struct pollfd *pfds, int *where,
                         int *reaped, struct pyclone3_waitinfo *info,
                         struct pyclone3_rusage *ru);
long fork_clone3(struct clone_args *args, size_t size);
long fork_with_hooks(void);
long probe_clone3(uint64_t flags, int *pidfd);
int pyclone3_child_setup(struct pyclone3_spawn *s);
void pyclone3_child_exec(struct pyclone3_spawn *s);
long pyclone3_spawn(struct pyclone3_spawn *s, int method, int clear_sighand,
                    char *stack, size_t stack_size, int *pidfd);
long pyclone3_fork(struct pyclone3_spawn *s);
int pyclone3_kill_and_reap(int pidfd, long pid, int kill_first);
int pyclone3_reap_cell(struct pyclone3_spawn *s, int *pidfd, int kill_first);
int pyclone3_error_pipe(int *cells);
int pyclone3_eventfd_cell(int *cell);
int pyclone3_pipe_cells(int *cells);
int pyclone3_socketpair_cells(int *cells);
void pyclone3_close_cells(int *cells, int n);
int pyclone3_write_file(const char *path, const char *data, size_t len);
int pyclone3_recv_pidfd_into(int sock, int *cell);
int pyclone3_recv_pidfd(int sock);
int pyclone3_set_argv(struct pyclone3_spawn *s, char **out, const char *blob, size_t len,
                      size_t n_argv, size_t n_paths);
int pyclone3_set_envp(struct pyclone3_spawn *s, char **out, const char *blob, size_t len,
                      size_t n);

#endif /* PYCLONE3_CLONE3_H */
