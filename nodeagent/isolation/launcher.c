/*
 * baponi-launch: the processes inside a sandbox, from namespace entry to the interpreter.
 *
 *   A  (host pid ns)  unshare user+mount+uts+ipc+net+pid, wait for the id maps, fork B, wait
 *   B  (pid 1)        run the plan's filesystem records, fork C, reap; when C ends, kill the
 *                     rest and report C's wait status
 *   C  (pid 2)        run the plan's process records: rlimits, no capabilities, uid 1000,
 *                     seccomp, exec
 *
 * Native because every sandbox pays these three processes: forks of a Python process cost
 * ~25 ms of CPU in copied pages per sandbox, these cost a fraction of one. The policy (which
 * mounts, which limits, which filter) is decided in Python and arrives as a plan on fd 4
 * (nodeagent/isolation/plan.py writes it); this file only carries it out, in order.
 *
 * fds: 0-2 the sandbox's stdio, 3 ready eventfd (the supervisor's; a bootstrap keeps it to
 * say how the code ended), 4 plan (read with pread), 5 to the supervisor, 6 from the
 * supervisor, 7 the code's wait status (4 bytes, network order). Exit codes: 110-111 and 114
 * namespace entry (A), 112 sandbox set-up (B), 113 the interpreter's start (C).
 *
 * Built with -DBAPONI_LIBRARY it is also a shared library for a zygote: an interpreter that
 * has already started calls baponi_zygote_spawn(), which clones B straight into the
 * namespaces as a sibling of the zygote (CLONE_PARENT: the supervisor's child, as A is when
 * it is spawned; there is no A), and in C, instead of the plan's exec, returns 0 into the
 * interpreter, now inside the sandbox, having copied the pages that baponi_zygote_learn()
 * named.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum { FD_STDIN, FD_STDOUT, FD_STDERR, FD_READY, FD_PLAN, FD_UP, FD_DOWN, FD_STATUS };
enum { EXIT_ENTRY = 110, EXIT_NO_MAPS = 111, EXIT_SETUP = 112, EXIT_START = 113, EXIT_ORPHAN = 114 };

#define NAMESPACES (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID)
#define MAX_FIELDS 64

struct record {
    int count;
    char **field; /* NUL-terminated in place, in the plan as read */
    size_t *length;
};

struct plan {
    int count;
    struct record *records;
};

static int fail_code = EXIT_ENTRY;
static int in_zygote = 0; /* C returns to the zygote's interpreter instead of exec'ing one */
static const char *fail_prefix = "baponi: sandbox setup failed";

static void fail(const char *format, ...) {
    char message[4096];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(message, sizeof message, format, args);
    va_end(args);
    if (n > 0) {
        dprintf(FD_STDERR, "%s: %.*s\n", fail_prefix, (int)(n < (int)sizeof message ? n : (int)sizeof message - 1),
                message);
    }
    _exit(fail_code);
}

static void check(int result, const char *what, const char *arg) {
    if (result < 0) fail("%s%s%s: %s", what, arg ? " " : "", arg ? arg : "", strerror(errno));
}

/* --- the plan: netstrings ("<len>:<bytes>,"), a record being a netstring of netstrings ---- */

static char *netstring(char *buf, size_t size, size_t *pos, size_t *length) {
    size_t p = *pos, n = 0;
    if (p >= size || buf[p] < '0' || buf[p] > '9') return NULL;
    while (p < size && buf[p] >= '0' && buf[p] <= '9') {
        n = n * 10 + (size_t)(buf[p++] - '0');
        if (n > size) return NULL;
    }
    if (p >= size || buf[p] != ':') return NULL;
    p++;
    if (n >= size - p || buf[p + n] != ',') return NULL;
    *pos = p + n + 1;
    *length = n;
    return buf + p;
}

/* Memory of the launcher's own: a fresh private mapping, not the C library's heap. In a
 * zygote's fork that heap is the interpreter's, shared with the zygote, and each first write
 * to one of its pages is a fault and a copy: a plan's ~200 records cost A ~160 of them. */
static void *fresh(size_t size) {
    void *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) fail("out of memory");
    return memory;
}

/* The plan's fd is shared by every sandbox of its recipe (a sealed memfd): read by offset,
 * never moving the offset they share. */
static char *read_all(int fd, size_t *size) {
    size_t capacity = 1 << 17, used = 0;
    char *buf = fresh(capacity);
    for (;;) {
        if (used == capacity - 1) { /* one byte stays free for the final NUL */
            buf = mremap(buf, capacity, capacity * 2, MREMAP_MAYMOVE);
            if (buf == MAP_FAILED) fail("out of memory");
            capacity *= 2;
        }
        ssize_t n = fd == FD_PLAN ? pread(fd, buf + used, capacity - 1 - used, (off_t)used)
                                  : read(fd, buf + used, capacity - 1 - used);
        if (n < 0 && errno == EINTR) continue;
        check((int)n, "read", fd == FD_PLAN ? "plan" : "request");
        if (n == 0) break;
        used += (size_t)n;
    }
    buf[used] = '\0';
    *size = used;
    return buf;
}

/* Parsed in place: each field's closing ',' becomes its NUL. The arrays are sized for the
 * most records and fields `size` bytes can hold; only the pages used are ever touched. */
static void parse_plan(char *buf, size_t size, struct plan *plan) {
    size_t pos = 0, length, most = size / 3 + 1, fields = 0; /* "0:," is the shortest netstring */
    plan->count = 0;
    plan->records = fresh(most * sizeof(struct record));
    char **field = fresh(most * sizeof(char *));
    size_t *lengths = fresh(most * sizeof(size_t));
    while (pos < size) {
        char *body = netstring(buf, size, &pos, &length);
        if (!body) fail("malformed plan at byte %zu", pos);
        struct record *record = &plan->records[plan->count++];
        record->count = 0;
        record->field = field + fields;
        record->length = lengths + fields;
        size_t inner = 0, field_length;
        while (inner < length) {
            char *value = netstring(body, length, &inner, &field_length);
            if (!value || record->count == MAX_FIELDS) fail("malformed plan record %d", plan->count);
            value[field_length] = '\0';
            record->field[record->count] = value;
            record->length[record->count++] = field_length;
            fields++;
        }
        if (record->count == 0) fail("empty plan record %d", plan->count);
    }
}

static const char *arg(const struct record *record, int index) {
    if (index >= record->count) fail("record %s lacks field %d", record->field[0], index);
    return record->field[index];
}

static const char *optional(const struct record *record, int index) {
    const char *value = arg(record, index);
    return value[0] ? value : NULL;
}

static long number(const struct record *record, int index) {
    char *end;
    errno = 0;
    long value = strtol(arg(record, index), &end, 10);
    if (errno || *end) fail("record %s: field %d is not a number", record->field[0], index);
    return value;
}

static int is(const struct record *record, const char *op) { return strcmp(record->field[0], op) == 0; }

/* --- B: the filesystem ---------------------------------------------------------------- */

static void make_dirs(const char *path, mode_t mode);

/* The directories above `path`, made as make_dirs makes them. */
static void make_parent(const char *path, mode_t mode) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) fail("path too long: %s", path);
    char *slash = strrchr(buf, '/');
    if (slash && slash != buf) {
        *slash = '\0';
        make_dirs(buf, mode);
    }
}

/* mkdir -p, trying the whole path first: the plan's paths mostly share parents that exist
 * (68 /etc/alternatives links), and each failed mkdir of a prefix is a path walk. */
static void make_dirs(const char *path, mode_t mode) {
    if (mkdir(path, mode) == 0 || errno == EEXIST) return;
    if (errno != ENOENT) check(-1, "mkdir", path);
    make_parent(path, mode);
    if (mkdir(path, mode) < 0 && errno != EEXIST) check(-1, "mkdir", path);
}

/* Flags a remount inside a user namespace must keep, or the kernel refuses it. */
static unsigned long locked_flags(const char *path) {
    static const struct { unsigned long st, ms; } map[] = {
        {ST_NOSUID, MS_NOSUID},   {ST_NODEV, MS_NODEV},           {ST_NOEXEC, MS_NOEXEC},
        {ST_NOATIME, MS_NOATIME}, {ST_NODIRATIME, MS_NODIRATIME}, {ST_RELATIME, MS_RELATIME},
    };
    struct statvfs info;
    check(statvfs(path, &info), "statvfs", path);
    unsigned long flags = 0;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (info.f_flag & map[i].st) flags |= map[i].ms;
    return flags;
}

static int holds(const char *test, const char *path) {
    struct stat info;
    if (stat(path, &info) < 0) return 0;
    if (strcmp(test, "dir") == 0) return S_ISDIR(info.st_mode);
    if (strcmp(test, "exists") == 0) return 1;
    fail("unknown test %s", test);
    return 0;
}

static void write_file(const char *path, const char *content, size_t length, mode_t mode) {
    make_parent(path, 0755);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    check(fd, "open", path);
    while (length > 0) {
        ssize_t n = write(fd, content, length);
        check((int)n, "write", path);
        content += n;
        length -= (size_t)n;
    }
    close(fd);
    check(chmod(path, mode), "chmod", path);
}

static void bring_up_loopback(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    check(sock, "socket", "lo");
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strcpy(request.ifr_name, "lo");
    check(ioctl(sock, SIOCGIFFLAGS, &request), "ioctl SIOCGIFFLAGS", "lo");
    request.ifr_flags |= IFF_UP;
    check(ioctl(sock, SIOCSIFFLAGS, &request), "ioctl SIOCSIFFLAGS", "lo");
    close(sock);
}

/* Runs one filesystem record; returns how many following records to skip. */
static int filesystem_record(const struct record *r) {
    if (is(r, "mount")) {
        check(mount(optional(r, 1), arg(r, 2), optional(r, 3), (unsigned long)number(r, 4), optional(r, 5)), "mount",
              arg(r, 2));
    } else if (is(r, "remount_ro")) {
        unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | locked_flags(arg(r, 1));
        check(mount(NULL, arg(r, 1), NULL, flags, NULL), "remount read-only", arg(r, 1));
    } else if (is(r, "mkdirs")) {
        make_dirs(arg(r, 1), (mode_t)number(r, 2));
    } else if (is(r, "mkdir")) {
        check(mkdir(arg(r, 1), (mode_t)number(r, 2)), "mkdir", arg(r, 1));
    } else if (is(r, "symlink")) {
        make_parent(arg(r, 2), 0755);
        check(symlink(arg(r, 1), arg(r, 2)), "symlink", arg(r, 2));
    } else if (is(r, "file")) {
        write_file(arg(r, 1), arg(r, 3), r->length[3], (mode_t)number(r, 2));
    } else if (is(r, "when")) {
        return holds(arg(r, 1), arg(r, 2)) ? 0 : (int)number(r, 3);
    } else if (is(r, "pivot_root")) {
        check(chdir(arg(r, 1)), "chdir", arg(r, 1));
        check((int)syscall(SYS_pivot_root, ".", "."), "pivot_root", arg(r, 1));
        check(umount2(".", MNT_DETACH), "umount2", "old root");
        check(chdir("/"), "chdir", "/");
    } else if (is(r, "hostname")) {
        check(sethostname(arg(r, 1), r->length[1]), "sethostname", arg(r, 1));
    } else if (is(r, "domainname")) {
        check(setdomainname(arg(r, 1), r->length[1]), "setdomainname", arg(r, 1));
    } else if (is(r, "loopback")) {
        bring_up_loopback();
    } else {
        fail("unknown filesystem record %s", r->field[0]);
    }
    return 0;
}

/* --- C: the code's process ------------------------------------------------------------ */

static void drop_privileges(uid_t uid, gid_t gid) {
    for (int cap = 0;; cap++) { /* the bounding set, so no later exec can regain one */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0) continue;
        if (errno == EINVAL) break; /* past the kernel's last capability */
        check(-1, "PR_CAPBSET_DROP", NULL);
    }
    check(setresgid(gid, gid, gid), "setresgid", NULL);
    check(setresuid(uid, uid, uid), "setresuid", NULL);
    check(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "PR_CAP_AMBIENT_CLEAR_ALL", NULL);
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    check((int)syscall(SYS_capset, &header, data), "capset", NULL);
}

static void install_seccomp(const char *bpf, size_t length) {
    if (length == 0 || length % sizeof(struct sock_filter) || length / sizeof(struct sock_filter) > BPF_MAXINSNS)
        fail("not a BPF program: %zu bytes", length);
    struct sock_fprog program = {(unsigned short)(length / sizeof(struct sock_filter)), (struct sock_filter *)bpf};
    check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS", NULL);
    check((int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program), "seccomp", NULL);
}

/* The request on stdin (nodeagent/isolation/request.py): "<len>\n<code><KEY=VALUE\0>...". */
static void exec_request(const struct record *r) {
    uint64_t ready = 1; /* an eventfd's count: the supervisor's READY */
    check((int)write(FD_READY, &ready, sizeof ready), "write", "ready");
    close(FD_READY);
    size_t size;
    char *data = read_all(FD_STDIN, &size);
    char *newline = memchr(data, '\n', size), *end;
    if (!newline) fail("malformed request");
    errno = 0;
    unsigned long length = strtoul(data, &end, 10);
    if (errno || end != newline || length > size - (size_t)(newline + 1 - data)) fail("malformed request");
    char *code = newline + 1;
    if (memchr(code, '\0', length)) fail("embedded null byte in the code");
    char *env_start = code + length;
    size_t env_size = size - (size_t)(env_start - data);
    char *argv[MAX_FIELDS + 2];
    int argc = 0;
    for (int i = 1; i < r->count; i++) argv[argc++] = r->field[i];
    char *code_copy = strndup(code, length);
    if (!code_copy) fail("out of memory");
    argv[argc++] = code_copy;
    argv[argc] = NULL;
    size_t entries = 1;
    for (size_t i = 0; i < env_size; i++) entries += env_start[i] == '\0';
    char **envp = calloc(entries + 1, sizeof(char *));
    if (!envp) fail("out of memory");
    size_t count = 0;
    for (char *item = env_start; item < data + size; item += strlen(item) + 1) {
        if (!*item) continue;
        if (!strchr(item, '=')) fail("malformed environment entry in the request");
        envp[count++] = item;
    }
    envp[count] = NULL;
    execve(argv[0], argv, envp);
    fail("execve %s: %s", argv[0], strerror(errno));
}

static void process_records(const struct plan *plan, int from) {
    char *env[MAX_FIELDS * 4 + 1];
    int env_count = 0;
    for (int i = from; i < plan->count; i++) {
        const struct record *r = &plan->records[i];
        if (is(r, "setsid")) {
            check(setsid(), "setsid", NULL);
        } else if (is(r, "rlimit")) {
            struct rlimit limit = {(rlim_t)number(r, 2), (rlim_t)number(r, 2)};
            check(setrlimit((int)number(r, 1), &limit), "setrlimit", arg(r, 1));
        } else if (is(r, "drop_privileges")) {
            drop_privileges((uid_t)number(r, 1), (gid_t)number(r, 2));
        } else if (is(r, "umask")) {
            umask((mode_t)number(r, 1));
        } else if (is(r, "chdir")) {
            check(chdir(arg(r, 1)), "chdir", arg(r, 1));
        } else if (is(r, "seccomp")) {
            install_seccomp(arg(r, 1), r->length[1]);
        } else if (is(r, "env")) {
            if (env_count == MAX_FIELDS * 4) fail("too many environment records");
            env[env_count++] = r->field[1];
        } else if (is(r, "exec")) {
            if (in_zygote) return; /* the interpreter this exec would start is already running */
            char *argv[MAX_FIELDS];
            for (int a = 1; a < r->count; a++) argv[a - 1] = r->field[a];
            argv[r->count - 1] = NULL;
            env[env_count] = NULL;
            execve(argv[0], argv, env);
            fail("execve %s: %s", argv[0], strerror(errno));
        } else if (is(r, "exec_request")) {
            if (in_zygote) fail("a zygote runs no exec_request plan");
            exec_request(r);
        } else {
            fail("unknown process record %s", r->field[0]);
        }
    }
    fail("the plan ends without an exec");
}

/* --- the three stages ----------------------------------------------------------------- */

static void close_from(int lowest) {
    if (syscall(SYS_close_range, lowest, ~0U, 0) == 0) return;
    for (int fd = lowest; fd < 65536; fd++) close(fd);
}

static void close_all_but(int keep) {
    for (int fd = 0; fd < keep; fd++) close(fd);
    close_from(keep + 1);
}

/* Returns only in a zygote's child, ready to run the code. */
static void stage_c(const struct plan *plan, int from, const char *language) {
    static char prefix[128];
    snprintf(prefix, sizeof prefix, "baponi: cannot start %s", language);
    fail_prefix = prefix;
    fail_code = EXIT_START;
    process_records(plan, from);
}

static void stage_b(const struct plan *plan) {
    fail_code = EXIT_SETUP;
    int i = 0;
    while (i < plan->count && !is(&plan->records[i], "code")) i += 1 + filesystem_record(&plan->records[i]);
    if (i >= plan->count) fail("the plan has no code record");
    pid_t child = fork();
    check(child, "fork", "code");
    if (child == 0) {
        close(FD_STATUS);
        stage_c(plan, i + 1, arg(&plan->records[i], 1));
        return;
    }
    close_all_but(FD_STATUS);
    int code_status = 0, have_status = 0;
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: nothing of the sandbox is left */
        }
        if (pid == child) {
            code_status = status;
            have_status = 1;
            kill(-1, SIGKILL); /* the code is done: so is everything it started */
        }
    }
    if (have_status) {
        uint32_t wire = htonl((uint32_t)code_status);
        if (write(FD_STATUS, &wire, sizeof wire) != sizeof wire) _exit(EXIT_SETUP);
    }
    _exit(0);
}

static void reset_signals(void) {
    /* The supervisor is a Python process: SIGPIPE is ignored there, and the code must not
     * inherit that (`yes | head` would complain instead of ending quietly). */
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* What a sandbox's first process does before it enters anything: default signals, only its
 * own fds, and the plan read and parsed. */
static void begin(struct plan *plan) {
    reset_signals();
    close_from(FD_STATUS + 1);
    size_t size;
    char *raw = read_all(FD_PLAN, &size);
    close(FD_PLAN);
    parse_plan(raw, size, plan);
}

/* In the new namespaces: the supervisor, root on the host, writes our id maps and moves us
 * into our cgroup; then we are root of the user namespace, to die with our parent. */
static void await_maps(void) {
    check((int)write(FD_UP, "u", 1), "write", "up");
    char answer;
    if (read(FD_DOWN, &answer, 1) != 1 || answer != 'm') _exit(EXIT_NO_MAPS);
    check(setresgid(0, 0, 0), "setresgid", NULL);
    check(setresuid(0, 0, 0), "setresuid", NULL);
    check(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG", NULL); /* setresuid cleared it */
}

#ifdef BAPONI_LIBRARY
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Page runs (start, length pairs) that a trial run in the zygote wrote: what running any
 * code writes (reference counts of the interpreter's own objects, its allocator's free
 * lists, the stack), learned once by python_bootstrap.py's _baponi_trial. */
static unsigned long *written_runs;
static int written_count;

int baponi_zygote_learn(const unsigned long *runs, int count) {
    unsigned long *copy = malloc(sizeof *runs * 2 * (size_t)count);
    if (!copy) return -1;
    memcpy(copy, runs, sizeof *runs * 2 * (size_t)count);
    free(written_runs);
    written_runs = copy;
    written_count = count;
    return 0;
}

/* Give this process its own copy of the pages the code's run will write, while the sandbox is
 * idle: each first write to a page shared with the zygote would be a fault and a copy in the
 * call. Only those the trial wrote (~1.8 MiB of the zygote's ~7 MiB writable): copying all of
 * them cost ~4 ms of CPU a sandbox, a third of the CPU an execution took under load. */
static void own_written_pages(void) {
    for (int i = 0; i < written_count; i++) /* an optimisation only: a run since unmapped fails */
        madvise((void *)written_runs[2 * i], written_runs[2 * i + 1], MADV_POPULATE_WRITE);
}

/* B of a zygote's sandbox: the clone that made it made its namespaces, so it is init from
 * the start. No A: every process forked from the zygote copies the page tables of the whole
 * interpreter and frees them at its exit, and A did both for nothing but the namespaces.
 * Its parent is the supervisor, outside its pid namespace (getppid() says 0): the supervisor
 * holds the down pipe's other end until B reports, so a hang-up there means it died before
 * B could tie itself to it. Reports "0" for its pid: init is the process the zygote made. */
static void launch_as_init(void) {
    struct plan plan;
    begin(&plan);
    await_maps();
    struct pollfd down = {.fd = FD_DOWN, .events = POLLIN};
    if (poll(&down, 1, 0) != 0) _exit(EXIT_ORPHAN);
    check(unshare(CLONE_NEWCGROUP), "unshare", "cgroup"); /* after the supervisor moved us into ours */
    check((int)write(FD_UP, "0", 1), "write", "up");
    close(FD_UP);
    close(FD_DOWN);
    stage_b(&plan);
}

/* In the zygote: B's pid (or -1); in the sandbox's C, 0. `fds` are the launcher's fds 0-7
 * (see the top), in order. A raw clone, as glibc's fork cannot take CLONE_PARENT: B then runs
 * only this file's code, and its fork (glibc's) gives C a consistent C library. */
int baponi_zygote_spawn(const int fds[8]) {
    if (setgroups(0, NULL) < 0) return -1; /* no supplementary group of the host's goes along */
    pid_t b = (pid_t)syscall(SYS_clone, CLONE_PARENT | NAMESPACES | SIGCHLD, 0, NULL, NULL, 0);
    if (b != 0) return (int)b;
    int high[8];
    for (int i = 0; i < 8; i++) { /* via high numbers: a source may sit on another's target */
        high[i] = fcntl(fds[i], F_DUPFD, 64);
        if (high[i] < 0) _exit(EXIT_ENTRY);
    }
    for (int i = 0; i < 8; i++) {
        if (dup2(high[i], i) < 0) _exit(EXIT_ENTRY);
    }
    in_zygote = 1;
    launch_as_init();
    own_written_pages();
    return 0;
}
#else
/* A: enter the namespaces, then stay as B's parent: B dies with A (parent-death signal), and
 * A with the supervisor. */
static void launch(void) {
    struct plan plan;
    begin(&plan);
    pid_t supervisor = getppid();
    check(setgroups(0, NULL), "setgroups", NULL);
    check(unshare(NAMESPACES), "unshare", NULL);
    await_maps();
    if (getppid() != supervisor) _exit(EXIT_ORPHAN); /* it died before we could tie ourselves to it */
    check(unshare(CLONE_NEWCGROUP), "unshare", "cgroup"); /* after the supervisor moved us into ours */
    pid_t init = fork();
    check(init, "fork", "init");
    if (init == 0) {
        close(FD_UP);
        close(FD_DOWN);
        check(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG", NULL);
        stage_b(&plan);
        return;
    }
    dprintf(FD_UP, "%d", init);
    close_from(0);
    while (waitpid(init, NULL, 0) < 0 && errno == EINTR) {
    }
    _exit(0);
}
int main(void) {
    launch(); /* never returns here: C execs the code's interpreter */
    return EXIT_START;
}
#endif
