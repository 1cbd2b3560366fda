extension Daemon {
    /// The entry point of an executable whose tasks are handled by a Swift closure that also takes each task's
    /// ``TaskContext``: its id, its deadline and a logger.
    ///
    /// It runs like the closure form, ``main(handler:)-(TaskHandler)``: the same options as `aiotaskd`, without
    /// `--handler`, and a pool made of re-executions of this same binary.
    ///
    /// ```swift
    /// @main struct Thumbnails {
    ///     static func main() async {
    ///         await Daemon.main { task, context in
    ///             context.logger.info("resizing \(task.readableBytes) bytes")
    ///             return try resize(task, before: context.deadline)
    ///         }
    ///     }
    /// }
    /// ```
    public static func main(handler: @escaping TaskContextHandler) async -> Never {
        await runPoolProcessIfRequested(handler: handler)
        // From here on this process is the supervisor, which never runs the handler itself: its pool processes are
        // re-executions of this binary, which stay in the call above. The closure form's supervisor serves as is.
        await main(handler: { _ in preconditionFailure("the supervisor of the pool ran a handler") } as TaskHandler)
    }

    /// In a pool process, serves tasks with `handler`, which also takes each task's ``TaskContext`` (role `handler`),
    /// or becomes the external handler (role `exec`), and never returns; in the supervisor, returns at once.
    public static func runPoolProcessIfRequested(handler: @escaping TaskContextHandler) async {
        switch WorkerRole.current {
        case .handler: await WorkerRole.serveTasks(with: handler)
        case .exec: WorkerRole.execExternalHandler(arguments: Array(CommandLine.arguments.dropFirst()))
        case nil: return
        }
    }
}
