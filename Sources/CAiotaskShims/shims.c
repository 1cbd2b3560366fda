#define _GNU_SOURCE
#include "CAiotaskShims.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <pthread.h>

/* Landlock's system calls have the same numbers on every architecture; older headers lack them. */
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#define AIOTASK_LANDLOCK_CREATE_RULESET_VERSION (1U << 0)
#define AIOTASK_LANDLOCK_RULE_PATH_BENEATH 1
#define AIOTASK_CLOSE_RANGE_CLOEXEC (1U << 2)

/* The kernel's struct landlock_ruleset_attr and landlock_path_beneath_attr (the latter packed), declared here so
 * that no header of a particular kernel is needed. Only the first field of the ruleset's attributes is used: its
 * size says so to the kernel, which then needs no network or scope rights. */
struct aiotask_landlock_ruleset_attr {
    uint64_t handled_access_fs;
};

struct aiotask_landlock_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

static pid_t spawn_confined(const char *path, char *const argv[], char *const envp[], const int fds[], int fd_count,
                            bool search_path, int landlock_ruleset);

pid_t aiotask_spawn(const char *path, char *const argv[], char *const envp[], const int fds[], int fd_count,
                    bool search_path, int landlock_ruleset) {
    if (landlock_ruleset >= 0) return spawn_confined(path, argv, envp, fds, fd_count, search_path, landlock_ruleset);
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    sigset_t all_signals, no_signals;
    pid_t pid = -1;
    int error;

    if ((error = posix_spawn_file_actions_init(&actions)) != 0) return -error;
    if ((error = posix_spawnattr_init(&attributes)) != 0) {
        posix_spawn_file_actions_destroy(&actions);
        return -error;
    }
    sigfillset(&all_signals);
    sigemptyset(&no_signals);
    for (int target = 0; target < fd_count; target++) {
        if ((error = posix_spawn_file_actions_adddup2(&actions, fds[target], target)) != 0) goto done;
    }
    if ((error = posix_spawn_file_actions_addclosefrom_np(&actions, fd_count)) != 0) goto done;
    if ((error = posix_spawnattr_setpgroup(&attributes, 0)) != 0) goto done;
    if ((error = posix_spawnattr_setsigdefault(&attributes, &all_signals)) != 0) goto done;
    if ((error = posix_spawnattr_setsigmask(&attributes, &no_signals)) != 0) goto done;
    if ((error = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF
                                                           | POSIX_SPAWN_SETSIGMASK)) != 0) goto done;
    error = search_path ? posix_spawnp(&pid, path, &actions, &attributes, argv, envp)
                        : posix_spawn(&pid, path, &actions, &attributes, argv, envp);

done:
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    return error == 0 ? pid : -error;
}

/* Reports `error` through the close-on-exec pipe `report` and ends the child (a vfork child: no exit handlers). */
static void child_failed(int report, int error) {
    (void)syscall(SYS_write, report, &error, sizeof error);
    _exit(127);
}

/*
 * aiotask_spawn with a Landlock domain: what posix_spawn does, by hand, because posix_spawn runs no code of ours
 * between fork and exec, and the domain must be entered there — before the program's first instruction, and in a
 * process that is still ours (after exec a program could not be trusted to enter it). vfork, like glibc's
 * posix_spawn (CLONE_VM | CLONE_VFORK): no copy of the daemon's page tables, however large its heap. The child
 * shares the parent's memory and runs on its stack until exec, so it makes only direct system calls, with every
 * signal blocked until its dispositions are back to default (a handler of the parent must never run in it). It
 * reports a failure through a close-on-exec pipe (which also works when a sanitizer turns vfork into fork); the
 * end of the pipe without a word means exec succeeded.
 */
static pid_t spawn_confined(const char *path, char *const argv[], char *const envp[], const int fds[], int fd_count,
                            bool search_path, int landlock_ruleset) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -errno;
    sigset_t all_signals, previous;
    sigfillset(&all_signals);
    pthread_sigmask(SIG_SETMASK, &all_signals, &previous);
    pid_t pid = vfork();
    if (pid == 0) {
        static const unsigned long default_action[4] = {0, 0, 0, 0};
        static const unsigned long no_signals[1] = {0};
        for (int signal = 1; signal <= 64; signal++) {
            (void)syscall(SYS_rt_sigaction, signal, default_action, NULL, sizeof no_signals);
        }
        if (syscall(SYS_setpgid, 0, 0) != 0) child_failed(report[1], errno);
        /* The kernel accepts a Landlock domain only from a process that can gain no privileges (or holds
         * CAP_SYS_ADMIN); the service has NoNewPrivileges=yes anyway. Both are inherited across exec and fork, and
         * nothing can lift them: the handler and everything it starts stay confined. */
        if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_failed(report[1], errno);
        if (syscall(SYS_landlock_restrict_self, landlock_ruleset, 0) != 0) child_failed(report[1], errno);
        /* Every source is above fd_count (the caller sees to it), so no dup3 overwrites a later one's source (dup3, not
         * dup2: some architectures have no dup2 system call). */
        for (int target = 0; target < fd_count; target++) {
            if (syscall(SYS_dup3, fds[target], target, 0) < 0) child_failed(report[1], errno);
        }
        /* Close-on-exec rather than closed, so that the report pipe stays open until exec (Linux 5.11; Landlock
         * needs 5.13). */
        if (syscall(SYS_close_range, fd_count, ~0U, AIOTASK_CLOSE_RANGE_CLOEXEC) != 0) child_failed(report[1], errno);
        (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, no_signals, NULL, sizeof no_signals);
        if (search_path) {
            execvpe(path, argv, envp);
        } else {
            execve(path, argv, envp);
        }
        child_failed(report[1], errno);
    }
    int error = pid < 0 ? errno : 0;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(report[1]);
    if (pid > 0) {
        int child_error = 0;
        ssize_t count;
        do {
            count = read(report[0], &child_error, sizeof child_error);
        } while (count < 0 && errno == EINTR);
        if (count == (ssize_t)sizeof child_error) {
            /* The child never ran the program and has exited: reap it, as posix_spawn does. */
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
            error = child_error != 0 ? child_error : EIO;
        }
    }
    close(report[0]);
    return error == 0 ? pid : -error;
}

int aiotask_landlock_abi(void) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, AIOTASK_LANDLOCK_CREATE_RULESET_VERSION);
    return abi >= 0 ? (int)abi : -errno;
}

int aiotask_landlock_create_ruleset(uint64_t handled_access_fs) {
    struct aiotask_landlock_ruleset_attr attributes = {.handled_access_fs = handled_access_fs};
    long fd = syscall(SYS_landlock_create_ruleset, &attributes, sizeof attributes, 0);
    return fd >= 0 ? (int)fd : -errno;
}

int aiotask_landlock_allow(int ruleset, const char *path, uint64_t directory_access, uint64_t file_access) {
    /* O_NOFOLLOW: a symbolic link gets no rule of its own (a rule on its target could open what is hidden). */
    int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat status;
    if (fstat(fd, &status) != 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    if (S_ISLNK(status.st_mode)) {
        close(fd);
        return 1;
    }
    struct aiotask_landlock_path_beneath_attr rule = {
        .allowed_access = S_ISDIR(status.st_mode) ? directory_access : file_access,
        .parent_fd = fd,
    };
    long result = syscall(SYS_landlock_add_rule, ruleset, AIOTASK_LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
    int error = errno;
    close(fd);
    return result == 0 ? 0 : -error;
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same number on every architecture */
#endif

int aiotask_pidfd_open(pid_t pid) {
    /* A pidfd is close-on-exec from the start: no other child inherits it. */
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    return fd >= 0 ? fd : -errno;
}

void aiotask_reset_signals(void) {
    /* The kernel's struct sigaction with SIG_DFL, no flags and an empty mask is all zeros on every architecture.
     * The system call, unlike sigaction(), also resets the C library's internal signals (glibc's posix_spawn
     * leaves SIGCANCEL ignored in the child, and exec keeps an ignored disposition). SIGKILL and SIGSTOP refuse,
     * harmlessly. */
    static const unsigned long default_action[4] = {0, 0, 0, 0};
    static const unsigned long no_signals[1] = {0};
    for (int signal = 1; signal <= 64; signal++) {
        (void)syscall(SYS_rt_sigaction, signal, default_action, NULL, sizeof no_signals);
    }
    (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, no_signals, NULL, sizeof no_signals);
}

void aiotask_unblock_signals(void) {
    /* Once per thread: nothing blocks signals again on a thread after it started, and this runs per task. */
    static __thread bool unblocked = false;
    static const unsigned long no_signals[1] = {0};
    if (unblocked) return;
    (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, no_signals, NULL, sizeof no_signals);
    unblocked = true;
}

int aiotask_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 ? 0 : -errno;
}

int aiotask_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0) == 0 ? 0 : -errno;
}

int aiotask_pipe(int fds[2], int size) {
    if (pipe2(fds, O_CLOEXEC) != 0) return -errno;
    (void)fcntl(fds[1], F_SETPIPE_SZ, size);
    return 0;
}

int aiotask_set_malloc_thresholds(int mmap_threshold, int trim_threshold) {
#ifdef __GLIBC__
    if (mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1) return -1;
    if (mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1) return -1;
    return 0;
#else
    (void)mmap_threshold;
    (void)trim_threshold;
    return -1;
#endif
}

/*
 * Task claims. One 64-bit word holds two stream indexes: the high half is `withdrawn_below` (tasks before it
 * that were not claimed are withdrawn), the low half `next` (one past the last task claimed). The process
 * claims task i only while i >= withdrawn_below, by moving `next` to i + 1; the daemon withdraws by moving
 * `withdrawn_below` to the number of tasks sent, once every task before the first it may withdraw is claimed
 * (so that none it still awaits an answer to is withdrawn). Both are compare-and-swap on the same word, so
 * exactly one of them wins each task. Indexes wrap around; they are compared as serial numbers (tasks in flight to one process
 * are far fewer than 2^31).
 */
struct aiotask_claims {
    uint64_t word;
    uint32_t announced;
};

static const uint32_t claims_magic = 0x61696f74; /* "aiot" */

int aiotask_claims_create(void) {
    int fd = memfd_create("aiotask-claims", MFD_CLOEXEC);
    if (fd < 0) return -errno;
    if (ftruncate(fd, AIOTASK_CLAIMS_SIZE) != 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

void *aiotask_claims_map(int fd) {
    void *memory = mmap(NULL, AIOTASK_CLAIMS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return memory == MAP_FAILED ? NULL : memory;
}

void aiotask_claims_unmap(void *claims) {
    munmap(claims, AIOTASK_CLAIMS_SIZE);
}

void aiotask_claims_announce(void *claims) {
    __atomic_store_n(&((struct aiotask_claims *)claims)->announced, claims_magic, __ATOMIC_RELEASE);
}

bool aiotask_claims_announced(void *claims) {
    return __atomic_load_n(&((struct aiotask_claims *)claims)->announced, __ATOMIC_ACQUIRE) == claims_magic;
}

bool aiotask_claims_claim(void *claims, uint32_t index) {
    uint64_t *word = &((struct aiotask_claims *)claims)->word;
    uint64_t current = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    while (1) {
        uint32_t withdrawn_below = (uint32_t)(current >> 32);
        if ((int32_t)(index - withdrawn_below) < 0) return false;
        uint64_t claimed = ((uint64_t)withdrawn_below << 32) | (uint32_t)(index + 1);
        if (__atomic_compare_exchange_n(word, &current, claimed, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return true;
    }
}

bool aiotask_claims_withdraw(void *claims, uint32_t from, uint32_t sent, uint32_t *first_withdrawn) {
    uint64_t *word = &((struct aiotask_claims *)claims)->word;
    uint64_t current = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    while (1) {
        uint32_t next = (uint32_t)current;
        if ((int32_t)(next - from) < 0) return false;
        uint64_t withdrawn = ((uint64_t)sent << 32) | next;
        if (__atomic_compare_exchange_n(word, &current, withdrawn, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            *first_withdrawn = next;
            return true;
        }
    }
}

void aiotask_store_release(uint32_t *word, uint32_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}

uint32_t aiotask_load_acquire(const uint32_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

int aiotask_peer_credentials(int fd, uint32_t *uid, uint32_t *gid, int32_t *pid) {
    struct sockaddr_storage address;
    socklen_t address_length = sizeof(address);
    if (getsockname(fd, (struct sockaddr *)&address, &address_length) != 0) return -errno;
    if (address.ss_family != AF_UNIX) return 1;
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -errno;
    *uid = credentials.uid;
    *gid = credentials.gid;
    *pid = credentials.pid;
    return 0;
}

int aiotask_peer_groups(int fd, uint32_t *groups, int capacity) {
    socklen_t length = (socklen_t)(capacity > 0 ? capacity : 0) * sizeof(gid_t);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, capacity > 0 ? groups : NULL, &length) != 0) {
        // ERANGE: the groups do not fit; `length` says how many bytes they take.
        if (errno == ERANGE) return (int)(length / sizeof(gid_t));
        return -errno;
    }
    return (int)(length / sizeof(gid_t));
}
