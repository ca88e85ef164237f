/* A static program that waits for a signal for ever: a live child that
 * costs the machine almost nothing, for benchmarks that hold thousands. */
void _start(void)
{
    for (;;) {
#if defined(__x86_64__)
        __asm__ volatile("movl $34, %%eax\n\tsyscall" ::: "rax", "rcx", "r11", "memory");
#elif defined(__aarch64__)
        /* no pause(2) here: ppoll(NULL, 0, NULL, NULL) sleeps the same way */
        __asm__ volatile("mov x8, #73\n\tmov x0, #0\n\tmov x1, #0\n\tmov x2, #0\n\tmov x3, #0\n\t"
                         "svc #0" ::: "x0", "x1", "x2", "x3", "x8", "memory");
#else
# error "pause.c: add this architecture's pause"
#endif
    }
}
