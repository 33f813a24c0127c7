/* Peer, as a floor: what an hpc-edge rank does for each payload, in C, with nothing tracked.

   Usage: spawn_floor N PROCS DIR   -> prints one JSON line {"n", "procs", "inner_s"}

   PROCS processes (fork) run N /bin/true payloads between them, one at a time each. Per payload, the
   same process and file work as hpc-edge's executor on a --scratch directory (hpc_edge/spawn.py,
   hpc_edge/executor.py, hpc_edge/payload.py): a fresh directory DIR/<proc>/<i>; a process started as
   the rank's compiled path starts one (hpc_edge/_fastrun.c: vfork with every signal blocked, then in
   the child a new session, that directory, stdin from /dev/null, stdout and stderr into files of that
   directory, SIGPIPE and SIGXFSZ at their defaults, an empty signal mask, execve of /bin/true with the
   environment plus the
   variables hpc-edge gives each payload (HPC_EDGE_JOB_ID and the like); wait4 for its exit code and usage; the job report
   looked for, both logs' sizes read; the empty logs and the directory removed. No store, no
   messages, no Python: the difference between this and hpc-edge is the cost of tracking the jobs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int fail(const char *what, const char *where) {
    fprintf(stderr, "spawn_floor: %s %s: %s\n", what, where, strerror(errno));
    return 1;
}

/* the child, between vfork and execve: system calls only; why it failed in *err */
static void __attribute__((noinline, noreturn)) child(const char *dir, char **argv, char **env,
                                                         const sigset_t *empty, volatile int *err) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, NULL);
    sigaction(SIGXFSZ, &dfl, NULL);
    if (setsid() < 0 || chdir(dir) != 0) goto failed;
    static const char *names[3] = {"/dev/null", "payload.stdout", "payload.stderr"};
    static const int flags[3] = {O_RDONLY, O_WRONLY | O_CREAT | O_TRUNC, O_WRONLY | O_CREAT | O_TRUNC};
    for (int fd = 0; fd < 3; fd++) {
        int got = open(names[fd], flags[fd], 0666);
        if (got < 0) goto failed;
        if (got != fd) {
            if (dup2(got, fd) < 0) goto failed;
            close(got);
        }
    }
    sigprocmask(SIG_SETMASK, empty, NULL);
    execve("/bin/true", argv, env);
failed:
    *err = errno ? errno : EINVAL;
    _exit(127);
}

static int run_share(long first, long count, const char *base) {
    char dir[4200], path[4400], vars[7][64];
    size_t nenv = 0;
    while (environ[nenv]) nenv++;
    char **env = calloc(nenv + 8, sizeof *env);
    if (!env) return fail("calloc", "env");
    memcpy(env, environ, nenv * sizeof *env);
    for (int k = 0; k < 7; k++) env[nenv + k] = vars[k];
    char *argv[] = {"true", NULL};
    sigset_t all, empty, old;
    sigfillset(&all);
    sigemptyset(&empty);
    for (long i = first; i < first + count; i++) {
        snprintf(dir, sizeof dir, "%s/%ld.1", base, i + 1);
        if (mkdir(dir, 0777)) return fail("mkdir", dir);
        snprintf(vars[0], 64, "HPC_EDGE_JOB_ID=%ld", i + 1);
        snprintf(vars[1], 64, "HPC_EDGE_TASK_ID=1");
        snprintf(vars[2], 64, "HPC_EDGE_ATTEMPT=1");
        snprintf(vars[3], 64, "HPC_EDGE_CORES=1");
        snprintf(vars[4], 64, "HPC_EDGE_RANK=0");
        snprintf(vars[5], 64, "OMP_NUM_THREADS=1");
        snprintf(vars[6], 64, "HPC_EDGE_PYTHON=/usr/bin/python3");
        volatile int err = 0;
        sigprocmask(SIG_SETMASK, &all, &old);
        pid_t pid = vfork();
        if (pid == 0) child(dir, argv, env, &empty, &err);
        sigprocmask(SIG_SETMASK, &old, NULL);
        if (pid < 0) return fail("vfork", dir);
        if (err) {
            errno = err;
            return fail("execve", "/bin/true");
        }
        int status;
        struct rusage usage;
        if (wait4(pid, &status, 0, &usage) != pid) return fail("wait4", dir);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "spawn_floor: payload %ld ended with status %d\n", i + 1, status);
            return 1;
        }
        struct stat st;
        snprintf(path, sizeof path, "%s/jobReport.json", dir);
        if (stat(path, &st) == 0) {
            fprintf(stderr, "spawn_floor: %s exists\n", path);
            return 1;
        }
        static const char *logs[] = {"payload.stdout", "payload.stderr"};
        for (int k = 0; k < 2; k++) {
            snprintf(path, sizeof path, "%s/%s", dir, logs[k]);
            if (stat(path, &st)) return fail("stat", path);
            if (st.st_size == 0 && unlink(path)) return fail("unlink", path);
        }
        if (rmdir(dir)) return fail("rmdir", dir);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: spawn_floor N PROCS DIR\n");
        return 2;
    }
    long n = atol(argv[1]), procs = atol(argv[2]);
    if (n < 1 || procs < 1) {
        fprintf(stderr, "spawn_floor: N and PROCS must be positive\n");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long first = 0;
    for (long p = 0; p < procs; p++) {
        long count = n / procs + (p < n % procs ? 1 : 0);
        char base[4096];
        snprintf(base, sizeof base, "%s/%ld", argv[3], p);
        if (mkdir(base, 0777) && errno != EEXIST) return fail("mkdir", base);
        pid_t child = fork();
        if (child < 0) return fail("fork", "share");
        if (child == 0) _exit(run_share(first, count, base));
        first += count;
    }
    int failed = 0, status;
    while (wait(&status) > 0)
        failed += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (failed) {
        fprintf(stderr, "spawn_floor: %d of %ld processes failed\n", failed, procs);
        return 1;
    }
    printf("{\"n\": %ld, \"procs\": %ld, \"inner_s\": %.6f}\n", n, procs,
           (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
