#ifndef C_AIOTASK_SHIMS_H
#define C_AIOTASK_SHIMS_H

#include <sys/types.h>

/// Starts `path` with `argv` and `envp` in a new process group, its standard streams set to the given
/// descriptors, every other descriptor closed, every signal at its default disposition and none blocked.
/// Returns the child's pid, or -errno on failure.
pid_t aiotask_spawn(const char *path, char *const argv[], char *const envp[],
                    int stdin_fd, int stdout_fd, int stderr_fd);

/// Asks the kernel to send `signal` to the calling process when its parent thread exits.
/// Returns 0, or -errno on failure.
int aiotask_set_parent_death_signal(int signal);

/// Creates a close-on-exec pipe, enlarged to `size` bytes where the system allows.
/// Returns 0, or -errno on failure.
int aiotask_pipe(int fds[2], int size);

/// Sets glibc's mmap and trim thresholds (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD); 0 on success.
int aiotask_set_malloc_thresholds(int mmap_threshold, int trim_threshold);

#endif
