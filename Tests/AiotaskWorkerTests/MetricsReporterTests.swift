import AiotaskClient
import AiotaskTestSupport
import Foundation
import NIOCore
import Prometheus
import Testing

@testable import AiotaskServer

/// ``MetricsReporter``: an application that embeds the server and has a swift-metrics backend gets the figures.
@Suite("Metrics through swift-metrics")
struct MetricsReporterTests {
    @Test("the reporter publishes the server's counters and gauges to a swift-metrics factory")
    func publishes() async throws {
        let worker = try await TestServer.start(handler: .builtin("echo"), workers: 2)
        let registry = PrometheusCollectorRegistry()
        let reporter = MetricsReporter(
            server: worker.server,
            interval: .milliseconds(20),
            factory: PrometheusMetricsFactory(registry: registry)
        )
        let running = Task { try await reporter.run() }
        try await withTimeout {
            let client = try await worker.client()
            for index in 0..<5 { _ = try await client.submit("task \(index)") }
            // Published on the reporter's next tick.
            while true {
                let samples = metricSamples(registry.emitToString())
                // A tick that began before the last answer publishes it on the next one.
                if samples["aiotask_tasks_submitted_total"] == 5,
                    samples[#"aiotask_tasks_finished_total{outcome="succeeded"}"#] == 5
                {
                    #expect(samples[#"aiotask_pool_processes{state="idle"}"#] == 2)
                    #expect(samples["aiotask_pool_size"] == 2)
                    return
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        running.cancel()
        try await worker.stop()
    }
}
