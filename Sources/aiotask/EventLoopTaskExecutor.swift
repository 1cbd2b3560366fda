import NIOCore

/// Runs Swift tasks on a NIO event loop, so that a benchmark's tasks run on the thread of the client connection
/// they use: handing a task to the connection and resuming with its result then need no thread switch.
final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: the only state is the event loop, which is Sendable and never changes.
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
