#ifndef C_AIOTASK_SHIMS_H
#define C_AIOTASK_SHIMS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/// Starts `path` (searched in `PATH` when `search_path` is true) with `argv` and `envp` in a new process group,
/// `fds[i]` as its descriptor `i` for each `i` below `fd_count` (at least 3: its standard streams), every other
/// descriptor closed, every signal at its default disposition and none blocked. No descriptor of `fds` may be below
/// `fd_count` (a `dup2` onto it would clobber it first). With a `landlock_ruleset` (a descriptor from
/// `aiotask_landlock_create_ruleset`; -1 for none) the child sets no-new-privileges and enters the ruleset's
/// Landlock domain before exec, and is not started at all if it cannot. Returns the child's pid, or -errno on
/// failure.
pid_t aiotask_spawn(const char *path, char *const argv[], char *const envp[], const int fds[], int fd_count,
                    bool search_path, int landlock_ruleset);

/// The Landlock ABI version the kernel offers (1 or more), or -errno: -ENOSYS without Landlock, -EOPNOTSUPP when
/// it is built in but not enabled, -EPERM (or another) when a system-call filter refuses it.
int aiotask_landlock_abi(void);

/// Creates a Landlock ruleset handling the file-system rights `handled_access_fs` (LANDLOCK_ACCESS_FS_* bits).
/// Returns its descriptor (close-on-exec), or -errno.
int aiotask_landlock_create_ruleset(uint64_t handled_access_fs);

/// Adds to `ruleset` a rule allowing `directory_access` beneath `path` when it is a directory, `file_access` on it
/// when it is any other file. Returns 0; 1, adding nothing, when `path` is a symbolic link (never followed);
/// -errno on failure.
int aiotask_landlock_allow(int ruleset, const char *path, uint64_t directory_access, uint64_t file_access);

/// Opens a descriptor that refers to process `pid` (`pidfd_open`, Linux 5.3) and becomes readable once it has
/// exited. Returns the descriptor (close-on-exec), or -errno on failure.
int aiotask_pidfd_open(pid_t pid);

/// Puts every signal of the calling process back to its default disposition and unblocks every signal in the
/// calling thread: for a thread about to `exec` a program, which keeps both. Swift's runtime runs async code on
/// threads that block most signals, and a program executed from one would start with them blocked.
void aiotask_reset_signals(void);

/// Unblocks every signal in the calling thread (dispositions are left as they are); a system call only the first
/// time on each thread.
void aiotask_unblock_signals(void);

/// Makes the calling process a child subreaper: orphans among its descendants are reparented to it instead of to
/// init. Returns 0, or -errno on failure.
int aiotask_set_child_subreaper(void);

/// Asks the kernel to send `signal` to the calling process when its parent thread exits.
/// Returns 0, or -errno on failure.
int aiotask_set_parent_death_signal(int signal);

/// Creates a close-on-exec pipe, enlarged to `size` bytes where the system allows.
/// Returns 0, or -errno on failure.
int aiotask_pipe(int fds[2], int size);

/// Sets glibc's mmap and trim thresholds (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD); 0 on success.
int aiotask_set_malloc_thresholds(int mmap_threshold, int trim_threshold);

/// Size of the memory a pool process shares with the daemon for task claims.
#define AIOTASK_CLAIMS_SIZE 4096

/// Creates the anonymous memory of a pool process's task claims (memfd, close-on-exec, zeroed).
/// Returns the descriptor, or -errno on failure.
int aiotask_claims_create(void);

/// Maps task-claims memory created by `aiotask_claims_create` (shared, read-write). NULL on failure.
void *aiotask_claims_map(int fd);

/// Unmaps task-claims memory.
void aiotask_claims_unmap(void *claims);

/// The pool process: says that it claims every task before starting it (see `aiotask_claims_claim`).
void aiotask_claims_announce(void *claims);

/// The daemon: whether the process announced that it claims its tasks.
bool aiotask_claims_announced(void *claims);

/// The pool process: claims the task at `index` (its position in the stream of tasks it was sent), which it
/// may start only if this returns true; false when the daemon withdrew it.
bool aiotask_claims_claim(void *claims, uint32_t index);

/// The daemon: withdraws every task not claimed yet, of the `sent` tasks sent so far, provided that every
/// task before index `from` is claimed; false, changing nothing, if not. On success `first_withdrawn` is the
/// index of the first task withdrawn: tasks before it were claimed (or withdrawn before).
bool aiotask_claims_withdraw(void *claims, uint32_t from, uint32_t sent, uint32_t *first_withdrawn);

/// Stores `value` at `word` with release ordering (a flag in memory shared with another process).
void aiotask_store_release(uint32_t *word, uint32_t value);

/// Loads the value at `word` with acquire ordering.
uint32_t aiotask_load_acquire(const uint32_t *word);

/// The credentials of the process at the other end of the Unix stream socket `fd`, as the kernel recorded them
/// when it connected (`SO_PEERCRED`). Returns 0; 1, setting nothing, when `fd` is not a Unix socket (a TCP
/// socket would report no credentials, not an error); -errno on failure.
int aiotask_peer_credentials(int fd, uint32_t *uid, uint32_t *gid, int32_t *pid);

/// The supplementary groups of the process at the other end of the Unix stream socket `fd` when it connected
/// (`SO_PEERGROUPS`, Linux 4.13), up to `capacity` of them into `groups`. Returns how many the peer has, which
/// may exceed `capacity` (nothing is stored then: call again with room for them all); -errno on failure
/// (-ENOPROTOOPT on a kernel without `SO_PEERGROUPS`).
int aiotask_peer_groups(int fd, uint32_t *groups, int capacity);

#endif
