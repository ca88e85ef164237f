/* A static program that exits at once: no ld.so, no libc start-up, so a
 * spawn benchmark measures the spawning machinery, not the program. */
void _start(void)
{
#if defined(__x86_64__)
    __asm__ volatile("movl $231, %eax\n\txorl %edi, %edi\n\tsyscall");
#elif defined(__aarch64__)
    __asm__ volatile("mov x8, #94\n\tmov x0, #0\n\tsvc #0");
#else
# error "noop.c: add this architecture's exit_group"
#endif
    for (;;)
        ;
}
