import CoreMetrics
import ServiceLifecycle

/// Publishes a server's counters and gauges to swift-metrics — to `MetricsSystem.factory` (whatever backend the
/// application bootstrapped: swift-prometheus, StatsD, OpenTelemetry…) or to a given factory — every `interval`.
///
/// Run it beside the server in the application's `ServiceGroup`. Each tick copies a `MetricsSnapshot` in one hop
/// to the server's event loop (the same as a scrape of the metrics listener), then increments each swift-metrics
/// `Counter` by what it grew since the last tick and records each `Gauge`: the task path itself never calls a
/// metrics handler (see `ServerMetrics` for why). The names and labels are the listener's (docs/observability.md); the
/// two histograms (`aiotask_task_run_seconds`, `aiotask_task_queue_wait_seconds`) are bucketed on the event loop
/// and only the listener and ``AiotaskServer/metricsExposition(openMetrics:)`` give them.
public struct MetricsReporter: Service {
    private let server: AiotaskServer
    private let interval: Duration
    private let factory: any MetricsFactory

    /// - Parameters:
    ///   - server: the server whose figures are published.
    ///   - interval: the time between two publications.
    ///   - factory: where they go; by default the bootstrapped `MetricsSystem`.
    public init(
        server: AiotaskServer,
        interval: Duration = .seconds(10),
        factory: any MetricsFactory = MetricsSystem.factory
    ) {
        self.server = server
        self.interval = interval
        self.factory = factory
    }

    /// Publishes every `interval` until graceful shutdown or cancellation, and once more at the end.
    public func run() async throws {
        var published = Published(factory: factory)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            await publish(into: &published)
            try? await Task.sleep(for: interval)
        }
        await publish(into: &published)
    }

    private func publish(into published: inout Published) async {
        guard let snapshot = try? await server.metricsSnapshot() else { return }
        published.publish(MetricsExposition.samples(of: snapshot))
    }

    /// The swift-metrics handlers made so far, by name and labels, and what each counter was last given.
    private struct Published {
        let factory: any MetricsFactory
        var counters: [String: (handler: any FloatingPointCounterHandler, value: Double)] = [:]
        var gauges: [String: any RecorderHandler] = [:]

        mutating func publish(_ samples: [MetricSample]) {
            for sample in samples {
                let key = sample.name + "{" + sample.labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
                switch sample.kind {
                case .counter:
                    let entry =
                        counters[key]
                        ?? (factory.makeFloatingPointCounter(label: sample.name, dimensions: sample.labels), 0)
                    // A counter only grows (a new server's starts over: it is a new process's count).
                    if sample.value > entry.value { entry.handler.increment(by: sample.value - entry.value) }
                    counters[key] = (entry.handler, max(sample.value, entry.value))
                case .gauge:
                    let handler =
                        gauges[key]
                        ?? factory.makeRecorder(label: sample.name, dimensions: sample.labels, aggregate: false)
                    handler.record(sample.value)
                    gauges[key] = handler
                }
            }
        }
    }
}
