import AiotaskProtocol
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Everything a scrape reports, taken in one hop to the server's event loop: the counters of ``ServerMetrics``
/// and the gauges read from the live state (the scheduler's queue, each pool slot's state, the open connections),
/// never kept as counts of their own that could drift from what is there.
struct MetricsSnapshot: Sendable {
    /// A pool process's state, as the `state` label says it.
    struct ProcessCounts: Sendable, Equatable {
        /// Started, not ready for a task yet.
        var starting = 0
        var idle = 0
        var busy = 0
        /// Replaced or stopped, and not yet exited (killed after the grace period).
        var stopping = 0
    }

    var counters: ServerMetrics
    var submitted: Int
    /// Tasks that ran past `slow-task-threshold` (each logged once while it ran).
    var slowTasks: Int
    var queueLength: Int
    var queueBytes: Int
    /// How long the oldest task in the queue has waited; zero when the queue is empty.
    var oldestQueuedAge: Duration
    var processes: ProcessCounts
    /// The pids of the pool's live processes: their memory is read after the hop, off the event loop.
    var poolPIDs: [Int32]
    var configuredWorkers: Int
    var saturated: Duration
    var connectionsOpen: Int
    /// Filled in off the event loop, from ``poolPIDs``.
    var poolResidentBytes = 0
    /// Filled in off the event loop.
    var process = ProcessFigures()

    /// Reads what is read from `/proc` (the pool's resident memory, aiotaskd's own figures); called off the
    /// server's event loop, so that 64 reads of `/proc/PID/stat` never hold up a task.
    mutating func readProcessFigures() {
        poolResidentBytes = poolPIDs.reduce(0) { $0 + (ProcessMemory.residentBytes(of: $1) ?? 0) }
        process = ProcessFigures.current()
    }
}

/// The standard `process_*` figures of aiotaskd, as Prometheus' client libraries export them.
struct ProcessFigures: Sendable, Equatable {
    var cpuSeconds = 0.0
    var residentBytes = 0
    var virtualBytes = 0
    var startTimeSeconds = 0.0
    var openFileDescriptors = 0
    var maximumFileDescriptors = 0

    /// Read from `/proc/self/stat`, `/proc/self/fd` and the open-file limit; zeros where `/proc` has nothing.
    static func current() -> ProcessFigures {
        var figures = ProcessFigures()
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        if let stat = readFile("/proc/self/stat"), let end = stat.lastIndex(of: UInt8(ascii: ")")) {
            // Fields after the command's closing parenthesis, from field 3 (state) on.
            let fields = stat[(end + 2)...].split(separator: UInt8(ascii: " ")).map {
                String(decoding: $0, as: UTF8.self)
            }
            func field(_ number: Int) -> Double { fields.count > number - 3 ? Double(fields[number - 3]) ?? 0 : 0 }
            figures.cpuSeconds = (field(14) + field(15)) / ticks
            figures.virtualBytes = Int(field(23))
            figures.residentBytes = Int(field(24)) * ProcessMemory.pageSize
            figures.startTimeSeconds = startTime ?? 0
        }
        figures.openFileDescriptors = countOpenDescriptors()
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
            figures.maximumFileDescriptors = limit.rlim_cur == rlim_t.max ? Int.max : Int(limit.rlim_cur)
        }
        return figures
    }

    /// The daemon's start, in seconds since the epoch: read once (`/proc/stat` is long, and it never changes).
    private static let startTime: Double? = {
        guard let stat = readFile("/proc/self/stat"), let end = stat.lastIndex(of: UInt8(ascii: ")")) else {
            return nil
        }
        let fields = stat[(end + 2)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 19, let ticks = Double(String(decoding: fields[19], as: UTF8.self)) else { return nil }
        return bootTime() + ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }()

    /// Seconds since the epoch at boot (`btime` of `/proc/stat`), which a process's start time counts from.
    private static func bootTime() -> Double {
        guard let stat = readFile("/proc/stat") else { return 0 }
        for line in stat.split(separator: UInt8(ascii: "\n")) where line.starts(with: "btime ".utf8) {
            return Double(String(decoding: line.dropFirst(6), as: UTF8.self)) ?? 0
        }
        return 0
    }

    private static func countOpenDescriptors() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            if DirectoryEntries.namePointer(entry).pointee != CChar(UInt8(ascii: ".")) { count += 1 }
        }
        // The directory's own descriptor is not one the daemon holds.
        return max(0, count - 1)
    }

    private static func readFile(_ path: String) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var contents: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            contents.append(contentsOf: buffer[..<count])
            if contents.count > 1 << 20 { break }
        }
        return contents
    }
}
