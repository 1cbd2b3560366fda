import AiotaskProtocol
import Logging

/// Processes on their way out — timed out, cancelled, recycled, or stopped at shutdown — kept until they exit.
///
/// Their replies are ignored; their exit is logged. Shutdown waits for this set to empty.
final class RetiredProcesses: WorkerProcessDelegate {
    private var processes: [Int32: WorkerProcess] = [:]
    private var onEmpty: [() -> Void] = []
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    var count: Int { processes.count }

    func adopt(_ process: WorkerProcess) {
        guard !process.hasExited else { return }
        processes[process.pid] = process
    }

    /// Calls `body` once no retired process is left (at once if none is).
    func whenEmpty(_ body: @escaping () -> Void) {
        if processes.isEmpty { body() } else { onEmpty.append(body) }
    }

    /// Kills every retired process at once.
    func killAll() {
        for process in processes.values { process.kill() }
    }

    func processIsReady(_ process: WorkerProcess) {}

    func process(_ process: WorkerProcess, didReply reply: HandlerReply) {}

    func process(_ process: WorkerProcess, brokeLink reason: String) {}

    func process(_ process: WorkerProcess, didExit status: ExitStatus) {
        logger.debug("retired worker process \(status)", metadata: ["worker_pid": "\(process.pid)"])
        processes[process.pid] = nil
        if processes.isEmpty {
            let callbacks = onEmpty
            onEmpty = []
            callbacks.forEach { $0() }
        }
    }
}
