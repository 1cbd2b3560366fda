import Foundation
import Testing

@testable import AiotaskServer

/// docs/observability.md against the code it documents: the families the metrics exposition writes, their labels
/// and label values, and the journal's `MESSAGE_ID`s. An on-call engineer reads that page, not the code, so a
/// metric or an entry added without its row fails here.
extension ConfigTests {
    /// A snapshot of a server that has done nothing: every family is written all the same, each reason and state
    /// with its zero (the exposition names every label value up front, so that `rate()` has a series to start from).
    static var idleSnapshot: MetricsSnapshot {
        MetricsSnapshot(
            counters: ServerMetrics(),
            submitted: 0,
            slowTasks: 0,
            queueLength: 0,
            queueBytes: 0,
            oldestQueuedAge: .zero,
            processes: .init(),
            poolPIDs: [],
            configuredWorkers: 1,
            saturated: .zero,
            connectionsOpen: 0
        )
    }

    @Test("docs/observability.md names every metric family, label and label value the exposition writes")
    func observabilityDocumentsEveryMetric() throws {
        let document = try Self.repositoryFile("docs/observability.md")
        let exposition = String(
            decoding: MetricsExposition.render(Self.idleSnapshot, format: .prometheus),
            as: UTF8.self
        )
        let lines = exposition.split(separator: "\n")
        let families = lines.compactMap { line -> String? in
            let parts = line.split(separator: " ")
            return line.hasPrefix("# TYPE ") && parts.count == 4 ? String(parts[2]) : nil
        }
        // Guards against a parse that finds nothing, which would pass vacuously.
        try #require(families.contains("aiotask_task_run_seconds") && families.contains("process_open_fds"))
        // One list of what is missing, rather than the whole page quoted once per absent name.
        let undocumented = families.filter { !document.contains("`\($0)`") }
        #expect(undocumented.isEmpty, "docs/observability.md does not name the metrics \(undocumented)")
        // `le` is the histograms' bucket, `version` aiotaskd's: their values are not a closed set to document.
        var labels: [String: Set<String>] = [:]
        for line in lines where !line.hasPrefix("#") {
            for match in line.matches(of: #/([a-z_]+)="([^"]*)"/#) where match.1 != "le" && match.1 != "version" {
                labels[String(match.1), default: []].insert(String(match.2))
            }
        }
        try #require(labels["reason"]?.contains("worker_crashed") == true)
        var undocumentedLabels: [String] = []
        for (label, values) in labels.sorted(by: { $0.key < $1.key }) {
            if !document.contains("`\(label)`") { undocumentedLabels.append(label) }
            for value in values.sorted() where !document.contains("`\(value)`") {
                undocumentedLabels.append("\(label)=\"\(value)\"")
            }
        }
        #expect(undocumentedLabels.isEmpty, "docs/observability.md does not name the labels \(undocumentedLabels)")
    }

    @Test("docs/observability.md names every journal MESSAGE_ID the daemon logs")
    func observabilityDocumentsEveryMessageID() throws {
        let document = try Self.repositoryFile("docs/observability.md")
        // Read from the declarations themselves, so that a new one is caught without this test being told of it.
        let source = try Self.repositoryFile("Sources/AiotaskServer/Support/LogMessageID.swift")
        let declared = source.matches(of: #/static let ([A-Za-z]+) = "([0-9a-f]{32})"/#).map {
            (name: String($0.1), id: String($0.2))
        }
        try #require(declared.contains { $0.id == LogMessageID.slowTask && $0.name == "slowTask" })
        let undocumented = declared.filter { !document.contains($0.id) }.map { "LogMessageID.\($0.name) \($0.id)" }
        #expect(undocumented.isEmpty, "docs/observability.md does not list the MESSAGE_IDs \(undocumented)")
    }
}
