#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The user or the group database, in which `allow-users` and `allow-groups` look up their names.
enum AccountDatabase: Sendable {
    case users, groups

    /// The value's name in `--help`.
    var valueName: String {
        switch self {
        case .users: "user"
        case .groups: "group"
        }
    }

    /// The names and ids of one value: separated by commas or blanks, so that `alice, bob` and `alice bob` are two.
    static func split(_ text: String) -> [String] {
        text.split { $0 == "," || $0 == " " || $0 == "\t" }.map(String.init)
    }

    /// The id of `account`: a number as it is (0 to 4294967294; 4294967295 is `(uid_t) -1`, no one), a name
    /// through `getpwnam_r` or `getgrnam_r`.
    ///
    /// - Throws: A ``ConfigurationError`` of `setting` when the name is in no database, or the lookup fails.
    func id(of account: String, setting: String) throws(ConfigurationError) -> UInt32 {
        if let number = UInt32(account) {
            guard number != UInt32.max else {
                throw ConfigurationError(setting: setting, reason: "\(account) is not a valid \(valueName) id")
            }
            return number
        }
        let outcome =
            switch self {
            case .users: Self.lookUp(account, getpwnam_r) { $0.pw_uid }
            case .groups: Self.lookUp(account, getgrnam_r) { $0.gr_gid }
            }
        switch outcome {
        case .found(let id):
            return id
        case .notFound:
            throw ConfigurationError(setting: setting, reason: "no \(valueName) named '\(account)'")
        case .failed(let errno):
            throw ConfigurationError(
                setting: setting,
                reason: "cannot look up the \(valueName) '\(account)': \(String(cString: strerror(errno)))"
            )
        }
    }

    /// What a lookup found.
    private enum Outcome {
        case found(UInt32)
        case notFound
        /// The `errno` of a failed lookup.
        case failed(Int32)
    }

    /// Calls a reentrant lookup (`getpwnam_r`, `getgrnam_r`), with a larger buffer while it says `ERANGE`.
    private static func lookUp<Entry>(
        _ name: String,
        _ function: (
            UnsafePointer<CChar>, UnsafeMutablePointer<Entry>, UnsafeMutablePointer<CChar>, Int,
            UnsafeMutablePointer<UnsafeMutablePointer<Entry>?>
        ) -> Int32,
        id: (Entry) -> UInt32
    ) -> Outcome {
        var size = 16 * 1024
        // A database entry of a megabyte is a broken one, not a reason to grow further.
        while size <= 1 << 20 {
            let outcome: Outcome? = withUnsafeTemporaryAllocation(of: CChar.self, capacity: size) { buffer in
                withUnsafeTemporaryAllocation(of: Entry.self, capacity: 1) { entry in
                    var found: UnsafeMutablePointer<Entry>? = nil
                    let status = name.withCString {
                        function($0, entry.baseAddress!, buffer.baseAddress!, size, &found)
                    }
                    if status == ERANGE { return nil }
                    // Not found is a 0 status and no entry; glibc also answers some "not found"s with ENOENT.
                    if status == 0 || status == ENOENT || status == ESRCH {
                        return found.map { .found(id($0.pointee)) } ?? .notFound
                    }
                    return .failed(status)
                }
            }
            if let outcome { return outcome }
            size *= 2
        }
        return .failed(ERANGE)
    }
}
