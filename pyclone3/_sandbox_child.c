/*
 * The sandbox steps of the child: resource limits, nice, oom_score_adj, CPU
 * affinity, capabilities, no_new_privs, Landlock and a seccomp filter, set
 * on itself just before exec from what the parent prepared
 * (struct pyclone3_sandbox, made by pyclone3/_sandbox_plan.py).
 *
 * Like everything between clone and exec (see _spawn_child.c), this is
 * async-signal-safe: raw syscalls on prepared data, no allocation, no
 * library state. A failed step ends the child through pyclone3_child_fail,
 * which reports the step (and a detail: which rlimit, which capability)
 * and errno to the parent: the program never runs half set up.
 *
 * The order, which docs/api.rst documents:
 *   before the id change (uid, gid, groups): rlimits, nice, oom_score_adj,
 *       CPU affinity, capabilities; each may need a privilege the id change
 *       gives up;
 *   after it and pdeathsig: the ambient capabilities (a change to a
 *       non-root uid clears the ambient set, whatever KEEPCAPS says), then
 *       no_new_privs, then Landlock (which needs no_new_privs or
 *       CAP_SYS_ADMIN);
 *   after close_fds, right before execve: the seccomp filter, so that it
 *       need allow only execve, write and exit_group, not our setup.
 */
#include "_clone3.h"

#ifndef SYS_seccomp
# error "pyclone3: these kernel headers lack SYS_seccomp"
#endif
#ifndef PR_CAPBSET_READ
# define PR_CAPBSET_READ 23
#endif
#ifndef PR_CAPBSET_DROP
# define PR_CAPBSET_DROP 24
#endif
#ifndef PR_SET_NO_NEW_PRIVS
# define PR_SET_NO_NEW_PRIVS 38
#endif
#ifndef PR_CAP_AMBIENT
# define PR_CAP_AMBIENT 47                   /* Linux 4.3 */
#endif
#ifndef PR_CAP_AMBIENT_RAISE
# define PR_CAP_AMBIENT_RAISE 2
#endif
#ifndef PR_CAP_AMBIENT_CLEAR_ALL
# define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef PR_SET_KEEPCAPS
# define PR_SET_KEEPCAPS 8
#endif
#define CHILD_SECCOMP_SET_MODE_FILTER 1
#define CHILD_CAP_VERSION_3 0x20080522
#define CHILD_CAPS_DETAIL 255               /* capset or the ambient set */
#define CHILD_KEEPCAPS_DETAIL 254           /* PR_SET_KEEPCAPS */

/* The kernel's struct sock_fprog and capget/capset structs, declared here
 * so as not to pull <linux/filter.h> and <linux/capability.h> in. */
struct child_sock_fprog {
    unsigned short len;
    const void *filter;
};
struct child_cap_header {
    uint32_t version;
    int pid;
};
struct child_cap_data {
    uint32_t effective;
    uint32_t permitted;
    uint32_t inheritable;
};

#define FAIL(s, step, detail) \
    pyclone3_child_fail((s), (step) | ((detail) << SPAWN_ERR_DETAIL_SHIFT), errno)

/* Drop the capabilities in sb->cap_drop from the bounding and inheritable
 * sets, put those of sb->cap_ambient in the inheritable set (the ambient
 * set takes only what is permitted and inheritable) and clear the ambient
 * set: after exec, a root child holds only what is left in the bounding
 * set, and a non-root one only the ambient capabilities raised after the
 * id change, and what its file capabilities give within the bounding set.
 * A capability already out of the bounding set is skipped, as dropping it
 * again would need CAP_SETPCAP. */
static void child_set_caps(struct pyclone3_spawn *s, const struct pyclone3_sandbox *sb)
{
    struct child_cap_header header = {CHILD_CAP_VERSION_3, 0};
    struct child_cap_data data[2];
    uint32_t inheritable[2];
    int cap, i;

    for (cap = 0; cap < 64; cap++) {
        long in_set;
        if (!(sb->cap_drop & ((uint64_t)1 << cap)))
            continue;
        in_set = syscall(SYS_prctl, PR_CAPBSET_READ, cap, 0, 0, 0);
        if (in_set == 1 && syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            FAIL(s, SPAWN_ERR_CAPS, cap);
    }
    if (syscall(SYS_capget, &header, data) < 0)
        FAIL(s, SPAWN_ERR_CAPS, CHILD_CAPS_DETAIL);
    for (i = 0; i < 2; i++)
        inheritable[i] = (data[i].inheritable & ~(uint32_t)(sb->cap_drop >> (32 * i))) |
                         (uint32_t)(sb->cap_ambient >> (32 * i));
    if (inheritable[0] != data[0].inheritable || inheritable[1] != data[1].inheritable) {
        data[0].inheritable = inheritable[0];
        data[1].inheritable = inheritable[1];
        if (syscall(SYS_capset, &header, data) < 0)
            FAIL(s, SPAWN_ERR_CAPS, CHILD_CAPS_DETAIL);
    }
    /* EINVAL: a kernel before 4.3, which has no ambient set to clear (and
     * none to raise in: that fails with the raise, after the id change). */
    if (syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 &&
        errno != EINVAL)
        FAIL(s, SPAWN_ERR_CAPS, CHILD_CAPS_DETAIL);
    /* Leaving uid 0 empties the permitted set unless KEEPCAPS is set, and
     * the raise needs them permitted. exec clears KEEPCAPS again. */
    if (sb->cap_ambient && s->uid >= 0 &&
        syscall(SYS_prctl, PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        FAIL(s, SPAWN_ERR_CAPS, CHILD_KEEPCAPS_DETAIL);
}

void pyclone3_sandbox_before_ids(struct pyclone3_spawn *s)
{
    const struct pyclone3_sandbox *sb = s->sandbox;
    int i;

    for (i = 0; i < sb->n_rlimits; i++) {
        const struct pyclone3_rlimit *r = &sb->rlimits[i];
        uint64_t lim[2] = {r->soft, r->hard};      /* struct rlimit64 */
        if (syscall(SYS_prlimit64, 0, r->resource, lim, NULL) < 0)
            FAIL(s, SPAWN_ERR_RLIMIT, i);
    }
    /* The raw syscall takes the nice value itself (only getpriority's
     * result is biased). */
    if (sb->set_nice && syscall(SYS_setpriority, PRIO_PROCESS, 0, sb->nice) < 0)
        FAIL(s, SPAWN_ERR_NICE, 0);
    if (sb->oom_score_adj_len > 0) {
        /* A vfork child's write changes its own score only, not that of
         * the parent whose memory it shares (the kernel checks vfork_done). */
        long fd = syscall(SYS_openat, AT_FDCWD, "/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            FAIL(s, SPAWN_ERR_OOM_SCORE_ADJ, 0);
        if (syscall(SYS_write, fd, sb->oom_score_adj, sb->oom_score_adj_len) !=
            sb->oom_score_adj_len) {
            int err = errno;
            syscall(SYS_close, fd);
            pyclone3_child_fail(s, SPAWN_ERR_OOM_SCORE_ADJ, err);
        }
        syscall(SYS_close, fd);
    }
    if (sb->cpu_mask_size > 0 &&
        syscall(SYS_sched_setaffinity, 0, sb->cpu_mask_size, sb->cpu_mask) < 0)
        FAIL(s, SPAWN_ERR_AFFINITY, 0);
    if (sb->drop_caps || sb->cap_ambient)
        child_set_caps(s, sb);
}

void pyclone3_sandbox_after_ids(struct pyclone3_spawn *s)
{
    const struct pyclone3_sandbox *sb = s->sandbox;
    int cap;

    for (cap = 0; cap < 64 && sb->cap_ambient; cap++) {
        if ((sb->cap_ambient & ((uint64_t)1 << cap)) &&
            syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
            FAIL(s, SPAWN_ERR_AMBIENT, cap);
    }
    if (sb->no_new_privs && syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        FAIL(s, SPAWN_ERR_NO_NEW_PRIVS, 0);
    if (sb->landlock_fd >= 0 && syscall(SYS_landlock_restrict_self, sb->landlock_fd, 0) < 0)
        FAIL(s, SPAWN_ERR_LANDLOCK, 0);
}

void pyclone3_sandbox_before_exec(struct pyclone3_spawn *s)
{
    const struct pyclone3_sandbox *sb = s->sandbox;

    if (sb->seccomp_len > 0) {
        struct child_sock_fprog prog = {sb->seccomp_len, sb->seccomp_filter};
        if (syscall(SYS_seccomp, CHILD_SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
            FAIL(s, SPAWN_ERR_SECCOMP, 0);
    }
}
