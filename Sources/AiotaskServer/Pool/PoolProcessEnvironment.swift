/// What the server puts into a pool process's environment, and what the pool-process runtime
/// (`PoolProcessRole` in AiotaskWorker) reads back: which role to take, which supervisor to serve, which slot it holds.
package enum PoolProcessEnvironment {
    /// The role a re-executed binary takes: ``handlerRole`` or ``execRole``.
    package static let roleKey = "AIOTASK_ROLE"
    /// The supervisor's pid: a pool process whose parent is another (the supervisor died before it started)
    /// exits at once.
    package static let daemonPIDKey = "AIOTASK_SUPERVISOR_PID"
    /// The slot's index, in `0..<workers`, which a handler may use to pick a GPU, a port or a shard.
    package static let workerIndexKey = "AIOTASK_WORKER_INDEX"
    /// Serve tasks with the binary's own Swift handler.
    package static let handlerRole = "handler"
    /// Become the external handler program named by the arguments.
    package static let execRole = "exec"
    /// The running binary, which pool processes of a Swift handler re-execute.
    package static let currentExecutablePath = "/proc/self/exe"
}
