import AiotaskChildProcess
import CAiotaskShims
import Dispatch
import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Takes back and kills the processes a handler leaves behind.
///
/// A handler can escape its process group (`setsid`, a double fork): killing the group on a timeout or cancel
/// then misses those processes, and they used to be reparented to init and run on after the task, and after the
/// daemon. ``start(logger:)`` makes the daemon a *child subreaper* (`PR_SET_CHILD_SUBREAPER`), so the kernel
/// reparents every orphan among its descendants to it. Such an adopted process is any child of the daemon that
/// is not a pool process (see ``poolProcesses``). The reaper:
///
/// - kills the live ones a pool process leaves (those carrying its `AIOTASK_WORKER_INDEX`, or none) once that
///   process has ended — timed out, cancelled, its client gone, crashed, recycled — and every one at shutdown,
///   logging each at warning with its pid and command line;
/// - reaps the ones that exit by themselves (a subreaper must, or they stay zombies), once a second.
///
/// Only the daemon does this (`Daemon.run`): a program that runs a server in-process is left as it is.
package final class OrphanReaper: Sendable {
    /// What a sweep kills, besides reaping the zombies.
    enum Scope {
        /// Nothing.
        case none
        /// The live processes left by a pool process of slot `index`: those whose environment carries that
        /// `AIOTASK_WORKER_INDEX`, or no index at all (a program that cleared its environment).
        case slot(String?)
        /// Every live process.
        case all
    }

    /// Live pool processes: started and not reaped yet. Each is added under this lock together with its start and
    /// taken off under it together with its reaping (``ChildProcess/watchPoolProcessExit(slot:_:)``), and a sweep
    /// decides under it, so a pool process is never taken for an orphan, however new, its status is never reaped
    /// here before its owner sees it, and a new pool process that gets the pid of one just reaped stays in the set.
    static let poolProcesses = NIOLockedValueBox<Set<pid_t>>([])

    /// The daemon's reaper, once ``start(logger:)`` made it one.
    static let current = NIOLockedValueBox<OrphanReaper?>(nil)

    /// How often adopted processes that exited are reaped.
    static let reapInterval: DispatchTimeInterval = .seconds(1)

    /// Most rounds of one sweep: each kill can hand the killed process's own children back to the daemon.
    static let maximumRounds = 16

    private let queue = DispatchQueue(label: "aiotask.orphan-reaper")
    private let logger: Logger
    private let ownPID = getpid()

    private init(logger: Logger) {
        self.logger = logger
    }

    /// Makes this process a child subreaper and starts reaping; nil (with a warning) if the kernel refuses.
    @discardableResult
    package static func start(logger: Logger) -> OrphanReaper? {
        let result = aiotask_set_child_subreaper()
        guard result == 0 else {
            logger.warning(
                "cannot become a child subreaper: \(String(cString: strerror(-result))); processes that handlers leave behind outside their process group are not killed"
            )
            return nil
        }
        let reaper = OrphanReaper(logger: logger)
        current.withLockedValue { $0 = reaper }
        reaper.scheduleReaping()
        return reaper
    }

    /// A pool process of slot `index` was reaped: kills what it left behind (on the reaper's queue).
    static func poolProcessEnded(slot index: String?) {
        guard let reaper = current.withLockedValue({ $0 }) else { return }
        reaper.queue.async { reaper.sweep(.slot(index)) }
    }

    /// Kills every process left, and waits until they are reaped. For the end of shutdown, once the pool
    /// processes are gone.
    package func killAll() {
        queue.sync { sweep(.all) }
    }

    private func scheduleReaping() {
        queue.asyncAfter(deadline: .now() + Self.reapInterval) { [self] in
            sweep(.none)
            scheduleReaping()
        }
    }

    private func sweep(_ scope: Scope) {
        for _ in 0..<Self.maximumRounds {
            let killed = Self.poolProcesses.withLockedValue { pool -> [pid_t] in
                var killed: [pid_t] = []
                for pid in Self.children(of: ownPID) where !pool.contains(pid) {
                    // A child that is not a pool process is only ever reaped here, so its pid cannot be reused
                    // between this check and the signal.
                    guard let state = Self.state(of: pid, parent: ownPID) else { continue }
                    if state == UInt8(ascii: "Z") {
                        var status: Int32 = 0
                        _ = waitpid(pid, &status, WNOHANG)
                        continue
                    }
                    guard covers(scope, pid) else { continue }
                    let command = Self.commandLine(of: pid)
                    kill(pid, SIGKILL)
                    logger.warning(
                        "killed process \(pid) (\(command)) left behind by a handler",
                        metadata: ["orphan_pid": "\(pid)"]
                    )
                    killed.append(pid)
                }
                return killed
            }
            guard !killed.isEmpty else { return }
            for pid in killed {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            }
        }
    }

    private func covers(_ scope: Scope, _ pid: pid_t) -> Bool {
        switch scope {
        case .none: return false
        case .all: return true
        case .slot(let index):
            let found = Self.environmentValue(of: pid, key: PoolProcessEnvironment.workerIndexKey)
            return found == nil || found == index
        }
    }

    // MARK: - /proc

    /// The children of `pid`, from the `children` file of each of its threads (a child belongs to the thread that
    /// started it, and an adopted one to whichever thread the kernel chose).
    private static func children(of pid: pid_t) -> [pid_t] {
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(directory) }
        var children: [pid_t] = []
        while let entry = readdir(directory) {
            let thread = String(cString: DirectoryEntries.namePointer(entry))
            guard pid_t(thread) != nil, let text = read("/proc/\(pid)/task/\(thread)/children", limit: 1 << 16)
            else { continue }
            children += text.split { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") }.compactMap {
                pid_t(String(decoding: $0, as: UTF8.self))
            }
        }
        return children
    }

    /// The one-letter state of `pid`, nil unless it is a child of `parent`. Fields are counted from the last `)`,
    /// as the command name may hold spaces and parentheses.
    private static func state(of pid: pid_t, parent: pid_t) -> UInt8? {
        guard let stat = read("/proc/\(pid)/stat", limit: 1024), let close = stat.lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        let fields = stat[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let state = fields[0].first,
            pid_t(String(decoding: fields[1], as: UTF8.self)) == parent
        else { return nil }
        return state
    }

    /// The command line of `pid`, its arguments joined by spaces, cut to 200 bytes; its name if it has none.
    private static func commandLine(of pid: pid_t) -> String {
        if let arguments = read("/proc/\(pid)/cmdline", limit: 200), !arguments.isEmpty {
            let words = arguments.split(separator: 0, omittingEmptySubsequences: false)
            return words.map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
                .trimmingSuffix(" ")
        }
        let name = read("/proc/\(pid)/comm", limit: 64) ?? []
        return String(decoding: name.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }

    /// The value of `key` in the environment `pid` was started with, nil when it has none (or it is unreadable).
    private static func environmentValue(of pid: pid_t, key: String) -> String? {
        guard let environment = read("/proc/\(pid)/environ", limit: 1 << 20) else { return nil }
        let prefix = Array((key + "=").utf8)
        for variable in environment.split(separator: 0) where variable.starts(with: prefix) {
            return String(decoding: variable.dropFirst(prefix.count), as: UTF8.self)
        }
        return nil
    }

    /// Up to `limit` bytes of the file at `path`; nil when it cannot be opened.
    private static func read(_ path: String, limit: Int) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes = [UInt8](repeating: 0, count: limit)
        var count = 0
        while count < limit {
            let got = bytes.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress! + count, limit - count) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { break }
            count += got
        }
        return Array(bytes[0..<count])
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: Character) -> String {
        var text = self
        while text.last == suffix { text.removeLast() }
        return text
    }
}
