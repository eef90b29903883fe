/* Workloads for the hardening tests (tests/integration/test_hardening.py) and the soak
 * (scripts/soak). Each prints JSON lines with what it read from its own
 * /proc/self/status, so the tests compare vmtrace with the kernel's numbers.
 *
 *   hardload wait MODE ...   print {"what":"ready"}, wait for a line on stdin, then MODE
 *   hardload big MIB         map MIB MiB (touch 1 MiB), report "big", exit
 *   hardload exec MIB NEW    map MIB MiB, report "pre-exec", exec `hardload big NEW`
 *   hardload threads ROUNDS N  ROUNDS times: start N threads (each maps a few MiB, unmaps
 *                          it, exits), join them; then one round of growing maps; report
 *   hardload churn           start and join threads (each maps and unmaps) until stdin has
 *                          a line, then map 256 MiB in a thread, join, report "churn-done"
 *   hardload flood THREADS MS [RATE [MIN]]  THREADS threads each mmap+munmap 64 KiB in a
 *                          loop for MS ms (and on, until MIN iterations in all), at most
 *                          RATE iterations/s each (0 or absent: no limit); report "flood"
 *                          with the iteration count and VmPeak (MS 0: until stdin is
 *                          closed or has a line)
 *   hardload hold            report, then wait for a line on stdin, exit
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "selfstatus.h"

static void report(const char *what, long arg)
{
	char line[512];
	int n = snprintf(line, sizeof(line),
			 "{\"what\":\"%s\",\"arg\":%ld,\"pid\":%d,\"tid\":%d,\"ts_ns\":%llu,"
			 "\"vm_peak_kb\":%ld,\"vm_size_kb\":%ld}\n",
			 what, arg, getpid(), gettid(), now_ns(), status_kb("VmPeak:"),
			 status_kb("VmSize:"));
	if (write(1, line, n) != n)
		exit(3);
}

static void *map_touch(size_t len, size_t touch)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		exit(4);
	for (size_t off = 0; off < touch && off < len; off += 4096)
		p[off] = 1;
	return p;
}

static int stdin_has_line(void)
{
	struct pollfd pfd = {.fd = 0, .events = POLLIN};
	return poll(&pfd, 1, 0) > 0;
}

/* ---- threads ----------------------------------------------------------------------- */

static void *short_thread(void *arg)
{
	size_t len = (size_t)(long)arg << 20;
	char *p = map_touch(len, 4096);
	munmap(p, len);
	return NULL;
}

static void *keep_thread(void *arg)
{
	size_t len = (size_t)(long)arg << 20;
	map_touch(len, 4096); /* kept: raises VmPeak while the threads are alive */
	return NULL;
}

static void run_threads(long rounds, long n, void *(*fn)(void *), long base_mib)
{
	pthread_t tids[64];
	if (n > 64)
		n = 64;
	for (long r = 0; r < rounds; r++) {
		for (long i = 0; i < n; i++)
			if (pthread_create(&tids[i], NULL, fn, (void *)(base_mib + (i % 4))) != 0)
				exit(8);
		for (long i = 0; i < n; i++)
			pthread_join(tids[i], NULL);
	}
}

/* ---- flood ------------------------------------------------------------------------- */

static atomic_int flood_stop;
static atomic_long flood_iters;
static long flood_rate; /* iterations per second per thread; 0: as fast as possible */
static long flood_min;  /* iterations in all before stopping, however slow the machine */
static atomic_long flood_progress;

static void pace(long done, unsigned long long t0)
{
	if (flood_rate <= 0 || done % 64)
		return;
	unsigned long long due = t0 + (unsigned long long)done * 1000000000ull / flood_rate;
	unsigned long long now = now_ns();
	if (due > now)
		usleep((useconds_t)((due - now) / 1000));
}

static void *flood_thread(void *arg)
{
	(void)arg;
	long local = 0;
	unsigned long long t0 = now_ns();
	while (!atomic_load_explicit(&flood_stop, memory_order_relaxed)) {
		pace(local, t0);
		void *p = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			       -1, 0);
		if (p == MAP_FAILED)
			exit(4);
		munmap(p, 65536);
		if (++local % 256 == 0)
			atomic_fetch_add_explicit(&flood_progress, 256, memory_order_relaxed);
	}
	atomic_fetch_add(&flood_iters, local);
	return NULL;
}

static void flood(long nthreads, long ms)
{
	pthread_t tids[64];
	if (nthreads > 64)
		nthreads = 64;
	for (long i = 0; i < nthreads; i++)
		if (pthread_create(&tids[i], NULL, flood_thread, NULL) != 0)
			exit(8);
	if (ms > 0) {
		usleep((useconds_t)ms * 1000);
	} else {
		char c;
		(void)!read(0, &c, 1); /* a line, or EOF */
	}
	while (atomic_load(&flood_progress) < flood_min)
		usleep(10000);
	atomic_store(&flood_stop, 1);
	for (long i = 0; i < nthreads; i++)
		pthread_join(tids[i], NULL);
	report("flood", atomic_load(&flood_iters));
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int a = 1;
	if (strcmp(argv[1], "wait") == 0) {
		char c;
		report("ready", 0);
		if (read(0, &c, 1) != 1)
			return 5;
		a = 2;
	}
	const char *mode = argv[a];
	long n1 = argc > a + 1 ? atol(argv[a + 1]) : 0;
	long n2 = argc > a + 2 ? atol(argv[a + 2]) : 0;
	long n3 = argc > a + 3 ? atol(argv[a + 3]) : 0;
	status_kb("VmPeak:");

	if (strcmp(mode, "big") == 0) {
		map_touch((size_t)n1 << 20, 1 << 20);
		report("big", n1);
		return 0;
	}
	if (strcmp(mode, "exec") == 0) {
		map_touch((size_t)n1 << 20, 1 << 20);
		report("pre-exec", n1);
		char arg[32];
		snprintf(arg, sizeof(arg), "%ld", n2);
		execl("/proc/self/exe", argv[0], "big", arg, (char *)NULL);
		return 6;
	}
	if (strcmp(mode, "threads") == 0) {
		run_threads(n1, n2, short_thread, 1);
		report("threads-churned", n1 * n2);
		run_threads(1, n2, keep_thread, 8);
		report("threads-done", n1 * n2);
		return 0;
	}
	if (strcmp(mode, "churn") == 0) {
		long rounds = 0;
		while (!stdin_has_line()) {
			run_threads(1, 8, short_thread, 1);
			rounds++;
		}
		run_threads(1, 1, keep_thread, 256);
		report("churn-done", rounds);
		return 0;
	}
	if (strcmp(mode, "flood") == 0) {
		flood_rate = n3;
		flood_min = argc > a + 4 ? atol(argv[a + 4]) : 0;
		flood(n1, n2);
		return 0;
	}
	if (strcmp(mode, "hold") == 0) {
		char c;
		report("hold", 0);
		(void)!read(0, &c, 1);
		return 0;
	}
	return 2;
}
