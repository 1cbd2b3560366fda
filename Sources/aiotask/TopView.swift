import AiotaskProtocol
import Foundation

/// What `aiotask top` shows, as a value: the samples of the pool's state it took, the rates they give, the
/// sparkline of the last minute, and the screen laid out to a width. Pure — no clock, no terminal, no socket — so
/// that its arithmetic and its layout are tested alone.
struct TopView: Equatable {
    /// One reading of the server's counters.
    struct Sample: Equatable {
        /// Seconds, on any monotonic clock.
        var time: Double
        /// Tasks that ended, with a result or a failure.
        var finished: Int
        var failed: Int
    }

    /// How far back the sparkline and the rates look, in seconds.
    static let window = 60.0
    /// The sparkline's characters, from none to the most in the window.
    static let bars: [Character] = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]

    private(set) var samples: [Sample] = []
    private(set) var status: PoolStatus?

    /// Takes a new reading at `time`. A server whose counters went back (it restarted) starts the history over.
    mutating func record(_ status: PoolStatus, at time: Double) {
        let tasks = status.server.tasks
        let sample = Sample(time: time, finished: tasks.succeeded + tasks.failed, failed: tasks.failed)
        if let last = samples.last,
            sample.finished < last.finished || sample.failed < last.failed
                || status.server.pid != self.status?.server.pid
        {
            samples.removeAll()
        }
        samples.append(sample)
        // One sample older than the window stays, so that the rate over the whole window can be had.
        while samples.count > 2, samples[1].time <= time - Self.window { samples.removeFirst() }
        self.status = status
    }

    /// Tasks finished and failed per second between each two readings, oldest first.
    var rates: [(finished: Double, failed: Double)] {
        zip(samples, samples.dropFirst()).map { earlier, later in
            let seconds = later.time - earlier.time
            guard seconds > 0 else { return (0, 0) }
            return (
                Double(later.finished - earlier.finished) / seconds, Double(later.failed - earlier.failed) / seconds
            )
        }
    }

    /// Tasks finished per second between the last two readings; nil before the second.
    var throughput: Double? { rates.last?.finished }
    /// Tasks failed per second between the last two readings; nil before the second.
    var failuresPerSecond: Double? { rates.last?.failed }

    /// The throughput of the last readings as bars, at most `width` of them, the latest at the right; each bar's
    /// height is its rate against the highest in view. Empty before the second reading.
    func sparkline(width: Int) -> String {
        let values = rates.suffix(max(0, width)).map(\.finished)
        guard let highest = values.max() else { return "" }
        return String(
            values.map { value -> Character in
                guard highest > 0, value > 0 else { return Self.bars[0] }
                let level = Int((value / highest * Double(Self.bars.count - 1)).rounded(.up))
                return Self.bars[min(Self.bars.count - 1, max(1, level))]
            }
        )
    }

    /// The screen as lines of at most `width` characters (at most `height` lines, when given): a header with the
    /// server, its queue and its rates, then one row per pool process.
    func lines(width: Int, height: Int? = nil, server: String) -> [String] {
        guard let status else { return [Self.cut("aiotask top: \(server): waiting for the first reading", width)] }
        let info = status.server
        let rate = { (value: Double?) in value.map { String(format: "%.1f/s", $0) } ?? "–" }
        var lines = [
            "\(server)  aiotaskd \(info.version)  pid \(info.pid)  up \(Self.duration(info.uptimeSeconds))  "
                + "handler \(info.handler)",
            "pool \(info.workers.alive)/\(info.workers.configured) alive, \(info.workers.busy) busy, "
                + "\(info.workers.restarts) restarts   queue \(info.queue.length)/\(info.queue.capacity)   "
                + "connections \(info.connections)",
            "tasks \(info.tasks.submitted) submitted, \(info.tasks.succeeded) done, \(info.tasks.failed) failed"
                + (info.tasks.slow.map { ", \($0) slow" } ?? ""),
            "throughput \(rate(throughput))  failures \(rate(failuresPerSecond))  last minute "
                + sparkline(width: max(0, min(60, width - 50))),
            "",
        ]
        // The task id is the widest column: whole when there is room, its first 8 characters otherwise.
        let wideID = width >= 118
        let columns: [(title: String, width: Int, right: Bool)] = [
            ("SLOT", 4, true), ("PID", 8, true), ("STATE", 10, false), ("TASK", wideID ? 36 : 8, false),
            ("RUNNING", 9, true), ("RSS", 9, true), ("DONE", 9, true), ("RESTARTS", 8, true),
        ]
        func row(_ cells: [String]) -> String {
            zip(columns, cells).map { column, cell in
                let cell = String(cell.prefix(column.width))
                let pad = String(repeating: " ", count: column.width - cell.count)
                return column.right ? pad + cell : cell + pad
            }.joined(separator: " ")
        }
        lines.append(row(columns.map(\.title)))
        for process in status.processes {
            lines.append(
                row([
                    "\(process.slot)", process.pid.map(String.init) ?? "-", process.state.rawValue,
                    process.taskID.map { "\($0)" } ?? "", process.taskSeconds.map { Self.duration($0) } ?? "",
                    process.residentBytes.map(Self.bytes) ?? "", "\(process.tasksDone)", "\(process.restarts)",
                ])
            )
        }
        if status.processesOmitted > 0 { lines.append("… and \(status.processesOmitted) more") }
        if let height, lines.count > height { lines = Array(lines.prefix(max(0, height))) }
        return lines.map { Self.cut($0, width) }
    }

    private static func cut(_ line: String, _ width: Int) -> String {
        String(line.prefix(max(0, width)))
    }

    /// `950ms`, `12.5s`, `3m04s`, `2h05m`, `3d04h`.
    static func duration(_ seconds: Double) -> String {
        if seconds < 1 { return "\(Int((seconds * 1000).rounded(.down)))ms" }
        if seconds < 60 { return String(format: "%.1fs", seconds) }
        let whole = Int(seconds)
        if whole < 3600 { return String(format: "%dm%02ds", whole / 60, whole % 60) }
        if whole < 86_400 { return String(format: "%dh%02dm", whole / 3600, whole % 3600 / 60) }
        return String(format: "%dd%02dh", whole / 86_400, whole % 86_400 / 3600)
    }

    /// `512K`, `37.4M`, `1.2G`, in binary units.
    static func bytes(_ count: Int) -> String {
        let value = Double(count)
        if value < 1024 * 1024 { return "\(Int((value / 1024).rounded()))K" }
        if value < 1024 * 1024 * 1024 { return String(format: "%.1fM", value / 1024 / 1024) }
        return String(format: "%.1fG", value / 1024 / 1024 / 1024)
    }
}
