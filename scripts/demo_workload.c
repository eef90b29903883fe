/* Demo workload for scripts/demo: a few clearly different changes of VmPeak over ~3 seconds.
 *
 *   1. mmap 256 MiB anonymous, touch every page      -> VmPeak +256 MiB  (peak, cause mmap)
 *   2. munmap it                                      -> VmPeak stays     (latch + shrink)
 *   3. malloc 64 MiB from the brk heap, touch it      -> below the peak   (grow, cause brk)
 *   4. a thread "mapper" maps 512 MiB and keeps it    -> VmPeak up again  (peak, other tid)
 *   5. deep recursion, 1 MiB stack frames             -> VmPeak creeps up (peaks, stack-growth)
 *
 * Each step prints what it does to stderr. Build: gcc -O1 -pthread -fno-stack-clash-protection
 * (without stack-clash probes each frame grows the stack in one fault instead of 256).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MiB (1024UL * 1024UL)
#define FRAME (1 * MiB)

static struct timespec t0;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double t = (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[workload %d +%.2fs] %s\n", (int)getpid(), t, buf);
}

static long vm_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

static void status(void)
{
    say("    now VmPeak %ld kB, VmSize %ld kB, VmStk %ld kB", vm_kb("VmPeak"), vm_kb("VmSize"),
        vm_kb("VmStk"));
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void touch(char *p, size_t len)
{
    long page = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < len; i += (size_t)page)
        p[i] = 1;
}

static void *mapper(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "mapper"); /* its comm in the trace */
    say("step 4: thread 'mapper' maps 512 MiB (kept until exit)");
    char *p = mmap(NULL, 512 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap 512 MiB");
        exit(1);
    }
    touch(p, 16 * MiB); /* only part of it: total_vm counts the whole mapping anyway */
    return p;
}

/* Each level puts a 1 MiB array on the stack and writes its lowest byte first, so the kernel
 * grows the stack VMA by ~1 MiB in a single page fault. */
static int __attribute__((noinline)) recurse(int depth)
{
    volatile char frame[FRAME];
    frame[0] = (char)depth;
    frame[FRAME - 1] = (char)depth;
    if (depth <= 1)
        return frame[0];
    int r = recurse(depth - 1);
    return r + frame[FRAME - 1];
}

int main(void)
{
    clock_gettime(CLOCK_MONOTONIC, &t0);
    say("start");
    status();
    pause_ms(300);

    /* 1 */
    say("step 1: mmap 256 MiB anonymous and touch every page");
    size_t big = 256 * MiB;
    char *p = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap 256 MiB");
        return 1;
    }
    touch(p, big);
    status();
    pause_ms(400);

    /* 2 */
    say("step 2: munmap the 256 MiB (VmPeak keeps its value)");
    munmap(p, big);
    status();
    pause_ms(400);

    /* 3 */
    say("step 3: malloc 64 MiB from the brk heap (below the peak: no new peak)");
    mallopt(M_MMAP_MAX, 0); /* make malloc grow the heap with brk instead of mmap */
    char *h = malloc(64 * MiB);
    if (!h) {
        perror("malloc 64 MiB");
        return 1;
    }
    touch(h, 64 * MiB);
    status();
    pause_ms(400);

    /* 4 */
    pthread_t th;
    void *thread_map = NULL;
    if (pthread_create(&th, NULL, mapper, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    pthread_join(th, &thread_map);
    status();
    pause_ms(400);

    /* 5 */
    struct rlimit rl;
    int depth = 6;
    if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        long room = (long)(rl.rlim_cur / FRAME) - 2; /* leave ~2 MiB for what is already used */
        if (room < depth)
            depth = room > 0 ? (int)room : 0;
    }
    say("step 5: recursion %d levels deep, 1 MiB of stack per level", depth);
    if (depth > 0)
        (void)recurse(depth);
    status();
    pause_ms(400);

    say("done: exiting (VmPeak %ld kB)", vm_kb("VmPeak"));
    free(h);
    (void)thread_map;
    return 0;
}
