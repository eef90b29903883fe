/* Benchmark loop for scripts/bench: N times mmap 64 KiB anonymous, touch each page, munmap.
 *
 *   bench_loop [--wait-stdin] [N]        N defaults to 200000
 *
 * --wait-stdin: print "ready <pid>" on stdout, then wait for a line (or EOF) on stdin before the
 * loop starts, so that a tracer can attach first. At the end it prints
 * "elapsed <seconds> iterations <N>" on stdout: CLOCK_MONOTONIC around the loop only.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LEN (64 * 1024)

int main(int argc, char **argv)
{
    long n = 200000;
    int wait_stdin = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait-stdin") == 0) {
            wait_stdin = 1;
        } else {
            char *end;
            n = strtol(argv[i], &end, 10);
            if (*end || n <= 0) {
                fprintf(stderr, "usage: %s [--wait-stdin] [ITERATIONS]\n", argv[0]);
                return 2;
            }
        }
    }
    long page = sysconf(_SC_PAGESIZE);

    if (wait_stdin) {
        printf("ready %d\n", (int)getpid());
        fflush(stdout);
        char line[64];
        (void)fgets(line, sizeof line, stdin);
    }

    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        volatile char *p =
            mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        for (long off = 0; off < LEN; off += page)
            p[off] = (char)i;
        if (munmap((void *)p, LEN) != 0) {
            perror("munmap");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("elapsed %.6f iterations %ld\n", secs, n);
    fflush(stdout);
    return 0;
}
