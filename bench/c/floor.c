/* The C floor for one spawn + wait: what the machinery costs with no Python.
 *
 *   floor posix_spawn PROGRAM N   glibc posix_spawn (clone3 CLONE_VM|CLONE_VFORK
 *                                  inside, glibc >= 2.34) + waitpid
 *   floor clone PROGRAM N          clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD)
 *                                  + execve + waitid(P_PIDFD) + close(pidfd)
 *   floor clone_nopidfd PROGRAM N  the same without a pidfd: + waitpid
 * Prints the median nanoseconds per spawn+wait. Built with -shared, the same
 * loop is floor_median(method, program, n), for running it inside the Python
 * process under test (same address space, same process context). */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
# define CLONE_PIDFD 0x1000
#endif
#ifndef P_PIDFD
# define P_PIDFD 3
#endif

extern char **environ;
static char *argv_[2];
static char stack[64 * 1024];

static int child(void *arg)
{
    (void)arg;
    syscall(SYS_execve, argv_[0], argv_, environ);
    syscall(SYS_exit_group, 127);
    return 127;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

long long floor_median(const char *method, char *program, int n)
{
    int i;
    long long *t, median;
    argv_[0] = program;
    t = calloc((size_t)n, sizeof(*t));
    if (!t)
        return -1;
    for (i = 0; i < n; i++) {
        long long start = now_ns();
        if (strcmp(method, "posix_spawn") == 0) {
            pid_t pid;
            int status;
            if (posix_spawn(&pid, argv_[0], NULL, NULL, argv_, environ) != 0)
                return -1;
            waitpid(pid, &status, 0);
        } else if (strcmp(method, "clone_nopidfd") == 0) {
            int status;
            pid_t pid = clone(child, stack + sizeof(stack), CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
            if (pid < 0)
                return -1;
            waitpid(pid, &status, 0);
        } else {
            int pidfd = -1;
            siginfo_t si;
            pid_t pid = clone(child, stack + sizeof(stack),
                              CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, NULL, &pidfd);
            if (pid < 0)
                return -1;
            syscall(SYS_waitid, P_PIDFD, pidfd, &si, WEXITED, NULL);
            close(pidfd);
        }
        t[i] = now_ns() - start;
    }
    qsort(t, (size_t)n, sizeof(*t), cmp);
    median = t[n / 2];
    free(t);
    return median;
}

#ifndef FLOOR_LIBRARY
int main(int argc, char **argv)
{
    long long median;
    if (argc != 4)
        return 2;
    median = floor_median(argv[1], argv[2], atoi(argv[3]));
    if (median < 0)
        return 1;
    printf("%lld\n", median);
    return 0;
}
#endif
