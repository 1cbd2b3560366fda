import Logging

/// How log events become journal fields.
public enum JournalFields {
    /// A valid journal field name for a metadata key: upper-cased, every character outside `[A-Z0-9_]`
    /// replaced by `_`, leading underscores (reserved for trusted fields) and digits removed, at most 64
    /// characters; nil when nothing is left. journald silently drops fields with invalid names.
    public static func fieldName(for key: String) -> String? {
        var name = String(
            key.uppercased().unicodeScalars.map { scalar -> Character in
                let valid = ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar) || scalar == "_"
                return valid ? Character(scalar) : "_"
            }
        )
        while let first = name.first, first == "_" || first.isNumber { name.removeFirst() }
        guard !name.isEmpty else { return nil }
        return String(name.prefix(64))
    }

    /// The syslog priority of a log level (`PRIORITY=`).
    public static func priority(of level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// Every field of one entry, in order: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_*, then the metadata.
    /// A metadata key that maps to a standard field's name does not replace it.
    public static func fields(
        message: String,
        level: Logger.Level,
        identifier: String,
        metadata: Logger.Metadata,
        file: String,
        function: String,
        line: UInt
    ) -> [(name: String, value: String)] {
        var fields: [(name: String, value: String)] = [
            ("MESSAGE", message),
            ("PRIORITY", String(priority(of: level))),
            ("SYSLOG_IDENTIFIER", identifier),
            ("CODE_FILE", file),
            ("CODE_LINE", String(line)),
            ("CODE_FUNC", function),
        ]
        let reserved = Set(fields.map(\.name))
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            guard let name = fieldName(for: key), !reserved.contains(name) else { continue }
            fields.append((name, "\(value)"))
        }
        return fields
    }
}
