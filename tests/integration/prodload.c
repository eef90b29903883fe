/* Workloads for the production-scope tests (tests/integration/test_production.py).
 * Each prints JSON lines with what it read from its own /proc/self/status, so the tests
 * compare vmtrace with the kernel's numbers, not with expectations written by hand.
 *
 *   prodload family       parent maps 64 MiB, forks child A (maps 200 MiB) and child B
 *                         (execs `prodload big 300`), waits for both
 *   prodload big MIB      maps and touches MIB MiB, reports, exits
 *   prodload sizes        maps what VmPeak is above VmSize ("filled"), then ten 8 KiB mmaps
 *                         (each a small peak), then one of 128 MiB (a large one)
 *   prodload hwm MIB      touches MIB MiB in 1 MiB steps, reporting VmHWM after each
 *   prodload hwm-reset MIB  touches MIB MiB, drops it (MADV_DONTNEED), writes 5 to
 *                         /proc/self/clear_refs (VmHWM falls to RSS), waits 1.5 s
 *   prodload wait ...     like the above, after a line on stdin (for attach tests)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "selfstatus.h"

static void report(const char *what, long arg)
{
	char line[512];
	int n = snprintf(line, sizeof(line),
			 "{\"what\":\"%s\",\"arg\":%ld,\"pid\":%d,\"tid\":%d,\"ts_ns\":%llu,"
			 "\"vm_peak_kb\":%ld,\"vm_size_kb\":%ld,\"vm_hwm_kb\":%ld,\"vm_rss_kb\":%ld}\n",
			 what, arg, getpid(), gettid(), now_ns(), status_kb("VmPeak:"),
			 status_kb("VmSize:"), status_kb("VmHWM:"), status_kb("VmRSS:"));
	if (write(1, line, n) != n)
		exit(3);
}

static void *map_touch(long mib, long touch_mib)
{
	size_t len = (size_t)mib << 20;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		exit(4);
	for (size_t off = 0; off < ((size_t)touch_mib << 20); off += 4096)
		p[off] = 1;
	return p;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int arg0 = 1;
	if (strcmp(argv[1], "wait") == 0) {
		char c;
		report("ready", 0);
		if (read(0, &c, 1) != 1)
			return 5;
		arg0 = 2;
	}
	const char *mode = argv[arg0];
	long n = argc > arg0 + 1 ? atol(argv[arg0 + 1]) : 0;
	status_kb("VmPeak:"); /* warm up: the first read may allocate nothing, but be sure */

	if (strcmp(mode, "big") == 0) {
		map_touch(n, 4);
		report("big", n);
		return 0;
	}
	if (strcmp(mode, "sizes") == 0) {
		/* VmPeak may be above VmSize already (ld.so latched hiwater_vm when it unmapped its
		 * cache; by how much depends on the system): map the difference first, so that
		 * each small mmap below raises total_vm, and with it VmPeak, whatever the kernel's
		 * placement (a merged or a new vma: total_vm grows by the same pages). */
		long gap = status_kb("VmPeak:") - status_kb("VmSize:");
		if (gap > 0 && mmap(NULL, (size_t)gap << 10, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED)
			exit(4);
		report("filled", gap);
		for (int i = 0; i < 10; i++) {
			mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			report("small", 8);
		}
		map_touch(128, 1);
		report("large", 128 << 10);
		return 0;
	}
	if (strcmp(mode, "hwm") == 0) {
		char *p = map_touch(n, 0);
		report("hwm-start", 0);
		for (long i = 0; i < n; i++) {
			for (long off = 0; off < (1 << 20); off += 4096)
				p[(i << 20) + off] = 1;
		}
		report("hwm-done", n);
		return 0;
	}
	if (strcmp(mode, "hwm-reset") == 0) {
		char *p = map_touch(n, n);
		report("touched", n);
		madvise(p, (size_t)n << 20, MADV_DONTNEED);
		int fd = open("/proc/self/clear_refs", O_WRONLY);
		if (fd < 0 || write(fd, "5", 1) != 1)
			return 7;
		close(fd);
		report("reset", n);
		usleep(1500000);
		report("after", n);
		return 0;
	}
	if (strcmp(mode, "family") == 0) {
		map_touch(64, 1);
		report("parent-64", 64);
		pid_t a = fork();
		if (a == 0) {
			map_touch(200, 2);
			report("child-a-200", 200);
			_exit(0);
		}
		waitpid(a, NULL, 0);
		pid_t b = fork();
		if (b == 0) {
			execl("/proc/self/exe", argv[0], "big", "300", (char *)NULL);
			_exit(6);
		}
		waitpid(b, NULL, 0);
		report("parent-done", 0);
		return 0;
	}
	return 2;
}
