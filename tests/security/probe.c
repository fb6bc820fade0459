/* The escape suite's probe: what a root process inside a sandbox tries first, one harmless
 * attempt per line. Built static by tests/security.rs (`cc -static`), so it runs in any image.
 *
 *   probe syscalls            every namespace, mount and kernel-surface syscall; one line each:
 *                             "NAME refused ERRNO" or "NAME ALLOWED"
 *   probe open PATH...        "PATH ok" or "PATH ERRNO" for a read-write open of each
 *   probe fds                 the open fds of this process, space-separated
 *   probe exe-grab SECONDS    see exe_grab below (CVE-2019-5736)
 *   probe openmany N          opens /dev/null N times: "opened K ERRNO"
 *   probe memhog MIB          allocates and touches MIB MiB
 *   probe connect PORT [IP]   TCP connect to IP:PORT (default 127.0.0.1): "connect ok" or "connect ERRNO"
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/sched.h>

static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT";
    case EROFS: return "EROFS";
    case ETXTBSY: return "ETXTBSY";
    case EBADF: return "EBADF";
    case EMFILE: return "EMFILE";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENETUNREACH: return "ENETUNREACH";
    case EBUSY: return "EBUSY";
    case ENOTDIR: return "ENOTDIR";
    case EFAULT: return "EFAULT";
    case ENXIO: return "ENXIO";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "errno%d", e);
        return buf;
    }
    }
}

static void report(const char *name, long rc) {
    if (rc < 0)
        printf("%s refused %s\n", name, errname(errno));
    else
        printf("%s ALLOWED\n", name);
    fflush(stdout);
}

/* clone(2) with namespace flags: the child exits at once if it is ever created. */
static void try_clone(const char *name, unsigned long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    report(name, pid);
}

/* The attempts below must never run on a host: they try to mount and unmount. */
static int inside_a_sandbox(void) {
    char comm[32] = {0};
    int fd = open("/proc/1/comm", O_RDONLY);
    if (fd >= 0) {
        read(fd, comm, sizeof comm - 1);
        close(fd);
    }
    return !strcmp(comm, "guest-agent\n");
}

static void syscalls(void) {
    if (!inside_a_sandbox()) {
        fprintf(stderr, "probe: syscalls runs only inside a sandbox (PID 1 is the guest agent)\n");
        exit(2);
    }
    report("unshare-user", unshare(CLONE_NEWUSER));
    report("unshare-mount", unshare(CLONE_NEWNS));
    report("unshare-net", unshare(CLONE_NEWNET));
    try_clone("clone-user", CLONE_NEWUSER);
    try_clone("clone-mount", CLONE_NEWNS);
    try_clone("clone-net", CLONE_NEWNET);
    try_clone("clone-pid", CLONE_NEWPID);
    try_clone("clone-uts", CLONE_NEWUTS);
    try_clone("clone-ipc", CLONE_NEWIPC);
    try_clone("clone-cgroup", CLONE_NEWCGROUP);
    {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_NEWUSER;
        args.exit_signal = SIGCHLD;
        long pid = syscall(SYS_clone3, &args, sizeof args);
        if (pid == 0)
            _exit(0);
        if (pid > 0)
            waitpid((pid_t)pid, NULL, 0);
        report("clone3-user", pid);
    }
    {
        int fd = open("/proc/self/ns/net", O_RDONLY);
        report("setns", fd < 0 ? fd : syscall(SYS_setns, fd, 0));
    }
    mkdir("/tmp/probe-mnt", 0700);
    report("mount-tmpfs", mount("none", "/tmp/probe-mnt", "tmpfs", 0, NULL));
    report("mount-bind-root", mount("/", "/tmp/probe-mnt", NULL, MS_BIND, NULL));
    report("umount", umount2("/dev/shm", MNT_DETACH));
    report("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp/probe-mnt"));
    report("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/", 1));
    report("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
    report("keyctl", syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, 0));
    report("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, -3 /* session keyring */));
    {
        char attr[128];
        memset(attr, 0, sizeof attr);
        report("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, attr, sizeof attr));
    }
    {
        char attr[128];
        memset(attr, 0, sizeof attr);
        attr[4] = 112; /* attr.size; type 0 (hardware), config 0 (cycles) */
        report("perf_event_open", syscall(SYS_perf_event_open, attr, 0, -1, -1, 0));
    }
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    {
        char params[120];
        memset(params, 0, sizeof params);
        report("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    }
    {
        char handle[136];
        memset(handle, 0, sizeof handle);
        report("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, handle, O_RDONLY));
    }
    report("init_module", syscall(SYS_init_module, "", 0, ""));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("mknod-block", mknod("/tmp/probe-blk", S_IFBLK | 0600, makedev(7, 0)));
    report("mknod-char", mknod("/tmp/probe-chr", S_IFCHR | 0600, makedev(10, 232)));
    report("syslog", syscall(SYS_syslog, 3 /* SYSLOG_ACTION_READ_ALL */, NULL, 0));
    report("iopl", syscall(SYS_iopl, 3));
    {
        /* Setting the clock to the time it already says: harmless even if it were allowed. */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        report("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, &now));
    }
}

static void print_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        printf("opendir %s\n", errname(errno));
        return;
    }
    int self = dirfd(d);
    struct dirent *e;
    int first = 1;
    int fds[4096], n = 0;
    while ((e = readdir(d)) && n < 4096) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd != self)
            fds[n++] = fd;
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (fds[j] < fds[i]) {
                int t = fds[i];
                fds[i] = fds[j];
                fds[j] = t;
            }
    for (int i = 0; i < n; i++) {
        printf(first ? "%d" : " %d", fds[i]);
        first = 0;
    }
    printf("\n");
}

/* CVE-2019-5736 as a behaviour: watch /proc for a process running a binary that is neither
 * busybox nor this probe (the host binary, run through a `#!/proc/self/exe` script), take an
 * O_PATH fd of its exe while it runs, wait until it is gone, then try to reopen that fd for
 * writing, as the exploit did. Prints the exe, "mount ro|rw" (the mount the fd reaches the
 * file through) and "reopen ok" (the host binary is writable) or "reopen ERRNO"; "exe none"
 * when nothing showed up within SECONDS. */
static int exe_grab(int seconds, const char *mine) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9')
                continue;
            int pid = atoi(e->d_name);
            if (pid == getpid())
                continue;
            char path[300], target[512];
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            ssize_t n = readlink(path, target, sizeof target - 1);
            if (n <= 0)
                continue;
            target[n] = 0;
            if (!strcmp(target, "/bin/busybox") || !strcmp(target, mine))
                continue;
            int fd = open(path, O_PATH);
            if (fd < 0)
                continue;
            closedir(d);
            while (kill(pid, 0) == 0)
                usleep(1000);
            char again[64];
            snprintf(again, sizeof again, "/proc/self/fd/%d", fd);
            struct statvfs st;
            int ro = fstatvfs(fd, &st) == 0 && (st.f_flag & ST_RDONLY);
            int w = open(again, O_WRONLY);
            printf("exe %s\n", target);
            printf("mount %s\n", ro ? "ro" : "rw");
            if (w >= 0)
                printf("reopen ok\n");
            else
                printf("reopen %s\n", errname(errno));
            return 0;
        }
        if (d)
            closedir(d);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= seconds) {
            printf("exe none\n");
            return 1;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: probe syscalls|open PATH...|fds|exe-grab SECONDS|openmany N|memhog MIB|connect PORT [IP]\n");
        return 2;
    }
    if (!strcmp(argv[1], "syscalls")) {
        syscalls();
    } else if (!strcmp(argv[1], "open")) {
        for (int i = 2; i < argc; i++) {
            int fd = open(argv[i], O_RDWR | O_NONBLOCK | O_NOCTTY);
            if (fd >= 0)
                printf("%s ok\n", argv[i]);
            else
                printf("%s %s\n", argv[i], errname(errno));
        }
    } else if (!strcmp(argv[1], "fds")) {
        print_fds();
    } else if (!strcmp(argv[1], "exe-grab") && argc > 2) {
        char mine[512];
        ssize_t n = readlink("/proc/self/exe", mine, sizeof mine - 1);
        mine[n > 0 ? n : 0] = 0;
        return exe_grab(atoi(argv[2]), mine);
    } else if (!strcmp(argv[1], "openmany") && argc > 2) {
        int want = atoi(argv[2]), got = 0, err = 0;
        for (; got < want; got++)
            if (open("/dev/null", O_RDONLY) < 0) {
                err = errno;
                break;
            }
        printf("opened %d %s\n", got, err ? errname(err) : "none");
    } else if (!strcmp(argv[1], "memhog") && argc > 2) {
        size_t mib = (size_t)atoi(argv[2]);
        for (size_t i = 0; i < mib; i++) {
            char *p = malloc(1 << 20);
            if (!p) {
                printf("malloc failed at %zu MiB\n", i);
                return 1;
            }
            memset(p, 1, 1 << 20);
        }
        printf("allocated %zu MiB\n", mib);
    } else if (!strcmp(argv[1], "connect") && argc > 2) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((unsigned short)atoi(argv[2]));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (argc > 3 && inet_pton(AF_INET, argv[3], &a.sin_addr) != 1) {
            printf("connect EINVAL\n");
            return 0;
        }
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0)
            printf("connect ok\n");
        else
            printf("connect %s\n", errname(errno));
    } else {
        fprintf(stderr, "probe: unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
