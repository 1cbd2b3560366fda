import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#endif

/// The metrics listener (`metrics-listen`): what a scrape counts, the gauges against the live pool, its formats,
/// and `promtool`'s verdict.
@Suite("Metrics", .serialized)
struct MetricsTests {
    @Test(
        "a scrape counts tasks by outcome and reason, and promtool check metrics finds nothing to say about it",
        .enabled(if: PrometheusTools.promtoolIsInstalled, "no promtool (package prometheus)")
    )
    func countsAndPromtool() async throws {
        let configure: @Sendable (inout ServerConfiguration) -> Void = {
            $0.queueCapacity = 1
            $0.maximumRestartBackoff = .milliseconds(50)
        }
        let (worker, address) = try await TestServer.startWithMetrics(workers: 1, configure: configure)
        try await withTimeout(.seconds(60)) {
            let client = try await worker.client()
            for index in 0..<5 { _ = try await client.submit("echo \(index)") }
            _ = try await client.failure(of: "fail on purpose")
            _ = try await client.failure(of: "exit 3")
            _ = try await client.failure(of: "hang", timeout: .milliseconds(200))
            // Cancelled while it runs.
            let running = try await client.enqueue("sleep 5000")
            try await client.waitForInfo { $0.workers.busy == 1 }
            running.cancel()
            _ = await running.failure()
            // Too large for max-payload, lowered by a reload after the client learnt the limit (the client library
            // refuses a task over the limit it knows without sending it): refused on arrival by the scheduler.
            // Once the cancelled task's process is replaced: a reload renews only a live process.
            try await worker.waitForFullPool()
            var lowered = ServerConfiguration(listenAddresses: [worker.address], handler: .builtin("chaos"), workers: 1)
            configure(&lowered)
            lowered.killGracePeriod = .milliseconds(500)
            lowered.maximumPayloadLength = 4096
            try await worker.server.reload(lowered)
            try await worker.waitForFullPool()
            _ = try await client.failure(of: String(repeating: "x", count: 5000))
            // One runs, one waits (queue-capacity 1), the third is refused: queue full.
            let blocker = try await client.enqueue("sleep 300")
            try await client.waitForInfo { $0.workers.busy == 1 }
            let queued = try await client.enqueue("echo queued")
            _ = try await client.failure(of: "echo refused")
            _ = try await blocker.result()
            _ = try await queued.result()
            try await worker.waitForFullPool()

            let samples = try await TestServer.samples(at: address)
            #expect(samples["aiotask_tasks_submitted_total"] == 13)
            #expect(samples[#"aiotask_tasks_finished_total{outcome="succeeded"}"#] == 7)
            #expect(samples[#"aiotask_tasks_finished_total{outcome="failed"}"#] == 4)
            #expect(samples[#"aiotask_tasks_failed_total{reason="handler_error"}"#] == 1)
            #expect(samples[#"aiotask_tasks_failed_total{reason="worker_crashed"}"#] == 1)
            #expect(samples[#"aiotask_tasks_failed_total{reason="timed_out"}"#] == 1)
            #expect(samples[#"aiotask_tasks_failed_total{reason="cancelled"}"#] == 1)
            #expect(samples[#"aiotask_tasks_rejected_total{reason="payload_too_large"}"#] == 1)
            #expect(samples[#"aiotask_tasks_rejected_total{reason="queue_full"}"#] == 1)
            #expect(samples[#"aiotask_process_restarts_total{reason="crash"}"#] == 1)
            #expect(samples[#"aiotask_process_restarts_total{reason="timeout"}"#] == 1)
            #expect(samples[#"aiotask_process_restarts_total{reason="cancel"}"#] == 1)
            #expect(samples[#"aiotask_process_restarts_total{reason="reload"}"#] == 1)
            #expect(samples["aiotask_task_run_seconds_count"] == 11)
            #expect(samples["aiotask_task_queue_wait_seconds_count"] == 11)
            #expect(samples["aiotask_task_bytes_total"].map { $0 > 5000 } == true)
            #expect(samples[#"aiotask_pool_processes{state="idle"}"#] == 1)
            #expect(samples["aiotask_pool_size"] == 1)
            #expect(samples["aiotask_queue_length"] == 0)
            #expect(samples["aiotask_connections"] == 1)
            #expect(samples["process_open_fds"].map { $0 > 0 } == true)
            #expect(samples[#"aiotask_build_info{version="\#(AiotaskVersion.current)"}"#] == 1)

            let text = try await Task.detached { try HTTPProbe.scrape(address).body }.value
            let check = try SpawnedProcess.spawn(
                PrometheusTools.promtool,
                ["check", "metrics"],
                standardInput: Array(text.utf8)
            )
            let exit = try await check.wait()
            #expect(exit == .exited(0), "promtool: \(check.standardOutput) \(check.standardError)")
            #expect(
                check.standardOutput.isEmpty && check.standardError.isEmpty,
                "promtool: \(check.standardOutput) \(check.standardError)"
            )
        }
        try await worker.stop()
    }

    @Test("OpenMetrics is answered when the scraper's Accept asks for it: counter families without _total, # EOF last")
    func openMetrics() async throws {
        let (worker, address) = try await TestServer.startWithMetrics(handler: .builtin("echo"), workers: 1)
        try await withTimeout {
            let reply = try await Task.detached {
                try HTTPProbe.scrape(address, accept: "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
            }.value
            #expect(reply.status == 200)
            #expect(reply.headers["content-type"]?.hasPrefix("application/openmetrics-text; version=1.0.0") == true)
            #expect(reply.body.hasSuffix("\n# EOF\n"))
            #expect(reply.body.contains("# TYPE aiotask_tasks_submitted counter\n"))
            #expect(reply.body.contains("\naiotask_tasks_submitted_total 0"))
            let plain = try await Task.detached { try HTTPProbe.scrape(address) }.value
            #expect(plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
            #expect(plain.body.contains("# TYPE aiotask_tasks_submitted_total counter\n"))
            #expect(!plain.body.contains("# EOF"))
        }
        try await worker.stop()
    }

    @Test("after a storm of killed pool processes, the pool gauges equal the process table")
    func gaugesAfterKillStorm() async throws {
        let workers = 4
        // This server's pool processes carry a mark of their own: the process table is read for them alone.
        let mark = "AIOTASK_TEST_KILL_STORM=\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        var handler = ProcessCommand.builtin("chaos")
        handler.environment["AIOTASK_TEST_KILL_STORM"] = String(mark.split(separator: "=")[1])
        @Sendable func poolProcesses() -> [pid_t] {
            ProcessTable.processes(withEnvironment: mark).filter { $0.parent == getpid() }.map(\.pid)
        }
        let (worker, address) = try await TestServer.startWithMetrics(handler: handler, workers: workers) {
            $0.maximumRestartBackoff = .milliseconds(20)
        }
        try await withTimeout(.seconds(60)) {
            let client = try await worker.client()
            var killed = 0
            for _ in 0..<8 {
                let running = try await (0..<workers).asyncMap { _ in try await client.enqueue("sleep 2000") }
                try await client.waitForInfo { $0.workers.busy == workers }
                for pid in poolProcesses() where ProcessTable.killChild(pid, of: getpid()) { killed += 1 }
                for handle in running { _ = try? await handle.result() }
            }
            // A storm happened: most of the 8 rounds' kills landed. A process still starting may not show its mark
            // in /proc yet and is left alone, so the exact count is not fixed; the restarts counted below must
            // equal it whatever it is.
            #expect(killed >= 4 * workers, "the storm killed \(killed) pool processes")
            try await worker.waitForFullPool()
            // The processes being replaced are gone too once the table has exactly the pool.
            while poolProcesses().count != workers { try await Task.sleep(for: .milliseconds(10)) }
            let samples = try await TestServer.samples(at: address)
            let states = ["starting", "idle", "busy", "stopping"].map {
                samples[#"aiotask_pool_processes{state="\#($0)"}"#] ?? -1
            }
            #expect(states == [0, Double(workers), 0, 0])
            #expect(Int(states.reduce(0, +)) == poolProcesses().count)
            #expect(samples[#"aiotask_process_restarts_total{reason="crash"}"#] == Double(killed))
            let resident = samples["aiotask_pool_resident_memory_bytes"] ?? 0
            #expect(resident > 0)
        }
        try await worker.stop()
    }

    @Test("a 50 µs task and a 50 s task land in buckets of their own")
    func histogramBuckets() {
        var histogram = LatencyHistogram()
        histogram.observe(nanoseconds: 50_000)
        histogram.observe(nanoseconds: 50_000_000_000)
        histogram.observe(nanoseconds: 1_000_000_000_000)
        let bounds = LatencyHistogram.upperBounds
        let small = bounds.firstIndex(of: 50_000) ?? -1
        let large = bounds.firstIndex(of: 50_000_000_000) ?? -1
        #expect(small >= 0 && large > small)
        #expect(histogram.counts[max(0, small)] == 1)
        #expect(histogram.counts[max(0, large)] == 1)
        #expect(histogram.counts.last == 1)
        #expect(histogram.count == 3)
        #expect(bounds.first == 10_000 && bounds.last == 250_000_000_000)
        var text: [UInt8] = []
        MetricsExposition.appendHistogram(&text, "x_seconds", histogram, "help")
        let written = String(decoding: text, as: UTF8.self)
        #expect(written.contains(#"x_seconds_bucket{le="5e-05"} 1"#))
        #expect(written.contains(#"x_seconds_bucket{le="50.0"} 2"#))
        #expect(written.contains(#"x_seconds_bucket{le="+Inf"} 3"#))
        #expect(written.contains("x_seconds_count 3\n"))
    }

    @Test(
        "promtool check rules accepts the packaged alerting rules, and the scrape example is a valid configuration",
        .enabled(if: PrometheusTools.promtoolIsInstalled, "no promtool (package prometheus)")
    )
    func packagedRules() async throws {
        let directory = Products.repositoryRoot + "/packaging/prometheus"
        let rules = try SpawnedProcess.spawn(
            PrometheusTools.promtool,
            ["check", "rules", directory + "/aiotask-alerts.yml"]
        )
        #expect(try await rules.wait() == .exited(0), "\(rules.standardOutput) \(rules.standardError)")
        #expect(rules.standardOutput.contains("SUCCESS: 6 rules found"))
        let config = try SpawnedProcess.spawn(
            PrometheusTools.promtool,
            ["check", "config", directory + "/prometheus-aiotask.yml"]
        )
        #expect(try await config.wait() == .exited(0), "\(config.standardOutput) \(config.standardError)")
    }
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}

/// The daemon adopts a socket systemd passes with `FileDescriptorName=metrics` as its metrics listener.
@Suite(
    "Metrics socket passed by systemd",
    .enabled(if: systemdSocketActivateIsInstalled, "no \(systemdSocketActivate) (package systemd)"),
    .timeLimit(.minutes(1))
)
struct MetricsSocketActivationTests {
    @Test("a socket passed under the name metrics serves GET /metrics, and tasks go to the daemon's own socket")
    func adoptsTheMetricsSocket() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try SystemdTestKit.freePort(host: "127.0.0.11")
        let daemon = try SocketActivatedDaemon.start(
            listen: "127.0.0.11:\(port)",
            fdname: "metrics",
            ["--listen", "unix:\(directory)/aiotask.sock", "--handler", "echo", "--workers", "1"]
        )
        defer { daemon.cleanUp() }
        try await daemon.waitUntilListening()
        // The scrape is the first connection: systemd-socket-activate then starts the daemon, which adopts it.
        let address = try SocketAddress(ipAddress: "127.0.0.11", port: port)
        let reply = try await Task.detached { try HTTPProbe.scrape(address) }.value
        #expect(reply.status == 200)
        #expect(metricSamples(reply.body)["aiotask_pool_size"] == 1)
        try await daemon.process.waitForStandardError(containing: "serving metrics on adopted socket metrics (fd 3)")
        let submit = try SpawnedProcess.spawn(
            Products.aiotask,
            ["submit", "--server", "unix:\(directory)/aiotask.sock", "over the task socket"]
        )
        #expect(try await submit.wait() == .exited(0), "\(submit.standardError)")
        #expect(submit.standardOutput == "over the task socket")
        #expect(try await daemon.stop() == .exited(0))
    }
}
