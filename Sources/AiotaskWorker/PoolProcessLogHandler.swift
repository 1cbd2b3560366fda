import Logging

/// The `LogHandler` of a pool process: one line on stderr per line of a message, which the daemon logs with the
/// process's pid (docs/handler-protocol.md §3).
///
/// A line reads `LEVEL key=value …: message`, metadata sorted by key. No timestamp and no pid: the daemon's log adds
/// both. Each line is one `write`, so lines from several threads never interleave within a line.
struct PoolProcessLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(label: String) {
        self.label = label
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        StandardError.writeLine(Self.format(level: event.level, message: "\(event.message)", metadata: all))
    }

    /// The text written for a message: every line of it with the level and the metadata in front, so that each
    /// line the daemon logs on its own still says which task it is about.
    static func format(level: Logger.Level, message: String, metadata: Logger.Metadata) -> String {
        let fields = metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let prefix = ([level.rawValue] + fields).joined(separator: " ") + ": "
        return message.split(separator: "\n", omittingEmptySubsequences: false)
            .map { prefix + $0 }
            .joined(separator: "\n")
    }
}
