/* Shared by the test workloads (prodload.c, hardload.c): what a process reads of itself,
 * so the tests compare vmtrace with the kernel's own numbers. */
#ifndef VMTRACE_TEST_SELFSTATUS_H
#define VMTRACE_TEST_SELFSTATUS_H

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A field of /proc/self/status in kB, -1 if absent. The buffer is on the stack (threads
 * read it concurrently) and nothing is allocated: a read must not move VmPeak. */
static long status_kb(const char *key)
{
	char buf[8192];
	int fd = open("/proc/self/status", O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strstr(buf, key);
	return p ? strtol(p + strlen(key) + 1, NULL, 10) : -1;
}

/* CLOCK_MONOTONIC: the clock of the log's ts_ns (bpf_ktime_get_ns). */
static unsigned long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

#endif
