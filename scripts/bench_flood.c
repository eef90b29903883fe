/* Flood workload for scripts/bench: many total_vm changes per second from several threads, with
 * VmPeak rises and hiwater latches among them that must not be lost.
 *
 *   bench_flood [SECONDS [THREADS [LEN]]]        defaults: 30 s, 3 threads, 16384 bytes
 *
 * THREADS threads mmap and munmap LEN anonymous bytes in a tight loop (two total_vm changes per
 * iteration) for SECONDS. Meanwhile the main thread, once a second, maps a PROT_NONE reservation
 * 64 MiB larger than the previous one (a new VmPeak, since the previous peak was the previous
 * reservation plus at most THREADS small regions), reads VmPeak from /proc/self/status, keeps it
 * half a second and unmaps it (hiwater_vm latches).
 *
 * Everything is printed on stderr (scripts/bench_hold.c points stdout at /dev/null):
 *   flood_vmpeak_kb K        once per reservation: the VmPeak read right after mapping it
 *   flood_reservations N
 *   flood_changes C          total_vm changes made: 2 per small iteration + 2 per reservation
 *   flood_seconds S          wall time from the first thread's start to the last one's end
 *   flood_final_vmpeak_kb K  VmPeak read once every thread has stopped
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define STEP (64L << 20)
#define MAX_THREADS 64

static atomic_int stop;
static size_t len = 16384;

struct worker {
    pthread_t thread;
    long iterations;
    int failed;
};

static void *flood(void *arg)
{
    struct worker *w = arg;
    long n = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED || munmap(p, len) != 0) {
            w->failed = 1;
            break;
        }
        n++;
    }
    w->iterations = n;
    return NULL;
}

/* VmPeak in kB from /proc/self/status, read without stdio so that no buffer is allocated. */
static long vmpeak_kb(void)
{
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got <= 0)
        return -1;
    buf[got] = '\0';
    char *at = strstr(buf, "\nVmPeak:");
    return at ? strtol(at + 8, NULL, 10) : -1;
}

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long seconds = argc > 1 ? atol(argv[1]) : 30;
    int threads = argc > 2 ? atoi(argv[2]) : 3;
    if (argc > 3)
        len = (size_t)atol(argv[3]);
    if (seconds <= 0 || threads <= 0 || threads > MAX_THREADS || len == 0) {
        fprintf(stderr, "usage: %s [SECONDS [THREADS (1-%d) [LEN]]]\n", argv[0], MAX_THREADS);
        return 2;
    }
    static struct worker workers[MAX_THREADS];
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&workers[i].thread, NULL, flood, &workers[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    long reservations = 0;
    for (long i = 0; i < seconds; i++) {
        size_t size = (size_t)(i + 1) * STEP;
        void *r = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (r == MAP_FAILED) {
            perror("mmap reservation");
            break;
        }
        reservations++;
        fprintf(stderr, "flood_vmpeak_kb %ld\n", vmpeak_kb());
        nap(500);
        munmap(r, size);
        nap(500);
    }
    atomic_store(&stop, 1);
    long changes = 2 * reservations;
    int failed = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(workers[i].thread, NULL);
        changes += 2 * workers[i].iterations;
        failed |= workers[i].failed;
    }
    double t1 = now();
    fprintf(stderr, "flood_reservations %ld\nflood_changes %ld\nflood_seconds %.3f\n",
            reservations, changes, t1 - t0);
    fprintf(stderr, "flood_final_vmpeak_kb %ld\n", vmpeak_kb());
    if (failed)
        fprintf(stderr, "flood: a small mmap/munmap failed\n");
    return failed ? 1 : 0;
}
