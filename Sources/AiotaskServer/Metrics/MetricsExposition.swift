import AiotaskProtocol
import Prometheus

/// One counter or gauge of a snapshot: what both the exposition (through swift-prometheus) and
/// ``MetricsReporter`` (through swift-metrics) publish. The name is whole (`aiotask_…_total`).
struct MetricSample: Sendable {
    enum Kind: Sendable {
        case counter
        case gauge
    }

    var kind: Kind
    var name: String
    var labels: [(String, String)]
    var value: Double
    var help: String
}

/// The text a scrape of `GET /metrics` answers: the Prometheus text format (0.0.4), or OpenMetrics 1.0 when the
/// scraper's `Accept` asks for it.
///
/// Counters and gauges go through swift-prometheus: each scrape fills a fresh `PrometheusCollectorRegistry` from
/// the ``MetricsSnapshot`` (a counter incremented by its total, a gauge set), and the registry writes them — names,
/// `# HELP`, `# TYPE`, label escaping. A fresh registry per scrape keeps nothing between scrapes that could drift, and
/// parallel scrapes share no state. The two histograms are written here in the same format: swift-prometheus'
/// histograms take one observation at a time and cannot be given counts already bucketed on the event loop (see
/// ``ServerMetrics`` for why they are bucketed there).
enum MetricsExposition {
    /// The formats a scrape can ask for.
    enum Format: Sendable {
        case prometheus
        case openMetrics

        var contentType: String {
            switch self {
            case .prometheus: "text/plain; version=0.0.4; charset=utf-8"
            case .openMetrics: "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
        }

        /// OpenMetrics if `accept` (the request's `Accept` header) names it, the Prometheus text format otherwise.
        init(accept: String?) {
            self = accept?.contains("application/openmetrics-text") == true ? .openMetrics : .prometheus
        }
    }

    /// Failure reasons of accepted tasks, with their label values.
    static let failureReasons: [(FailureReason, String)] = [
        (.handlerError, "handler_error"), (.workerCrashed, "worker_crashed"), (.timedOut, "timed_out"),
        (.cancelled, "cancelled"), (.payloadTooLarge, "payload_too_large"), (.shuttingDown, "shutting_down"),
        (.interrupted, "interrupted"),
    ]

    /// Reasons a task is refused on arrival, with their label values.
    static let rejectionReasons: [(FailureReason, String)] = [
        (.rejected, "queue_full"), (.payloadTooLarge, "payload_too_large"), (.shuttingDown, "shutting_down"),
    ]

    /// Every counter and gauge of `snapshot`, in the order they are documented (docs/observability.md).
    static func samples(of snapshot: MetricsSnapshot) -> [MetricSample] {
        var samples: [MetricSample] = []
        let counters = snapshot.counters
        func counter(_ name: String, _ labels: [(String, String)], _ value: Int, _ help: String) {
            samples.append(MetricSample(kind: .counter, name: name, labels: labels, value: Double(value), help: help))
        }
        func fractionalCounter(_ name: String, _ value: Double, _ help: String) {
            samples.append(MetricSample(kind: .counter, name: name, labels: [], value: value, help: help))
        }
        func gauge(_ name: String, _ labels: [(String, String)], _ value: Int, _ help: String) {
            samples.append(MetricSample(kind: .gauge, name: name, labels: labels, value: Double(value), help: help))
        }
        func gauge(_ name: String, _ value: Double, _ help: String) {
            samples.append(MetricSample(kind: .gauge, name: name, labels: [], value: value, help: help))
        }

        counter(
            "aiotask_tasks_submitted_total",
            [],
            snapshot.submitted,
            "Tasks received from clients, rejected ones included."
        )
        let finished = "Tasks answered after they were queued, by outcome (abandoned: the client went away first)."
        counter("aiotask_tasks_finished_total", [("outcome", "succeeded")], counters.succeeded, finished)
        counter("aiotask_tasks_finished_total", [("outcome", "failed")], counters.failed.total, finished)
        counter("aiotask_tasks_finished_total", [("outcome", "abandoned")], counters.abandoned, finished)
        for (reason, label) in failureReasons {
            counter(
                "aiotask_tasks_failed_total",
                [("reason", label)],
                counters.failed[reason],
                "Tasks queued and then failed, by reason."
            )
        }
        for (reason, label) in rejectionReasons {
            counter(
                "aiotask_tasks_rejected_total",
                [("reason", label)],
                counters.rejected[reason],
                "Tasks refused on arrival and never queued, by reason."
            )
        }
        counter(
            "aiotask_slow_tasks_total",
            [],
            snapshot.slowTasks,
            "Tasks that ran past slow-task-threshold, each logged once while it ran."
        )
        counter("aiotask_task_bytes_total", [], counters.taskBytes, "Bytes of task payload received.")
        counter("aiotask_result_bytes_total", [], counters.resultBytes, "Bytes of result payload sent.")
        gauge("aiotask_queue_length", [], snapshot.queueLength, "Tasks waiting for a pool process.")
        gauge("aiotask_queue_bytes", [], snapshot.queueBytes, "Bytes of task payload waiting for a pool process.")
        gauge(
            "aiotask_queue_oldest_age_seconds",
            seconds(snapshot.oldestQueuedAge),
            "How long the oldest queued task has waited; 0 when the queue is empty."
        )
        let states = [
            ("starting", snapshot.processes.starting), ("idle", snapshot.processes.idle),
            ("busy", snapshot.processes.busy), ("stopping", snapshot.processes.stopping),
        ]
        for (state, count) in states {
            gauge(
                "aiotask_pool_processes",
                [("state", state)],
                count,
                "Pool processes alive, by state (stopping: replaced or stopped, not exited yet)."
            )
        }
        gauge("aiotask_pool_size", [], snapshot.configuredWorkers, "Configured number of pool processes.")
        fractionalCounter(
            "aiotask_pool_saturated_seconds_total",
            seconds(snapshot.saturated),
            "Time every pool process was busy with tasks waiting."
        )
        for reason in RestartReason.allCases {
            counter(
                "aiotask_process_restarts_total",
                [("reason", reason.label)],
                counters.restarts[reason.rawValue],
                "Pool processes replaced, by reason."
            )
        }
        gauge(
            "aiotask_pool_resident_memory_bytes",
            [],
            snapshot.poolResidentBytes,
            "Resident memory of the live pool processes, summed."
        )
        gauge("aiotask_connections", [], snapshot.connectionsOpen, "Client connections open.")
        counter("aiotask_connections_accepted_total", [], counters.connectionsAccepted, "Client connections accepted.")
        counter(
            "aiotask_connections_refused_total",
            [("reason", "max_connections")],
            counters.connectionsRefusedAtLimit,
            "Client connections closed as they arrived, by reason."
        )
        counter(
            "aiotask_connections_refused_total",
            [("reason", "peer_credentials")],
            counters.connectionsRefusedPeer,
            "Client connections closed as they arrived, by reason."
        )
        counter(
            "aiotask_connections_refused_total",
            [("reason", "tls")],
            counters.connectionsRefusedTLS,
            "Client connections closed as they arrived, by reason."
        )
        gauge("aiotask_build_info", [("version", AiotaskVersion.current)], 1, "The version of aiotaskd; always 1.")
        let process = snapshot.process
        fractionalCounter(
            "process_cpu_seconds_total",
            process.cpuSeconds,
            "Total user and system CPU time spent in seconds."
        )
        gauge("process_resident_memory_bytes", [], process.residentBytes, "Resident memory size in bytes.")
        gauge("process_virtual_memory_bytes", [], process.virtualBytes, "Virtual memory size in bytes.")
        gauge(
            "process_start_time_seconds",
            process.startTimeSeconds,
            "Start time of the process since unix epoch in seconds."
        )
        gauge("process_open_fds", [], process.openFileDescriptors, "Number of open file descriptors.")
        gauge("process_max_fds", [], process.maximumFileDescriptors, "Maximum number of open file descriptors.")
        return samples
    }

    static func render(_ snapshot: MetricsSnapshot, format: Format) -> [UInt8] {
        let registry = PrometheusCollectorRegistry()
        let counters = snapshot.counters
        // A counter is made at zero and incremented by its total; a gauge is set.
        for sample in samples(of: snapshot) {
            let descriptor = MetricNameDescriptor(metricName: sample.name, unitName: "", helpText: sample.help)
            switch sample.kind {
            case .counter:
                registry.makeCounter(descriptor: descriptor, labels: sample.labels).increment(by: sample.value)
            case .gauge: registry.makeGauge(descriptor: descriptor, labels: sample.labels).set(to: sample.value)
            }
        }
        var text = registry.emitToBuffer()
        appendHistogram(
            &text,
            "aiotask_task_run_seconds",
            counters.runTime,
            "Time from a task's start on a pool process to its answer."
        )
        appendHistogram(
            &text,
            "aiotask_task_queue_wait_seconds",
            counters.queueWait,
            "Time from a task's arrival to its start on a pool process."
        )
        guard format == .openMetrics else { return text }
        return openMetrics(from: text)
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// Writes `histogram` as swift-prometheus writes its own: cumulative buckets, `+Inf`, `_sum`, `_count`.
    static func appendHistogram(_ text: inout [UInt8], _ name: String, _ histogram: LatencyHistogram, _ help: String) {
        var lines = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        var cumulative = 0
        for (index, bound) in LatencyHistogram.upperBounds.enumerated() {
            cumulative += histogram.counts[index]
            lines += "\(name)_bucket{le=\"\(Double(bound) / 1e9)\"} \(cumulative)\n"
        }
        cumulative += histogram.counts[LatencyHistogram.upperBounds.count]
        lines += "\(name)_bucket{le=\"+Inf\"} \(cumulative)\n"
        lines += "\(name)_sum \(Double(histogram.sumNanoseconds) / 1e9)\n"
        lines += "\(name)_count \(cumulative)\n"
        text.append(contentsOf: lines.utf8)
    }

    /// The Prometheus text turned into OpenMetrics: a counter's family is named without its `_total` in `# HELP`
    /// and `# TYPE` (its samples keep it), and the text ends with `# EOF`.
    static func openMetrics(from text: [UInt8]) -> [UInt8] {
        var counterFamilies = Set<Substring>()
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        for line in lines where line.hasPrefix("# TYPE ") && line.hasSuffix(" counter") {
            let parts = line.split(separator: " ")
            if parts.count == 4 { counterFamilies.insert(parts[2]) }
        }
        var output = ""
        output.reserveCapacity(text.count + 16)
        for line in lines {
            let parts = line.split(separator: " ", maxSplits: 3)
            if line.hasPrefix("# "), parts.count >= 3, counterFamilies.contains(parts[2]), parts[2].hasSuffix("_total")
            {
                output += "\(parts[0]) \(parts[1]) \(parts[2].dropLast(6))"
                if parts.count == 4 { output += " \(parts[3])" }
            } else {
                output += line
            }
            output += "\n"
        }
        output += "# EOF\n"
        return Array(output.utf8)
    }
}
