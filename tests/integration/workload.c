/* vmtrace integration workload: known address-space operations, each bracketed by the
 * process's own readings of /proc/self/status (VmPeak, VmSize, VmHWM) and CLOCK_MONOTONIC.
 *
 * For every step one JSON line goes to stdout (or to --out FILE):
 *   {"step", "pid", "tid", "t0_ns", "t1_ns", "peak_before_kb", "peak_after_kb",
 *    "size_before_kb", "size_after_kb", "hwm_before_kb", "hwm_after_kb",
 *    "cause", "len_kb", "expect", "expect_latch"}
 * `cause` is the cause vmtrace should report (docs/log-schema.md), `len_kb` the size of the
 * operation, `expect` is "peak", "no-peak" or "any" (what the step must do to VmPeak; it is
 * checked here against the readings), `expect_latch` tells that the step lowers total_vm while
 * the process is at its peak, so the kernel records hiwater_vm (a `latch` record).
 *
 * Inside a bracket nothing allocates except the step itself: /proc is read with open/read into
 * a static buffer, lines are formatted with snprintf into a static buffer and written with
 * write(2). The window [t0_ns, t1_ns] is taken *inside* the two /proc readings, so it covers the
 * operation only.
 *
 * Options: --out FILE (step lines go there), --wait-stdin (print {"ready": PID} on stdout and
 * wait for a line on stdin before the first step: lets a tracer attach).
 * Exit status 0, or 1 with a message on stderr when a step's readings contradict its expectation.
 *
 * Build: gcc -O0 -pthread -fno-stack-clash-protection -Wl,-z,now -o workload workload.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define KB 1024UL
#define MB (1024UL * 1024UL)

struct reading {
	long peak_kb;
	long size_kb;
	long hwm_kb;
};

struct bracket {
	const char *name;
	const char *cause;
	const char *expect; /* "peak", "no-peak", "any" */
	long len_kb;        /* size of the operation */
	long delta_kb;      /* expected VmSize change (checked unless delta_any) */
	long delta_tol_kb;  /* tolerance on delta_kb (stack growth) */
	int delta_any;      /* delta must be 0 or delta_kb (pthread stack cache) */
	int tid;
	struct reading before, after;
	uint64_t t0, t1;
};

static int out_fd = 1;
static char status_buf[16384];
static char line_buf[1024];
static long page_kb;

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("workload: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static long field_kb(const char *buf, const char *key)
{
	const char *p = strstr(buf, key);
	if (!p)
		die("no %s in /proc/self/status", key);
	p += strlen(key);
	while (*p == ' ' || *p == '\t')
		p++;
	return strtol(p, NULL, 10);
}

/* No allocation: open/read into a static buffer, strstr/strtol. */
static void read_status(struct reading *r)
{
	int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open /proc/self/status: %s", strerror(errno));
	size_t n = 0;
	for (;;) {
		ssize_t k = read(fd, status_buf + n, sizeof(status_buf) - 1 - n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			die("read /proc/self/status: %s", strerror(errno));
		}
		if (k == 0)
			break;
		n += (size_t)k;
		if (n >= sizeof(status_buf) - 1)
			break;
	}
	close(fd);
	status_buf[n] = '\0';
	r->peak_kb = field_kb(status_buf, "VmPeak:");
	r->size_kb = field_kb(status_buf, "VmSize:");
	r->hwm_kb = field_kb(status_buf, "VmHWM:");
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t k = write(fd, buf, len);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			die("write: %s", strerror(errno));
		}
		buf += k;
		len -= (size_t)k;
	}
}

static void begin(struct bracket *b, const char *name, const char *cause, const char *expect,
		  long len_kb, long delta_kb)
{
	memset(b, 0, sizeof(*b));
	b->name = name;
	b->cause = cause;
	b->expect = expect;
	b->len_kb = len_kb;
	b->delta_kb = delta_kb;
	b->tid = gettid();
	read_status(&b->before);
	b->t0 = now_ns();
}

static void end(struct bracket *b)
{
	b->t1 = now_ns();
	read_status(&b->after);

	long peak_up = b->after.peak_kb - b->before.peak_kb;
	long delta = b->after.size_kb - b->before.size_kb;
	/* a shrink made at the peak makes the kernel record hiwater_vm (latch) */
	int expect_latch = b->delta_kb < 0 && b->before.size_kb == b->before.peak_kb;

	int n = snprintf(line_buf, sizeof(line_buf),
			 "{\"step\": \"%s\", \"pid\": %d, \"tid\": %d, \"t0_ns\": %llu, \"t1_ns\": %llu, "
			 "\"peak_before_kb\": %ld, \"peak_after_kb\": %ld, "
			 "\"size_before_kb\": %ld, \"size_after_kb\": %ld, "
			 "\"hwm_before_kb\": %ld, \"hwm_after_kb\": %ld, "
			 "\"cause\": \"%s\", \"len_kb\": %ld, \"expect\": \"%s\", \"expect_latch\": %s}\n",
			 b->name, getpid(), b->tid, (unsigned long long)b->t0, (unsigned long long)b->t1,
			 b->before.peak_kb, b->after.peak_kb, b->before.size_kb, b->after.size_kb,
			 b->before.hwm_kb, b->after.hwm_kb, b->cause, b->len_kb, b->expect,
			 expect_latch ? "true" : "false");
	if (n < 0 || (size_t)n >= sizeof(line_buf))
		die("step %s: line too long", b->name);
	write_all(out_fd, line_buf, (size_t)n);

	/* the step's expectations, checked on its own readings */
	if (b->after.peak_kb < b->before.peak_kb)
		die("step %s: VmPeak went down %ld -> %ld kB", b->name, b->before.peak_kb,
		    b->after.peak_kb);
	if (strcmp(b->expect, "peak") == 0) {
		if (peak_up <= 0)
			die("step %s: expected VmPeak to rise, readings %ld -> %ld kB (VmSize %ld -> %ld)",
			    b->name, b->before.peak_kb, b->after.peak_kb, b->before.size_kb,
			    b->after.size_kb);
		if (b->after.peak_kb != b->after.size_kb)
			die("step %s: after a peak VmPeak %ld != VmSize %ld kB", b->name,
			    b->after.peak_kb, b->after.size_kb);
	} else if (strcmp(b->expect, "no-peak") == 0) {
		if (peak_up != 0)
			die("step %s: expected no VmPeak change, readings %ld -> %ld kB", b->name,
			    b->before.peak_kb, b->after.peak_kb);
	}
	if (b->delta_any) {
		if (delta != 0 && delta != b->delta_kb)
			die("step %s: VmSize changed by %ld kB, expected 0 or %ld", b->name, delta,
			    b->delta_kb);
	} else if (labs(delta - b->delta_kb) > b->delta_tol_kb) {
		die("step %s: VmSize changed by %ld kB, expected %ld (+-%ld)", b->name, delta,
		    b->delta_kb, b->delta_tol_kb);
	}
}

/* ---- stack growth ------------------------------------------------------------------------ */

#define FRAME_BYTES (64 * 1024)

static volatile long stack_sink;

/* Each frame holds a 64 KiB array whose lowest byte is written first: one fault per frame
 * extends the stack VMA down to it (built with -fno-stack-clash-protection). */
static __attribute__((noinline)) void recurse(int depth)
{
	volatile char frame[FRAME_BYTES];
	frame[0] = (char)depth;
	frame[FRAME_BYTES - 1] = (char)depth;
	if (depth > 1)
		recurse(depth - 1);
	stack_sink += frame[0] + frame[FRAME_BYTES - 1];
}

/* ---- threads ------------------------------------------------------------------------------- */

#define THREAD_MAP_BYTES (200 * MB)
#define NTHREADS 3

struct thread_arg {
	sem_t go;
	int index;
	void *map;
	struct bracket b;
};

static char thread_step_names[NTHREADS][32];

static void *thread_main(void *p)
{
	struct thread_arg *a = p;
	while (sem_wait(&a->go) != 0)
		;
	begin(&a->b, thread_step_names[a->index], "mmap", "peak", THREAD_MAP_BYTES / KB,
	      THREAD_MAP_BYTES / KB);
	char *m = mmap(NULL, THREAD_MAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	if (m != MAP_FAILED)
		for (size_t off = 0; off < THREAD_MAP_BYTES; off += 4096)
			m[off] = 1;
	end(&a->b);
	if (m == MAP_FAILED)
		die("thread %d: mmap: %s", a->index, strerror(errno));
	a->map = m; /* kept mapped: the next thread's mapping raises the peak again */
	return NULL;
}

/* ---- main ---------------------------------------------------------------------------------- */

static void usage(void)
{
	fputs("usage: workload [--out FILE] [--wait-stdin]\n", stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	int wait_stdin = 0;
	const char *out_path = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--wait-stdin") == 0)
			wait_stdin = 1;
		else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
			out_path = argv[++i];
		else
			usage();
	}
	if (out_path) {
		out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (out_fd < 0)
			die("open %s: %s", out_path, strerror(errno));
	}
	page_kb = sysconf(_SC_PAGESIZE) / 1024;

	/* warm-up: first /proc read, vDSO clock, snprintf, malloc's arena (pthread_create callocs
	 * the thread's dtv: with the heap set up now that never needs brk inside a step) */
	struct reading warm;
	read_status(&warm);
	(void)now_ns();
	snprintf(line_buf, sizeof(line_buf), "%ld %llu", warm.peak_kb, 1ULL);
	free(malloc(64));
	for (int i = 0; i < NTHREADS; i++)
		snprintf(thread_step_names[i], sizeof(thread_step_names[i]), "thread-%d-mmap-200m",
			 i + 1);

	struct rlimit rl;
	if (getrlimit(RLIMIT_STACK, &rl) != 0)
		die("getrlimit: %s", strerror(errno));
	long stack_bytes = 6 * MB;
	if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur - (long)MB < stack_bytes)
		stack_bytes = ((long)rl.rlim_cur - (long)MB) / FRAME_BYTES * FRAME_BYTES;
	if (stack_bytes < 4 * FRAME_BYTES)
		die("stack rlimit too small (%ld bytes)", (long)rl.rlim_cur);

	pthread_attr_t dattr;
	size_t tstack = 0, tguard = 0;
	if (pthread_getattr_default_np(&dattr) != 0)
		die("pthread_getattr_default_np failed");
	pthread_attr_getstacksize(&dattr, &tstack);
	pthread_attr_getguardsize(&dattr, &tguard);
	pthread_attr_destroy(&dattr);
	if (tstack == 0)
		tstack = 8 * MB; /* glibc: RLIMIT_STACK, or ARCH_STACK_DEFAULT_SIZE when unlimited */
	long tstack_kb = (long)((tstack + tguard) / KB);

	if (wait_stdin) {
		int n = snprintf(line_buf, sizeof(line_buf), "{\"ready\": %d}\n", getpid());
		write_all(1, line_buf, (size_t)n);
		char c;
		for (;;) {
			ssize_t k = read(0, &c, 1);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0 || c == '\n')
				break;
		}
	}

	struct bracket b;

	/* 1. brk grow 32 MiB: the first big growth, a peak */
	void *brk0 = sbrk(0);
	begin(&b, "brk-grow-32m", "brk", "peak", 32 * MB / KB, 32 * MB / KB);
	void *r = sbrk((intptr_t)(32 * MB));
	end(&b);
	if (r == (void *)-1)
		die("sbrk grow: %s", strerror(errno));
	memset((char *)brk0 + 16, 1, 4096);

	/* 2. brk shrink: at the peak, so the kernel latches hiwater_vm; no peak */
	begin(&b, "brk-shrink-32m", "brk", "no-peak", 32 * MB / KB, -(long)(32 * MB / KB));
	r = sbrk(-(intptr_t)(32 * MB));
	end(&b);
	if (r == (void *)-1)
		die("sbrk shrink: %s", strerror(errno));

	/* 3. SysV shm attach 48 MiB: peak */
	int shmid = shmget(IPC_PRIVATE, 48 * MB, IPC_CREAT | 0600);
	if (shmid < 0)
		die("shmget: %s", strerror(errno));
	begin(&b, "shmat-48m", "shmat", "peak", 48 * MB / KB, 48 * MB / KB);
	void *shm = shmat(shmid, NULL, 0);
	end(&b);
	shmctl(shmid, IPC_RMID, NULL);
	if (shm == (void *)-1)
		die("shmat: %s", strerror(errno));

	/* 4. shmdt: latch, no peak */
	begin(&b, "shmdt-48m", "shmdt", "no-peak", 48 * MB / KB, -(long)(48 * MB / KB));
	int rc = shmdt(shm);
	end(&b);
	if (rc != 0)
		die("shmdt: %s", strerror(errno));

	/* 5. anonymous private rw mmap 64 MiB: peak */
	begin(&b, "mmap-64m", "mmap", "peak", 64 * MB / KB, 64 * MB / KB);
	char *m64 = mmap(NULL, 64 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	end(&b);
	if (m64 == MAP_FAILED)
		die("mmap 64m: %s", strerror(errno));
	m64[0] = 1;

	/* 6. munmap it: latch (hiwater_vm := VmPeak), no peak */
	begin(&b, "munmap-64m", "munmap", "no-peak", 64 * MB / KB, -(long)(64 * MB / KB));
	rc = munmap(m64, 64 * MB);
	end(&b);
	if (rc != 0)
		die("munmap 64m: %s", strerror(errno));

	/* 7. mremap source: 1 MiB rw followed by a PROT_NONE guard page, so that growing it in
	 * place is impossible and mremap has to move it; no peak */
	begin(&b, "mremap-setup-1m", "mmap", "no-peak", (MB + 4096) / KB, (long)((MB + 4096) / KB));
	char *m1 = mmap(NULL, MB + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m1 != MAP_FAILED)
		rc = mprotect(m1 + MB, 4096, PROT_NONE);
	end(&b);
	if (m1 == MAP_FAILED || rc != 0)
		die("mremap setup: %s", strerror(errno));
	memset(m1, 7, MB);

	/* 8. mremap 1 MiB -> 96 MiB, MREMAP_MAYMOVE (moves): peak, and no false intermediate peak
	 * (the kernel maps the new 96 MiB before it unmaps the old 1 MiB) */
	begin(&b, "mremap-grow-96m", "mremap", "peak", 95 * MB / KB, 95 * MB / KB);
	char *m96 = mremap(m1, MB, 96 * MB, MREMAP_MAYMOVE);
	end(&b);
	if (m96 == MAP_FAILED)
		die("mremap grow: %s", strerror(errno));
	if (m96 == m1)
		die("mremap grow: did not move (the guard page should have forced it)");
	if (m96[MB - 1] != 7)
		die("mremap grow: contents lost");

	/* 9. mremap shrink 96 MiB -> 16 MiB in place: latch, no peak */
	begin(&b, "mremap-shrink-16m", "mremap", "no-peak", 80 * MB / KB, -(long)(80 * MB / KB));
	char *m16 = mremap(m96, 96 * MB, 16 * MB, 0);
	end(&b);
	if (m16 == MAP_FAILED)
		die("mremap shrink: %s", strerror(errno));

	/* 10. unmap what is left (16 MiB and the guard page); no peak */
	begin(&b, "mremap-cleanup", "munmap", "no-peak", (16 * MB + 4096) / KB,
	      -(long)((16 * MB + 4096) / KB));
	rc = munmap(m16, 16 * MB);
	if (rc == 0)
		rc = munmap(m1 + MB, 4096);
	end(&b);
	if (rc != 0)
		die("mremap cleanup: %s", strerror(errno));

	/* 11. 1 GiB PROT_NONE reservation (MAP_NORESERVE): peak; kept until the end so that the
	 * process stays at its peak */
	begin(&b, "reserve-1g", "mmap", "peak", 1024 * MB / KB, 1024 * MB / KB);
	char *res = mmap(NULL, 1024 * MB, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	end(&b);
	if (res == MAP_FAILED)
		die("reserve 1g: %s", strerror(errno));

	/* 12. MAP_FIXED 16 MiB rw over the middle of the reservation: same length, no net change */
	begin(&b, "mmap-fixed-16m", "mmap", "no-peak", 16 * MB / KB, 0);
	char *fx = mmap(res + 256 * MB, 16 * MB, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	end(&b);
	if (fx != res + 256 * MB)
		die("mmap fixed: %s", strerror(errno));
	fx[0] = 1;

	/* 13. stack growth by deep recursion, at the peak: peak, cause stack-growth */
	begin(&b, "stack-growth", "stack-growth", "peak", stack_bytes / (long)KB,
	      stack_bytes / (long)KB);
	b.delta_tol_kb = 256; /* the stack VMA already covers some of it; frames add a little */
	recurse((int)(stack_bytes / FRAME_BYTES));
	end(&b);

	/* 14. threads, one after the other: pthread_create (the stack mmap is made by the main
	 * thread: a peak the first time; later ones may reuse glibc's cached stack), then the
	 * thread's own 200 MiB mapping, touched (a peak with the thread's tid) */
	static struct thread_arg args[NTHREADS];
	pthread_t th[NTHREADS];
	static char create_names[NTHREADS][32];
	for (int i = 0; i < NTHREADS; i++) {
		args[i].index = i;
		if (sem_init(&args[i].go, 0, 0) != 0)
			die("sem_init: %s", strerror(errno));
		snprintf(create_names[i], sizeof(create_names[i]), "pthread-create-%d", i + 1);
		begin(&b, create_names[i], "mmap", i == 0 ? "peak" : "any", tstack_kb, tstack_kb);
		b.delta_any = i != 0;
		rc = pthread_create(&th[i], NULL, thread_main, &args[i]);
		end(&b);
		if (rc != 0)
			die("pthread_create: %s", strerror(rc));
		sem_post(&args[i].go);
		rc = pthread_join(th[i], NULL);
		if (rc != 0)
			die("pthread_join: %s", strerror(rc));
	}

	if (out_fd != 1)
		close(out_fd);
	return 0;
}
