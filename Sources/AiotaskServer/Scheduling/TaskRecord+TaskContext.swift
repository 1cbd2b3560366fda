extension TaskRecord {
    /// What a pool process is told about this task for its handler's ``TaskContext``: its id and the timeout it runs
    /// with, its client's or else the server's `task-timeout`, as the slot that runs it applies it.
    ///
    /// It takes the one setting it needs rather than the configuration, which would be copied for each task.
    func context(defaultTimeout: Duration?) -> TaskContextHeader {
        TaskContextHeader(id: id, timeout: timeout ?? defaultTimeout, traceParent: trace?.parent)
    }
}
