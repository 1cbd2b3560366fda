import AiotaskProtocol
import Testing

@testable import aiotask

/// `aiotask top`'s view model: rates from counter readings, the sparkline, the layout to a width.
@Suite("aiotask top's view")
struct TopViewTests {
    static func status(succeeded: Int, failed: Int, pid: Int = 100, processes: [PoolProcessStatus] = []) -> PoolStatus {
        PoolStatus(
            server: ServerInfo(
                version: "0.2.0",
                pid: pid,
                uptimeSeconds: 3725,
                handler: "echo",
                workers: .init(configured: 2, alive: 2, busy: 1, restarts: 3),
                queue: .init(length: 5, capacity: 100),
                tasks: .init(submitted: succeeded + failed, succeeded: succeeded, failed: failed, running: 1, slow: 2),
                connections: 4,
                tasksPerSecond: 0
            ),
            processes: processes
        )
    }

    static let processes = [
        PoolProcessStatus(
            slot: 0,
            pid: 4242,
            state: .busy,
            taskID: TaskID("12345678-9abc-4def-8123-456789abcdef"),
            taskSeconds: 75.5,
            residentBytes: 37 * 1024 * 1024 + 400 * 1024,
            tasksDone: 17,
            restarts: 1
        ),
        PoolProcessStatus(slot: 1, pid: nil, state: .restarting, tasksDone: 0, restarts: 2),
    ]

    @Test("throughput and failures per second are the counters' change over the time between two readings")
    func rates() {
        var view = TopView()
        view.record(Self.status(succeeded: 100, failed: 10), at: 10)
        #expect(view.throughput == nil)
        view.record(Self.status(succeeded: 150, failed: 20), at: 12)
        #expect(view.throughput == 30)
        #expect(view.failuresPerSecond == 5)
        view.record(Self.status(succeeded: 150, failed: 20), at: 13)
        #expect(view.throughput == 0)
    }

    @Test("a server that restarted (counters back, or another pid) starts the history over")
    func restartedServer() {
        var view = TopView()
        view.record(Self.status(succeeded: 100, failed: 10), at: 10)
        view.record(Self.status(succeeded: 5, failed: 0), at: 11)
        #expect(view.samples.count == 1)
        view.record(Self.status(succeeded: 6, failed: 0, pid: 101), at: 12)
        #expect(view.samples.count == 1)
        #expect(view.throughput == nil)
    }

    @Test("the history keeps one minute of readings")
    func window() {
        var view = TopView()
        for second in 0...200 { view.record(Self.status(succeeded: second * 10, failed: 0), at: Double(second)) }
        #expect(view.samples.count == 61)
        #expect(view.samples.first?.time == 140)
        #expect(view.rates.count == 60)
    }

    @Test("the sparkline scales each second's throughput to the highest in view, latest at the right")
    func sparkline() {
        var view = TopView()
        var done = 0
        for (second, rate) in [0, 0, 10, 20, 40, 80].enumerated() {
            done += rate
            view.record(Self.status(succeeded: done, failed: 0), at: Double(second))
        }
        #expect(view.sparkline(width: 60) == "▁▂▃▅█")
        #expect(view.sparkline(width: 2) == "▅█")
        #expect(TopView().sparkline(width: 10) == "")
    }

    @Test("the screen names the server, its queue and rates, and lays out one row per process to the width")
    func layout() throws {
        var view = TopView()
        view.record(Self.status(succeeded: 100, failed: 10, processes: Self.processes), at: 0)
        view.record(Self.status(succeeded: 130, failed: 12, processes: Self.processes), at: 1)
        let wide = view.lines(width: 160, server: "unix:/tmp/a.sock")
        #expect(wide[0] == "unix:/tmp/a.sock  aiotaskd 0.2.0  pid 100  up 1h02m  handler echo")
        #expect(wide[1] == "pool 2/2 alive, 1 busy, 3 restarts   queue 5/100   connections 4")
        #expect(wide[2] == "tasks 142 submitted, 130 done, 12 failed, 2 slow")
        #expect(wide[3].hasPrefix("throughput 32.0/s  failures 2.0/s  last minute █"))
        let header = try #require(wide.first { $0.hasPrefix("SLOT") })
        #expect(header.contains("PID") && header.contains("RSS") && header.contains("RESTARTS"))
        let busy = try #require(wide.first { $0.contains("4242") })
        #expect(busy.contains("12345678-9abc-4def-8123-456789abcdef"))
        #expect(busy.contains("busy") && busy.contains("1m15s") && busy.contains("37.4M") && busy.contains(" 17 "))
        let restarting = try #require(wide.last)
        #expect(restarting.contains("restarting") && restarting.contains(" - "))

        let narrow = view.lines(width: 80, server: "unix:/tmp/a.sock")
        #expect(narrow.allSatisfy { $0.count <= 80 })
        let narrowBusy = try #require(narrow.first { $0.contains("4242") })
        #expect(narrowBusy.contains("12345678 ") && !narrowBusy.contains("9abc"))
        #expect(view.lines(width: 80, height: 4, server: "x").count == 4)
    }

    @Test("durations and sizes read short")
    func units() {
        #expect(TopView.duration(0.25) == "250ms")
        #expect(TopView.duration(12.5) == "12.5s")
        #expect(TopView.duration(184) == "3m04s")
        #expect(TopView.duration(7500) == "2h05m")
        #expect(TopView.duration(3 * 86_400 + 4 * 3600) == "3d04h")
        #expect(TopView.bytes(512 * 1024) == "512K")
        #expect(TopView.bytes(1536 * 1024 * 1024) == "1.5G")
    }
}
