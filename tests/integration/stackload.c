/* A known call chain, built -O2 -fomit-frame-pointer, for the user stack tests:
 *   main -> outer -> middle -> map_big      mmap()s and touches 256 MiB
 *   main -> outer -> middle -> malloc_big   malloc()s and touches 300 MiB
 *   then maps a file and closes its fd at once, opens another file (which takes the same fd
 *   number) and maps it too.
 * With "wait" as first argument it first waits for a byte on stdin (so that a tracer can
 * attach with -p). Prints JSON lines {"what": ...} on stdout.
 *   stackload [wait] FILE_A FILE_B
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))
/* keeps a call from becoming a jump (a tail call leaves no frame to unwind) */
#define KEEP(x) __asm__ volatile("" : : "r"(x) : "memory")

static volatile int sink;

NOINLINE static char *map_big(size_t mib)
{
	char *p = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		exit(1);
	for (size_t i = 0; i < (mib << 20); i += 4096)
		p[i] = 1;
	KEEP(p);
	return p;
}

NOINLINE static char *malloc_big(size_t mib)
{
	char *p = malloc(mib << 20);
	if (!p)
		exit(1);
	memset(p, 1, mib << 20);
	KEEP(p);
	return p;
}

NOINLINE static char *middle(int which)
{
	char *p = which ? malloc_big(300) : map_big(256);
	KEEP(p);
	sink += p[0];
	return p;
}

NOINLINE static char *outer(int which)
{
	char *p = middle(which);
	KEEP(p);
	sink += p[4096];
	return p;
}

static void map_file(const char *path, const char *what)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		perror(path);
		exit(1);
	}
	char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		exit(1);
	printf("{\"what\": \"%s\", \"fd\": %d, \"addr\": \"%p\"}\n", what, fd, (void *)p);
	close(fd);  /* the mapping outlives its fd; the number is free for the next file */
}

int main(int argc, char **argv)
{
	int arg = 1;
	if (argc > 1 && !strcmp(argv[1], "wait")) {
		char c;
		printf("{\"what\": \"ready\", \"pid\": %d}\n", getpid());
		fflush(stdout);
		if (read(0, &c, 1) != 1)
			return 1;
		arg = 2;
	}
	if (argc < arg + 2)
		return 2;
	char *a = outer(0);
	char *b = outer(1);
	KEEP(a);
	KEEP(b);
	map_file(argv[arg], "file-a");
	map_file(argv[arg + 1], "file-b");
	printf("{\"what\": \"done\", \"pid\": %d}\n", getpid());
	fflush(stdout);
	return 0;
}
