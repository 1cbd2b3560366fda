import CSystemd
import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A swift-log handler for services: structured entries through the native journal protocol when stderr
/// is connected to the journal (`$JOURNAL_STREAM`), readable lines on stderr otherwise.
///
/// Metadata become journal fields (see ``JournalFields``), so `journalctl TASK_ID=…` finds a task's entries.
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let identifier: String
    private let useJournal: Bool

    /// - Parameters:
    ///   - identifier: the `SYSLOG_IDENTIFIER`, e.g. `aiotaskd`.
    ///   - useJournal: force a destination; by default the journal exactly when stderr is connected to it.
    public init(identifier: String, level: Logger.Level, useJournal: Bool = JournalLogHandler.stderrIsJournal) {
        self.identifier = identifier
        self.logLevel = level
        self.useJournal = useJournal
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        if useJournal {
            let fields = JournalFields.fields(
                message: "\(event.message)",
                level: event.level,
                identifier: identifier,
                metadata: merged,
                file: event.file,
                function: event.function,
                line: event.line
            )
            Self.send(fields)
        } else {
            Self.writeLine(level: event.level, message: "\(event.message)", metadata: merged)
        }
    }

    /// Whether stderr is the journal's stream for this service: `$JOURNAL_STREAM` holds its device:inode.
    public static var stderrIsJournal: Bool {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var status = stat()
        guard fstat(2, &status) == 0 else { return false }
        return UInt64(status.st_dev) == device && UInt64(status.st_ino) == inode
    }

    private static func send(_ fields: [(name: String, value: String)]) {
        let entries = fields.map { Array("\($0.name)=\($0.value)".utf8) }
        let storage = entries.map { bytes -> UnsafeMutableRawBufferPointer in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, bytes.count), alignment: 1)
            buffer.copyBytes(from: bytes)
            return buffer
        }
        defer { storage.forEach { $0.deallocate() } }
        var vectors = zip(storage.indices, entries).map { index, bytes in
            iovec(iov_base: storage[index].baseAddress, iov_len: bytes.count)
        }
        _ = sd_journal_sendv(&vectors, Int32(vectors.count))
    }

    /// The current UTC time as `2026-11-29T03:20:00Z`.
    private static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func writeLine(level: Logger.Level, message: String, metadata: Logger.Metadata) {
        let details =
            metadata.isEmpty
            ? "" : " " + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let line = "\(timestamp()) \(level): \(message)\(details)\n"
        line.utf8CString.withUnsafeBufferPointer { buffer in
            _ = write(2, buffer.baseAddress, buffer.count - 1)
        }
    }
}
