/* Workloads for the kernel side's guarantees: who is credited with a change, every exec,
 * slow growth under --min-delta. Each prints JSON lines {"what":..., ...} on stdout with
 * numbers read from its own /proc/self/status.
 *
 *   kernelload readers N        a writer thread maps then unmaps N regions of 64 MiB + i
 *                               pages (each a new peak, each unmap a latch) while two reader
 *                               threads take mmap_lock for reading in a loop (mincore,
 *                               reading /proc/self/maps)
 *   kernelload execveat MIB     maps and touches MIB MiB, then fexecve()s itself into
 *                               `kernelload report`
 *   kernelload thread-exec MIB  maps MIB MiB, then a second thread execve()s `kernelload report`
 *   kernelload report           maps 4 MiB, reports its VmPeak and exits
 *   kernelload brk KIB COUNT    grows the heap COUNT times by KIB KiB with sbrk, then reports
 *   kernelload grow MIB         maps and touches MIB MiB at a time, for ever (until killed)
 *   kernelload mremap-move      maps 1 MiB + 4 KiB at 512 KiB past a 2 MiB boundary with a
 *                               page mapped right above it, so that mremap() to 96 MiB must
 *                               move it; reports where it was and where it went
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "selfstatus.h"

static char *self_path;
static atomic_int done;

static void report(const char *what, long arg)
{
	printf("{\"what\": \"%s\", \"arg\": %ld, \"pid\": %d, \"tid\": %ld, \"vm_peak_kb\": %ld}\n",
	       what, arg, getpid(), (long)syscall(SYS_gettid), status_kb("VmPeak:"));
	fflush(stdout);
}

static void *reader(void *arg)
{
	(void)arg;
	long page = sysconf(_SC_PAGESIZE);
	unsigned char vec[4];
	char *probe = mmap(NULL, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char buf[65536];
	while (!atomic_load(&done)) {
		for (int i = 0; i < 50; i++)
			mincore(probe, page, vec);
		int fd = open("/proc/self/maps", O_RDONLY);
		if (fd >= 0) {
			while (read(fd, buf, sizeof(buf)) > 0)
				;
			close(fd);
		}
	}
	return NULL;
}

static void *writer(void *arg)
{
	long n = (long)arg;
	long page = sysconf(_SC_PAGESIZE);
	report("writer", n);
	for (long i = 0; i < n; i++) {
		size_t len = (64ul << 20) + (size_t)(i + 1) * page;
		char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			perror("mmap");
			exit(1);
		}
		munmap(p, len);
	}
	report("writer-done", n);
	return NULL;
}

static void *exec_thread(void *arg)
{
	(void)arg;
	report("exec-thread", 0);
	char *argv[] = {self_path, "report", NULL};
	execv(self_path, argv);
	perror("execv");
	exit(1);
}

static char *map_touched(long mib)
{
	size_t len = (size_t)mib << 20;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	for (size_t i = 0; i < len; i += 4096)
		p[i] = 1;
	return p;
}

int main(int argc, char **argv)
{
	static char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return 1;
	exe[n] = 0;
	self_path = exe;
	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "readers") && argc > 2) {
		pthread_t r1, r2, w;
		pthread_create(&r1, NULL, reader, NULL);
		pthread_create(&r2, NULL, reader, NULL);
		usleep(20000);
		pthread_create(&w, NULL, writer, (void *)atol(argv[2]));
		pthread_join(w, NULL);
		atomic_store(&done, 1);
		pthread_join(r1, NULL);
		pthread_join(r2, NULL);
		report("done", 0);
		return 0;
	}
	if (!strcmp(mode, "execveat") && argc > 2) {
		map_touched(atol(argv[2]));
		report("before-exec", 0);
		int fd = open(exe, O_RDONLY | O_CLOEXEC);
		char *args[] = {exe, "report", NULL};
		extern char **environ;
		syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH);
		perror("execveat");
		return 1;
	}
	if (!strcmp(mode, "thread-exec") && argc > 2) {
		map_touched(atol(argv[2]));
		report("before-exec", 0);
		pthread_t t;
		pthread_create(&t, NULL, exec_thread, NULL);
		pthread_join(t, NULL);  /* never returns: the exec replaces the process */
		return 1;
	}
	if (!strcmp(mode, "report")) {
		report("new-image-start", 0);  /* stdout's buffer is allocated by now */
		map_touched(4);
		report("new-image", 0);
		return 0;
	}
	if (!strcmp(mode, "brk") && argc > 3) {
		long kib = atol(argv[2]), count = atol(argv[3]);
		report("brk-start", 0);
		for (long i = 0; i < count; i++) {
			if (sbrk(kib << 10) == (void *)-1) {
				perror("sbrk");
				return 1;
			}
		}
		report("brk-done", count);
		return 0;
	}
	if (!strcmp(mode, "grow") && argc > 2) {
		long mib = atol(argv[2]);
		report("grow-start", mib);
		for (;;) {
			map_touched(mib);
			report("grew", mib);
		}
	}
	if (!strcmp(mode, "mremap-move")) {
		const uintptr_t huge = 2 << 20;
		size_t small = (1 << 20) + 4096, big = (size_t)96 << 20;
		char *hole = mmap(NULL, 8 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (hole == MAP_FAILED)
			return 1;
		munmap(hole, 8 << 20);
		char *want = (char *)((((uintptr_t)hole + huge - 1) & ~(huge - 1)) + (512 << 10));
		int fixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
		char *a = mmap(want, small, PROT_READ | PROT_WRITE, fixed, -1, 0);
		char *guard = mmap(want + small, 4096, PROT_NONE, fixed, -1, 0);
		if (a != want || guard != want + small)
			return 1;
		char *moved = mremap(a, small, big, MREMAP_MAYMOVE);
		if (moved == MAP_FAILED || moved == a)
			return 1;
		printf("{\"what\": \"moved\", \"pid\": %d, \"old\": \"0x%" PRIxPTR "\", "
		       "\"new\": \"0x%" PRIxPTR "\"}\n",
		       getpid(), (uintptr_t)a, (uintptr_t)moved);
		fflush(stdout);
		return 0;
	}
	fprintf(stderr, "usage: kernelload readers N | execveat MIB | thread-exec MIB | report | "
			"brk KIB COUNT | grow MIB | mremap-move\n");
	return 2;
}
