/* Hold a command until released, for scripts/bench's storm, flood and realistic workloads.
 *
 *   bench_hold COMMAND [ARGS...]
 *
 * Prints "ready <pid>" on stdout, waits for a line (or EOF) on stdin, then points stdin and stdout
 * at /dev/null and execs COMMAND in this same process (same pid). A tracer attached to <pid> in
 * between therefore sees the exec and the whole job; the caller times from the release to the
 * job's exit. stderr is left alone (the job's diagnostics).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s COMMAND [ARGS...]\n", argv[0]);
        return 2;
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char line[64];
    (void)fgets(line, sizeof line, stdin);

    int null = open("/dev/null", O_RDWR);
    if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0) {
        perror("bench_hold: /dev/null");
        return 126;
    }
    if (null > 1)
        close(null);
    execvp(argv[1], argv + 1);
    perror("bench_hold: exec");
    return 127;
}
