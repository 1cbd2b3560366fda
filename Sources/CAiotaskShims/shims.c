#define _GNU_SOURCE
#include "CAiotaskShims.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>

pid_t aiotask_spawn(const char *path, char *const argv[], char *const envp[],
                    int stdin_fd, int stdout_fd, int stderr_fd) {
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
    if ((error = posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0)) != 0) goto done;
    if ((error = posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1)) != 0) goto done;
    if ((error = posix_spawn_file_actions_adddup2(&actions, stderr_fd, 2)) != 0) goto done;
    if ((error = posix_spawn_file_actions_addclosefrom_np(&actions, 3)) != 0) goto done;
    if ((error = posix_spawnattr_setpgroup(&attributes, 0)) != 0) goto done;
    if ((error = posix_spawnattr_setsigdefault(&attributes, &all_signals)) != 0) goto done;
    if ((error = posix_spawnattr_setsigmask(&attributes, &no_signals)) != 0) goto done;
    if ((error = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF
                                                           | POSIX_SPAWN_SETSIGMASK)) != 0) goto done;
    error = posix_spawn(&pid, path, &actions, &attributes, argv, envp);

done:
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    return error == 0 ? pid : -error;
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
