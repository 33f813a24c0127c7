/* The per-payload path of a rank, compiled: start queued payloads as cores free up, reap them as they
   end, for up to a time budget, with no Python between one payload's end and the next one's start.

   It does for each payload what hpc_edge/executor.py and hpc_edge/spawn.py do, in the same order: the
   payload's directory (and, on its first dispatch, its job's); a new process in a new session, in
   that directory, stdin from /dev/null, stdout and stderr into files there, SIGPIPE and SIGXFSZ at
   their defaults, an empty signal mask, the rank's payload environment with the job's variables; the
   watchdog's table entry; at its end waitid(WNOWAIT), a SIGKILL to its process group, wait4; and, for
   a payload that exited 0 and left no job report, the scratch directory's empty logs and the
   directory itself removed. Anything that needs judging (a non-zero exit, a signal, a job report,
   declared outputs, logs to bring back) is returned for the executor to handle in Python, as it would
   have. FastPath.run (hpc_edge/fastpath.py) says what the records returned are.

   The process is started as posix_spawn starts one (vfork, then in the child the session, directory,
   descriptors and signals, then execve), with two costs of glibc's posix_spawn left out: a stack
   mapped and unmapped for each child, and a sigaction call for each of the 64 signals in the child;
   this child resets only the signals the rank handles (and SIGPIPE, SIGXFSZ), looked up once per
   call. A handler's address means nothing after execve, and every signal is blocked from the vfork
   to just before it, so no handler of the rank's runs in the child. */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DONE 1  /* exited 0, left no job report, had no output to check; on scratch, only empty logs
                   were left and they and the directory are gone: nothing left to judge in Python */

typedef struct {
    const char *program;
    char **argv;
    const char *cwd;
    const char *parent;   /* NULL, or the job's directory to create first */
    char **extras;        /* NAME=value for the payload on top of the base environment */
    Py_ssize_t nextras;
    long cores, memory_mb;
    int no_outputs;
    int parsed;           /* read from its tuple (when first looked at) */
    int started;
    pid_t pid;
    double start_t, start_mono;
    int wd_slot;
} job_t;

static double clock_of(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* a tuple of bytes as a NULL-terminated array of the bytes' own buffers (valid while the tuple lives) */
static char **strings_of(PyObject *seq, Py_ssize_t *count) {
    if (!PyTuple_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "expected a tuple of bytes");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    char **out = PyMem_Malloc((n + 1) * sizeof *out);
    if (!out) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyMem_Free(out);
            PyErr_SetString(PyExc_TypeError, "expected a tuple of bytes");
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    out[n] = NULL;
    if (count) *count = n;
    return out;
}

static int same_name(const char *a, const char *b) {
    /* whether two NAME=value entries set the same variable */
    while (*a && *a != '=' && *a == *b) a++, b++;
    return *a == '=' && *b == '=';
}

typedef struct {
    char **base;
    Py_ssize_t nbase;
    char *names[3];        /* stdout, stderr, job report */
    sigset_t all, empty;  /* the spawn's masks: blocked around vfork, none for the payload */
    struct sigaction dfl;
    int handled[_NSIG], nhandled;  /* signals with a handler (and SIGPIPE, SIGXFSZ): default in the payload */
    Py_buffer wd_map;      /* the watchdog's table, or buf == NULL */
    PyObject *wd_free, *wd_where;
    PyObject *known[2];    /* the executor's own running payloads and event-service payloads, by pid */
    int scratch;
} ctx_t;

static int wd_take(ctx_t *c, job_t *j) {
    j->wd_slot = -1;
    if (!c->wd_map.buf) return 0;
    Py_ssize_t n = PyList_GET_SIZE(c->wd_free);
    if (n == 0) return -1;
    long slot = PyLong_AsLong(PyList_GET_ITEM(c->wd_free, n - 1));
    if (slot < 0 || (slot + 1) * 4 > c->wd_map.len) return -1;
    if (PyList_SetSlice(c->wd_free, n - 1, n, NULL) < 0) return -1;
    j->wd_slot = (int)slot;
    return 0;
}

static int wd_started(ctx_t *c, job_t *j) {
    if (j->wd_slot < 0) return 0;
    int32_t v = (int32_t)j->pid;
    memcpy((char *)c->wd_map.buf + (Py_ssize_t)j->wd_slot * 4, &v, 4);
    PyObject *k = PyLong_FromLong(j->pid), *s = PyLong_FromLong(j->wd_slot);
    int rc = (k && s) ? PyDict_SetItem(c->wd_where, k, s) : -1;
    Py_XDECREF(k);
    Py_XDECREF(s);
    return rc;
}

static int wd_give_back(ctx_t *c, int slot) {
    if (slot < 0 || !c->wd_map.buf) return 0;
    memset((char *)c->wd_map.buf + (Py_ssize_t)slot * 4, 0, 4);
    PyObject *s = PyLong_FromLong(slot);
    int rc = s ? PyList_Append(c->wd_free, s) : -1;
    Py_XDECREF(s);
    return rc;
}

static int wd_ended(ctx_t *c, job_t *j) {
    if (j->wd_slot < 0) return 0;
    PyObject *k = PyLong_FromLong(j->pid);
    if (!k) return -1;
    int rc = PyDict_DelItem(c->wd_where, k);
    Py_DECREF(k);
    if (rc < 0) PyErr_Clear();
    return wd_give_back(c, j->wd_slot);
}

static int mkdir_ok(const char *path) {
    return mkdir(path, 0777) == 0 || errno == EEXIST ? 0 : errno;
}

/* what a payload's child does between vfork and exec: it shares the rank's memory and runs on its
   stack until execve, so it only makes system calls, and says why it failed in *err */
static void __attribute__((noinline, noreturn)) child_exec(ctx_t *c, job_t *j, char **envp, volatile int *err) {
    for (int k = 0; k < c->nhandled; k++) sigaction(c->handled[k], &c->dfl, NULL);
    if (setsid() < 0) goto fail;
    if (chdir(j->cwd) != 0) goto fail;
    static const int flags[3] = {O_RDONLY, O_WRONLY | O_CREAT | O_TRUNC, O_WRONLY | O_CREAT | O_TRUNC};
    for (int fd = 0; fd < 3; fd++) {
        int got = open(fd == 0 ? "/dev/null" : c->names[fd - 1], flags[fd], 0666);
        if (got < 0) goto fail;
        if (got != fd) {
            if (dup2(got, fd) < 0) goto fail;
            close(got);
        }
    }
    sigprocmask(SIG_SETMASK, &c->empty, NULL);
    execve(j->program, j->argv, envp);
fail:
    *err = errno ? errno : EINVAL;
    _exit(127);
}

/* 0 and j->pid set, or an errno */
static int start_job(ctx_t *c, job_t *j) {
    int err;
    if (j->parent && (err = mkdir_ok(j->parent))) return err;
    if ((err = mkdir_ok(j->cwd))) return err;
    if (!*j->program) return ENOENT;  /* not found on its PATH (Spawner.program): no process, no logs */
    char **envp = PyMem_Malloc((c->nbase + j->nextras + 1) * sizeof *envp);
    if (!envp) return ENOMEM;
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < c->nbase; i++) {
        int shadowed = 0;
        for (Py_ssize_t k = 0; k < j->nextras && !shadowed; k++) shadowed = same_name(c->base[i], j->extras[k]);
        if (!shadowed) envp[n++] = c->base[i];
    }
    for (Py_ssize_t k = 0; k < j->nextras; k++) envp[n++] = j->extras[k];
    envp[n] = NULL;
    j->start_t = clock_of(CLOCK_REALTIME);
    j->start_mono = clock_of(CLOCK_MONOTONIC);
    volatile int child_err = 0;
    sigset_t old;
    /* no handler of the rank's may run in the child before exec: all blocked until then */
    pthread_sigmask(SIG_SETMASK, &c->all, &old);
    pid_t pid = vfork();
    if (pid == 0) child_exec(c, j, envp, &child_err);
    err = pid < 0 ? errno : 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid > 0 && child_err) {  /* it could not exec: it has exited (127), reap it */
        err = child_err;
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    } else if (pid > 0) {
        j->pid = pid;
    }
    PyMem_Free(envp);
    return err;
}

/* after a fast payload's wait4: DONE, or 0 for Python to judge it */
static int finish(ctx_t *c, const char *cwd, int no_outputs, int status) {
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !no_outputs) return 0;
    char path[PATH_MAX];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/%s", cwd, c->names[2]) >= (int)sizeof path) return 0;
    if (lstat(path, &st) == 0 || errno != ENOENT) return 0;
    if (!c->scratch) return DONE;
    for (int k = 0; k < 2; k++) {
        if (snprintf(path, sizeof path, "%s/%s", cwd, c->names[k]) >= (int)sizeof path) return 0;
        if (stat(path, &st) != 0 || st.st_size != 0) return 0;
    }
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/%s", cwd, c->names[k]);
        if (unlink(path) != 0) return 0;
    }
    return rmdir(cwd) == 0 ? DONE : 0;
}

/* the same for one of the executor's running payloads (started by an earlier call): judged here
   only if nothing asked it to stop */
static int finish_run(ctx_t *c, PyObject *run, int status) {
    int flags = 0;
    PyObject *reason = PyObject_GetAttrString(run, "stop_reason");
    PyObject *workdir = PyObject_GetAttrString(run, "workdir");
    PyObject *spec = PyObject_GetAttrString(run, "spec");
    PyObject *outputs = spec ? PyObject_GetAttrString(spec, "outputs") : NULL;
    PyObject *cwd = workdir && PyUnicode_Check(workdir) ? PyUnicode_EncodeFSDefault(workdir) : NULL;
    if (reason == Py_None && cwd && outputs && PyTuple_Check(outputs))
        flags = finish(c, PyBytes_AS_STRING(cwd), PyTuple_GET_SIZE(outputs) == 0, status);
    PyErr_Clear();  /* anything unexpected: judged in Python */
    Py_XDECREF(reason);
    Py_XDECREF(workdir);
    Py_XDECREF(spec);
    Py_XDECREF(outputs);
    Py_XDECREF(cwd);
    return flags;
}

static int parse_job(PyObject *t, job_t *j) {
    PyObject *argv, *extras, *parent;
    memset(j, 0, sizeof *j);
    j->wd_slot = -1;
    j->parsed = 1;
    if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "yO!yOO!llp", &j->program, &PyTuple_Type, &argv, &j->cwd,
                                                 &parent, &PyTuple_Type, &extras, &j->cores, &j->memory_mb,
                                                 &j->no_outputs)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a job is a tuple");
        return -1;
    }
    if (parent != Py_None) {
        if (!PyBytes_Check(parent)) {
            PyErr_SetString(PyExc_TypeError, "a job's parent directory is bytes or None");
            return -1;
        }
        j->parent = PyBytes_AS_STRING(parent);
    }
    if (!(j->argv = strings_of(argv, NULL))) return -1;
    if (!(j->extras = strings_of(extras, &j->nextras))) {
        PyMem_Free(j->argv);
        j->argv = NULL;
        return -1;
    }
    return 0;
}

/* a child this call did not start: 1 if one of the executor's running payloads (its Running record,
   borrowed, in *run, its cores and memory in *cores, *memory; its watchdog entry released), 2 if an
   event-service payload, 0 if neither (a stray reparented to the rank), -1 on error */
static int known_child(ctx_t *c, pid_t pid, PyObject **run_out, long *cores, long *memory) {
    PyObject *k = PyLong_FromLong(pid);
    if (!k) return -1;
    int found = 0;
    PyObject *run = c->known[0] != Py_None ? PyDict_GetItemWithError(c->known[0], k) : NULL;
    *run_out = run;
    if (run) {
        found = 1;
        PyObject *spec = PyObject_GetAttrString(run, "spec");
        PyObject *n = spec ? PyObject_GetAttrString(spec, "cores") : NULL;
        PyObject *m = spec ? PyObject_GetAttrString(spec, "memory_mb") : NULL;
        *cores = n ? PyLong_AsLong(n) : -1;
        *memory = m ? PyLong_AsLong(m) : -1;
        Py_XDECREF(spec);
        Py_XDECREF(n);
        Py_XDECREF(m);
        if (PyErr_Occurred()) found = -1;
        if (found == 1 && c->wd_map.buf) {  /* as Watchdog.ended would (it finds nothing to do then) */
            PyObject *slot = PyDict_GetItemWithError(c->wd_where, k);
            if (slot) {
                long s = PyLong_AsLong(slot);
                if (PyDict_DelItem(c->wd_where, k) < 0 || wd_give_back(c, (int)s) < 0) found = -1;
            } else if (PyErr_Occurred()) {
                found = -1;
            }
        }
    } else if (PyErr_Occurred()) {
        found = -1;
    } else if (c->known[1] != Py_None) {
        found = PyDict_Contains(c->known[1], k);
        if (found == 1) found = 2;
    }
    Py_DECREF(k);
    return found;
}

static int append(PyObject *list, PyObject *item) {
    if (!item) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

static PyObject *fast_run(PyObject *self, PyObject *args) {
    PyObject *jobs, *base, *names, *known, *wd;
    long free_cores, free_memory;
    double budget;
    int wake_fd, scratch;
    if (!PyArg_ParseTuple(args, "O!lldiO!O!O!Op", &PyList_Type, &jobs, &free_cores, &free_memory, &budget,
                          &wake_fd, &PyTuple_Type, &base, &PyTuple_Type, &names, &PyTuple_Type, &known, &wd,
                          &scratch))
        return NULL;
    ctx_t c;
    memset(&c, 0, sizeof c);
    c.scratch = scratch;
    c.known[0] = c.known[1] = Py_None;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(known) && i < 2; i++) {
        PyObject *d = PyTuple_GET_ITEM(known, i);
        if (!PyDict_Check(d)) {
            PyErr_SetString(PyExc_TypeError, "known: a tuple of dicts");
            return NULL;
        }
        c.known[i] = d;
    }
    if (PyTuple_GET_SIZE(names) != 3) {
        PyErr_SetString(PyExc_TypeError, "names: (stdout, stderr, job report)");
        return NULL;
    }
    for (int k = 0; k < 3; k++) {
        PyObject *n = PyTuple_GET_ITEM(names, k);
        if (!PyBytes_Check(n)) {
            PyErr_SetString(PyExc_TypeError, "names: bytes");
            return NULL;
        }
        c.names[k] = PyBytes_AS_STRING(n);
    }
    if (wd != Py_None) {
        PyObject *map;
        if (!PyArg_ParseTuple(wd, "OO!O!", &map, &PyList_Type, &c.wd_free, &PyDict_Type, &c.wd_where)) return NULL;
        if (PyObject_GetBuffer(map, &c.wd_map, PyBUF_WRITABLE) < 0) return NULL;
    }
    Py_ssize_t njobs = PyList_GET_SIZE(jobs);
    job_t *js = PyMem_Calloc(njobs ? njobs : 1, sizeof *js);
    PyObject *out = PyList_New(0);
    int ok = js && out && (c.base = strings_of(base, &c.nbase)) != NULL;
    if (!ok) goto done;

    sigfillset(&c.all);
    sigemptyset(&c.empty);
    memset(&c.dfl, 0, sizeof c.dfl);
    c.dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++) {
        struct sigaction sa;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) != 0) continue;
        if (sig == SIGPIPE || sig == SIGXFSZ || (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN))
            c.handled[c.nhandled++] = sig;
    }

    double deadline = clock_of(CLOCK_MONOTONIC) + budget;
    Py_ssize_t running = 0;
    int stop_starting = 0, leave = 0, ended_any = 0;
    while (ok) {
        /* start what fits, first fit in order (a job that does not fit keeps its place); every job
           needs a core, so with none free the rest is not looked at (nor read from its tuple) */
        int waiting = 0;  /* a job not started that would fit once cores free up */
        for (Py_ssize_t i = 0; i < njobs && !stop_starting; i++) {
            job_t *j = &js[i];
            if (j->started) continue;
            if (free_cores <= 0) {
                waiting = 1;
                break;
            }
            if (!j->parsed && parse_job(PyList_GET_ITEM(jobs, i), j) < 0) {
                ok = 0;
                break;
            }
            if (j->cores > free_cores || j->memory_mb > free_memory) {
                waiting = 1;
                continue;
            }
            if (wd_take(&c, j) < 0) {
                if (PyErr_Occurred()) ok = 0;
                stop_starting = 1;
                break;
            }
            int err = start_job(&c, j);
            if (err) {  /* the executor starts it again in Python, which says why it cannot */
                wd_give_back(&c, j->wd_slot);
                ok = append(out, Py_BuildValue("(inni)", 3, i, (Py_ssize_t)0, err)) == 0;
                stop_starting = 1;
                break;
            }
            j->started = 1;
            running++;
            free_cores -= j->cores;
            free_memory -= j->memory_mb;
            if (wd_started(&c, j) < 0) ok = 0;
        }
        if (!ok) break;
        /* reap every child that has ended */
        for (;;) {
            siginfo_t info;
            info.si_pid = 0;
            if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) break;
            pid_t pid = info.si_pid;
            job_t *j = NULL;
            for (Py_ssize_t i = 0; i < njobs; i++)
                if (js[i].started == 1 && js[i].pid == pid) {
                    j = &js[i];
                    break;
                }
            int ours = j != NULL, known = 0;
            long cores = 0, memory = 0;
            PyObject *run = NULL;
            if (!ours) {
                known = known_child(&c, pid, &run, &cores, &memory);
                if (known < 0) {
                    ok = 0;
                    break;
                }
                ours = known != 0;
            }
            /* what it left running in its process group ends with it (its pid still names the group) */
            if (ours) kill(-pid, SIGKILL);
            int status;
            struct rusage ru;
            if (wait4(pid, &status, 0, &ru) != pid) {
                if (errno == EINTR) continue;
                break;  /* not ours to wait for after all: the next call, or Python's reap, sees it */
            }
            double ut = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, st = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
            if (j) {
                double end_t = clock_of(CLOCK_REALTIME), end_mono = clock_of(CLOCK_MONOTONIC);
                j->started = 2;
                running--;
                free_cores += j->cores;
                free_memory += j->memory_mb;
                ended_any = 1;
                if (wd_ended(&c, j) < 0) ok = 0;
                int flags = finish(&c, j->cwd, j->no_outputs, status);
                if (ok) ok = append(out, Py_BuildValue("(innddiddlddi)", 1, (Py_ssize_t)(j - js), (Py_ssize_t)pid,
                                                       j->start_t, j->start_mono, status, ut, st, ru.ru_maxrss,
                                                       end_t, end_mono, flags)) == 0;
            } else {
                int flags = 0;
                if (known == 1) {  /* one of the executor's running payloads: its cores are free again */
                    free_cores += cores;
                    free_memory += memory;
                    ended_any = 1;
                    flags = finish_run(&c, run, status);
                } else if (known == 2) {
                    leave = 1;  /* an event-service payload: the event service's turn now */
                }
                ok = append(out, Py_BuildValue("(innddiddli)", 2, (Py_ssize_t)-1, (Py_ssize_t)pid,
                                               clock_of(CLOCK_REALTIME), clock_of(CLOCK_MONOTONIC), status, ut, st,
                                               ru.ru_maxrss, flags)) == 0;
            }
            if (!ok) break;
        }
        if (!ok || leave || stop_starting) break;
        int startable = 0;  /* a job not started (read or not yet) that may fit the cores now free */
        for (Py_ssize_t i = 0; i < njobs && !startable && free_cores > 0; i++)
            startable = !js[i].started && (!js[i].parsed || (js[i].cores <= free_cores && js[i].memory_mb <= free_memory));
        if (startable) continue;
        if (running == 0 && !waiting) break;     /* all done */
        if (!waiting && ended_any) break;        /* nothing left to start and cores free: report, refill */
        double left = deadline - clock_of(CLOCK_MONOTONIC);
        if (left <= 0) break;
        struct pollfd pfd = {.fd = wake_fd, .events = POLLIN};
        struct timespec ts = {.tv_sec = (time_t)left, .tv_nsec = (long)((left - (time_t)left) * 1e9)};
        int got;
        Py_BEGIN_ALLOW_THREADS
        got = ppoll(&pfd, 1, &ts, NULL);
        Py_END_ALLOW_THREADS
        if (got > 0) {
            unsigned char buf[256];
            ssize_t n;
            while ((n = read(wake_fd, buf, sizeof buf)) > 0)
                for (ssize_t k = 0; k < n; k++)
                    if (buf[k] != SIGCHLD) leave = 1;  /* a signal for the rank: let Python see it */
            if (leave) {
                /* one more pass reaps what has ended meanwhile, then return */
                stop_starting = 1;
            }
        }
    }
    /* payloads still running: the executor tracks them from now on */
    for (Py_ssize_t i = 0; ok && i < njobs; i++)
        if (js[i].started == 1)
            ok = append(out, Py_BuildValue("(inndd)", 0, i, (Py_ssize_t)js[i].pid, js[i].start_t,
                                           js[i].start_mono)) == 0;
done:
    for (Py_ssize_t i = 0; i < njobs && js; i++) {
        if (!js[i].parsed) continue;
        PyMem_Free(js[i].argv);
        PyMem_Free(js[i].extras);
    }
    PyMem_Free(js);
    PyMem_Free(c.base);
    if (c.wd_map.buf) PyBuffer_Release(&c.wd_map);
    if (!ok) {
        Py_XDECREF(out);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"run", fast_run, METH_VARARGS,
     "run(jobs, free_cores, free_memory_mb, budget_s, wake_fd, base_env, names, known, watchdog, scratch)\n"
     "Start and reap payloads for up to budget_s; return what happened (FastPath.run in hpc_edge/fastpath.py)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hpc_edge._fastrun",
                                    "A rank's per-payload path, compiled.", -1, methods};

PyMODINIT_FUNC PyInit__fastrun(void) { return PyModule_Create(&module); }
