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

pid_t aiotask_spawn(const char *path, char *const argv[], char *const envp[], const int fds[], int fd_count,
                    bool search_path) {
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
