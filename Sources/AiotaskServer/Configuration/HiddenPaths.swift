/// Files and directories the pool's processes must not read: systemd's credentials of the service
/// (`$CREDENTIALS_DIRECTORY`, where `LoadCredential=` puts a TLS key) and any other secret the daemon names.
///
/// The daemon and its pool run as the same user, so file modes cannot keep a handler from what the daemon may read;
/// Landlock can, without privileges: each pool process enters, before it executes its program, a Landlock domain in
/// which everything is readable except these paths (see docs/security.md). The set is worked out again at start
/// and at each reload.
public struct HiddenPaths: Sendable, Hashable {
    /// Whether anything is hidden at all (`hide-credentials`); on by default.
    public var isEnabled: Bool
    /// Secrets besides the credentials directory, such as a TLS key file. A relative path is taken relative to
    /// `$CREDENTIALS_DIRECTORY` (as the settings naming credentials are), or ignored when it is unset.
    public var secretPaths: [String]

    /// The variable systemd sets to the service's credentials directory (`LoadCredential=`,
    /// `LoadCredentialEncrypted=`, `SetCredential=`).
    public static let credentialsDirectoryKey = "CREDENTIALS_DIRECTORY"

    public init(isEnabled: Bool = true, secretPaths: [String] = []) {
        self.isEnabled = isEnabled
        self.secretPaths = secretPaths
    }

    /// The absolute paths to hide, given the daemon's `environment`: `$CREDENTIALS_DIRECTORY` when set and not
    /// empty, then each secret path; none when hiding is off.
    public func paths(environment: [String: String]) -> [String] {
        guard isEnabled else { return [] }
        let credentials = environment[Self.credentialsDirectoryKey].flatMap { $0.hasPrefix("/") ? $0 : nil }
        var paths = credentials.map { [$0] } ?? []
        for path in secretPaths where !path.isEmpty {
            if path.hasPrefix("/") {
                paths.append(path)
            } else if let credentials {
                paths.append(credentials + "/" + path)
            }
        }
        return paths
    }
}

/// Which paths a Landlock ruleset must allow so that every path but the hidden ones stays readable: the pure part of
/// the confinement, with the file system behind a function that lists a directory.
///
/// Landlock grants rights beneath the files and directories its rules name, and cannot deny anything beneath a
/// directory it allows. So a hidden path P is left out by walking from `/` down to it: each directory on the way
/// (an *ancestor*) gets no rule of its own, and each of its entries that is neither on the way to a hidden path
/// nor hidden gets one. For `/run/credentials/aiotask.service`: every entry of `/` but `run`, of `/run` but
/// `credentials`, of `/run/credentials` but `aiotask.service`. Several hidden paths share their ancestors; a
/// hidden path beneath another hidden one adds nothing.
///
/// What a confined process then cannot do besides reading the hidden paths: list an ancestor (`ls /`, `ls /run`),
/// and read an entry created in an ancestor after the ruleset was made (a new file directly in `/run`, say): it
/// had no entry to be given a rule for. Entries of the ancestors present at the time, and everything beneath them,
/// stay readable, including what is created beneath them later.
enum HiddenPathsPlan {
    /// The paths to allow, in walking order, so that everything but `hidden` (absolute paths, symbolic links
    /// already resolved) stays readable.
    ///
    /// - Parameter entries: the names of the entries of a directory, or nil when it is no directory (or missing, or
    ///   cannot be listed): nothing beneath it is allowed then, which hides whatever may be created there later.
    static func allowedPaths(hiding hidden: [String], entries: (String) -> [String]?) -> [String] {
        let hiddenComponents = hidden.compactMap(components(of:)).filter { !$0.isEmpty }
        // A hidden path beneath (or equal to) another is hidden with it.
        let roots = hiddenComponents.filter { path in
            !hiddenComponents.contains { other in other.count < path.count && path.starts(with: other) }
        }
        guard !roots.isEmpty else { return [] }
        var allowed: [String] = []
        walk(ancestor: [], hidden: roots, entries: entries, into: &allowed)
        return allowed
    }

    /// Allows each entry of the ancestor `ancestor` that no path of `hidden` (each beneath it) goes through, and
    /// walks on into those that a path goes through without ending there.
    private static func walk(
        ancestor: [String],
        hidden: [[String]],
        entries: (String) -> [String]?,
        into allowed: inout [String]
    ) {
        let directory = path(of: ancestor)
        guard let names = entries(directory) else { return }
        let depth = ancestor.count
        for name in names.sorted() where name != "." && name != ".." {
            let through = hidden.filter { $0[depth] == name }
            if through.isEmpty {
                allowed.append(path(of: ancestor + [name]))
            } else if !through.contains(where: { $0.count == depth + 1 }) {
                walk(ancestor: ancestor + [name], hidden: through, entries: entries, into: &allowed)
            }
            // Otherwise the entry itself is hidden: no rule.
        }
    }

    /// The components of an absolute path, `.` and `..` taken lexically; nil for a relative one.
    static func components(of path: String) -> [String]? {
        guard path.hasPrefix("/") else { return nil }
        var components: [String] = []
        for component in path.split(separator: "/") {
            switch component {
            case ".": continue
            case "..": _ = components.popLast()
            default: components.append(String(component))
            }
        }
        return components
    }

    private static func path(of components: [String]) -> String {
        "/" + components.joined(separator: "/")
    }
}
