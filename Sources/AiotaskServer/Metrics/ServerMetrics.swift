import AiotaskProtocol
import NIOCore

/// The counters of the task path: plain integers on the server's event loop, bumped as tasks pass and read at
/// scrape time (``MetricsSnapshot``).
///
/// Why not a swift-metrics `Counter` or `Timer` per event: the task path runs ~4 µs of daemon CPU per 100 B task,
/// and a swift-metrics handler call takes a lock or an atomic (swift-prometheus' histogram takes a lock and walks
/// every bucket); two histograms and a few counters per task would cost a few per cent. An integer on the loop that
/// already owns the task costs a nanosecond. The figures reach swift-metrics and swift-prometheus at scrape time
/// (``MetricsExposition``) or on a reporter's tick (``MetricsReporter``), never drifting: gauges are read from the
/// live state, counters only ever grow.
struct ServerMetrics: Sendable {
    /// Tasks answered with a result.
    var succeeded = 0
    /// Accepted tasks that failed, by ``FailureReason/rawValue``.
    var failed = ReasonCounts()
    /// Tasks refused on arrival and never queued, by ``FailureReason/rawValue``.
    var rejected = ReasonCounts()
    /// Accepted tasks whose client went away before their answer.
    var abandoned = 0
    /// Pool process restarts, by ``RestartReason``.
    var restarts = [Int](repeating: 0, count: RestartReason.allCases.count)
    /// Task bytes received (every task, rejected or not).
    var taskBytes = 0
    /// Result bytes of the tasks answered with a result.
    var resultBytes = 0
    /// From a task's start on a pool process to its answer.
    var runTime = LatencyHistogram()
    /// From a task's arrival to its start on a pool process.
    var queueWait = LatencyHistogram()
    /// Connections taken on (counted in the limit).
    var connectionsAccepted = 0
    /// Connections closed as they arrived because `max-connections` were open.
    var connectionsRefusedAtLimit = 0
    /// Unix socket connections closed as they arrived because `allow-users` and `allow-groups` do not let their
    /// user in.
    var connectionsRefusedPeer = 0
    /// `tls://` connections closed in their handshake (``TLSAdmissionHandler``): never let in.
    var connectionsRefusedTLS = 0
    /// Time every pool process was busy with tasks waiting, up to ``saturatedSince``.
    private(set) var saturated: Duration = .zero
    /// Since when the pool is saturated; nil while it is not.
    private(set) var saturatedSince: NIODeadline?

    /// Notes whether every process is busy with tasks waiting; the clock is read only when that changes.
    mutating func noteSaturation(_ isSaturated: Bool) {
        switch (isSaturated, saturatedSince) {
        case (true, nil):
            saturatedSince = .now()
        case (false, let since?):
            saturated += Duration.nanoseconds((NIODeadline.now() - since).nanoseconds)
            saturatedSince = nil
        default:
            break
        }
    }

    /// The time spent saturated, the current stretch included.
    func saturatedTime(at now: NIODeadline) -> Duration {
        guard let saturatedSince else { return saturated }
        return saturated + .nanoseconds((now - saturatedSince).nanoseconds)
    }
}

/// Counts by a ``FailureReason``'s raw value: an array, so that counting is an index and an add.
struct ReasonCounts: Sendable {
    private(set) var counts = [Int](repeating: 0, count: 16)

    mutating func count(_ reason: FailureReason) {
        let index = Int(reason.rawValue)
        if index >= counts.count { counts.append(contentsOf: repeatElement(0, count: index + 1 - counts.count)) }
        counts[index] += 1
    }

    subscript(_ reason: FailureReason) -> Int {
        Int(reason.rawValue) < counts.count ? counts[Int(reason.rawValue)] : 0
    }

    var total: Int { counts.reduce(0, +) }

    /// The reasons counted at least once, with their counts.
    var nonZero: [(FailureReason, Int)] {
        counts.indices.filter { counts[$0] > 0 }.map { (FailureReason(rawValue: UInt8($0)), counts[$0]) }
    }
}

/// Why a pool process was replaced: the `reason` label of `aiotask_process_restarts_total`.
enum RestartReason: Int, CaseIterable, Sendable {
    /// It died on its own (crash, `exit`, killed from outside) or could not start.
    case crash
    /// Its task ran past its timeout.
    case timeout
    /// It held more memory than `max-worker-rss`.
    case memoryLimit
    /// It ran `max-tasks-per-worker` tasks.
    case recycle
    /// A reload renewed the pool.
    case reload
    /// Its task was cancelled, or its client went away, while it ran.
    case cancel
    /// The drain deadline came while it ran a task.
    case shutdown

    /// The label value.
    var label: String {
        switch self {
        case .crash: "crash"
        case .timeout: "timeout"
        case .memoryLimit: "memory_limit"
        case .recycle: "recycle"
        case .reload: "reload"
        case .cancel: "cancel"
        case .shutdown: "shutdown"
        }
    }
}

/// Observations of a duration in fixed buckets, from 10 µs to 250 s (1-2.5-5 steps), so that 50 µs echo tasks and
/// 50 s batch jobs both land in buckets of their own. Counts are per bucket (not cumulative) until exposition.
struct LatencyHistogram: Sendable {
    /// The upper bounds, in nanoseconds.
    static let upperBounds: [Int64] = {
        var bounds: [Int64] = []
        var decade: Int64 = 10_000
        while decade <= 10_000_000_000 {
            bounds.append(decade)
            bounds.append(decade * 5 / 2)
            bounds.append(decade * 5)
            decade *= 10
        }
        bounds.append(decade)
        bounds.append(decade * 5 / 2)
        return bounds
    }()

    /// Per bucket, then one past the last bound (+Inf).
    private(set) var counts = [Int](repeating: 0, count: upperBounds.count + 1)
    private(set) var sumNanoseconds: Int64 = 0

    mutating func observe(nanoseconds: Int64) {
        // Binary search over the 23 bounds: five comparisons.
        var low = 0
        var high = Self.upperBounds.count
        while low < high {
            let middle = (low + high) / 2
            if Self.upperBounds[middle] < nanoseconds { low = middle + 1 } else { high = middle }
        }
        counts[low] += 1
        sumNanoseconds &+= nanoseconds
    }

    var count: Int { counts.reduce(0, +) }
}
