import Logging
import NIOConcurrencyHelpers

/// Collects the entries a worker logs, so tests can check what operators would see.
final class LogCapture: Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    private let state = NIOLockedValueBox<
        (
            entries: [Entry],
            waiters: [(predicate: @Sendable (Entry) -> Bool, continuation: CheckedContinuation<Entry, Never>)]
        )
    >(([], []))

    /// A logger that writes into this capture, at every level.
    var logger: Logger {
        Logger(label: "aiotaskd-test") { _ in CaptureHandler(capture: self) }
    }

    var entries: [Entry] { state.withLockedValue { $0.entries } }

    func append(_ entry: Entry) {
        let ready = state.withLockedValue { state in
            state.entries.append(entry)
            var ready: [CheckedContinuation<Entry, Never>] = []
            state.waiters.removeAll { waiter in
                guard waiter.predicate(entry) else { return false }
                ready.append(waiter.continuation)
                return true
            }
            return ready
        }
        for continuation in ready { continuation.resume(returning: entry) }
    }

    /// Waits for the first entry (logged already or later) that matches `predicate`.
    func first(where predicate: @escaping @Sendable (Entry) -> Bool) async -> Entry {
        await withCheckedContinuation { continuation in
            let found = state.withLockedValue { state -> Entry? in
                if let entry = state.entries.first(where: predicate) { return entry }
                state.waiters.append((predicate, continuation))
                return nil
            }
            if let found { continuation.resume(returning: found) }
        }
    }
}

private struct CaptureHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        capture.append(
            .init(level: event.level, message: "\(event.message)", metadata: merged.mapValues { "\($0)" })
        )
    }
}
