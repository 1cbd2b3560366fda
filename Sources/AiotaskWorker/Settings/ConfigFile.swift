import AiotaskProtocol

/// Reads the daemon's config file: `key = value` lines, `#` comments, keys named like the long options.
public enum ConfigFile {
    /// Parses the text of a config file and checks its values; `path` only serves the error messages.
    ///
    /// Every error names the file and line, including a value of the right kind but out of range (such as
    /// `workers = 0`), so an operator can find it.
    public static func parse(_ text: String, path: String) throws(ConfigurationError) -> DaemonSettings {
        var settings = DaemonSettings()
        var locations: [String: String] = [:]
        for (offset, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let location = "\(path):\(offset + 1)"
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
                .trimmingCharacters(in: " \t\r")
            if line.isEmpty { continue }
            guard let equals = line.firstIndex(of: "=") else {
                throw ConfigurationError(setting: String(line), reason: "expected 'key = value'", location: location)
            }
            let key = String(line[..<equals].trimmingCharacters(in: " \t").map { $0 == "_" ? "-" : $0 })
            let value = line[line.index(after: equals)...].trimmingCharacters(in: " \t")
            guard !value.isEmpty else {
                throw ConfigurationError(setting: key, reason: "missing value", location: location)
            }
            try apply(key, value, to: &settings, location: location)
            locations[key] = location
        }
        try check(settings, locations: locations)
        return settings
    }

    /// Checks the ranges of the values, as the daemon will, so the error can point at the line.
    private static func check(_ settings: DaemonSettings, locations: [String: String]) throws(ConfigurationError) {
        do {
            _ = try settings.configuration(handler: ProcessCommand(executable: "/", displayName: "check"))
        } catch {
            var located = error
            located.location = located.location ?? locations[error.setting]
            throw located
        }
    }

    /// Reads one line's value through the setting's declaration (``DaemonSettings/declarations``).
    private static func apply(
        _ key: String,
        _ value: String,
        to settings: inout DaemonSettings,
        location: String
    ) throws(ConfigurationError) {
        do {
            try settings.set(key, from: value)
        } catch {
            var located = error
            located.location = location
            throw located
        }
    }
}

extension StringProtocol {
    fileprivate func trimmingCharacters(in characters: String) -> String {
        var slice = Substring(self)
        while let first = slice.first, characters.contains(first) { slice.removeFirst() }
        while let last = slice.last, characters.contains(last) { slice.removeLast() }
        return String(slice)
    }
}
