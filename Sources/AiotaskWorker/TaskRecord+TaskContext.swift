extension TaskRecord {
    /// What a pool process is told about this task for its handler's ``TaskContext``: its id and the timeout it runs
    /// with, its client's or else the server's `task-timeout`, as the slot that runs it applies it.
    func context(in configuration: WorkerConfiguration) -> TaskContextHeader {
        TaskContextHeader(id: id, timeout: timeout ?? configuration.defaultTaskTimeout)
    }
}
