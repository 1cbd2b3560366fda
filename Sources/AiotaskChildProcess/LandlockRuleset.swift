import CAiotaskShims

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A Landlock ruleset (Linux 5.13): which files a process that enters its domain may open. The daemon builds one
/// and every pool process enters it between fork and exec (``ChildProcess/spawn(_:arguments:environment:descriptors:searchingPath:confinement:)``).
///
/// Landlock is an allow-list: once a right is *handled*, a confined process has it only beneath a file or
/// directory that a rule grants it on. The ruleset handles reading (files and directories) and, from ABI 2 on,
/// `REFER`: Landlock refuses to move or link a file into another directory under any ruleset unless a rule grants
/// `REFER` (ABI 1 always refuses it), so it is handled here only to be granted wherever reading is, and renames go
/// on working outside the hidden paths. Writing is not handled: the paths hidden (systemd's credentials, TLS keys)
/// sit on read-only mounts of the packaged unit, and not handling more rights keeps the confinement from changing
/// anything else a handler does.
package final class LandlockRuleset: Sendable {
    /// The ruleset's descriptor (close-on-exec), open for as long as the ruleset lives.
    package let descriptor: CInt

    /// `LANDLOCK_ACCESS_FS_READ_FILE`: open a file for reading (executing one opens it for reading too).
    static let readFile: UInt64 = 1 << 2
    /// `LANDLOCK_ACCESS_FS_READ_DIR`: open a directory or list its entries.
    static let readDirectory: UInt64 = 1 << 3
    /// `LANDLOCK_ACCESS_FS_REFER` (ABI 2): link or rename a file into another directory.
    static let refer: UInt64 = 1 << 13

    /// The rights handled (and granted by each rule) with ABI `abi`.
    package static func handledRights(abi: Int) -> (directory: UInt64, file: UInt64) {
        (readFile | readDirectory | (abi >= 2 ? refer : 0), readFile)
    }

    /// The kernel's Landlock ABI version, or why Landlock cannot be used.
    package static func abiVersion() -> Result<Int, LandlockUnavailable> {
        let abi = aiotask_landlock_abi()
        guard abi > 0 else { return .failure(LandlockUnavailable(errno: -abi)) }
        return .success(Int(abi))
    }

    /// Builds a ruleset allowing reads beneath each of `allowed` (a path; a symbolic link is skipped, a directory
    /// allows everything beneath it, any other file itself).
    ///
    /// - Returns: the ruleset and the paths that could not be given a rule (removed meanwhile, or unreadable), with
    ///   the reason: whatever is beneath them is unreadable to a confined process.
    package static func make(
        allowing allowed: [String]
    ) -> Result<(ruleset: LandlockRuleset, skipped: [(path: String, errno: Int32)]), LandlockUnavailable> {
        let abi: Int
        switch abiVersion() {
        case .success(let version): abi = version
        case .failure(let error): return .failure(error)
        }
        let rights = handledRights(abi: abi)
        let descriptor = aiotask_landlock_create_ruleset(rights.directory | rights.file)
        guard descriptor >= 0 else { return .failure(LandlockUnavailable(errno: -descriptor)) }
        let ruleset = LandlockRuleset(descriptor: descriptor)
        var skipped: [(path: String, errno: Int32)] = []
        for path in allowed {
            let result = aiotask_landlock_allow(descriptor, path, rights.directory, rights.file)
            if result < 0 { skipped.append((path, -result)) }
        }
        return .success((ruleset, skipped))
    }

    private init(descriptor: CInt) {
        self.descriptor = descriptor
    }

    deinit {
        close(descriptor)
    }
}

/// Landlock cannot be used: the kernel lacks it (`ENOSYS`), has it disabled (`EOPNOTSUPP`), or a system-call
/// filter refuses it (`EPERM`, or whatever errno the filter returns).
package struct LandlockUnavailable: Error, CustomStringConvertible {
    package var errno: Int32

    package init(errno: Int32) {
        self.errno = errno
    }

    package var description: String {
        let reason =
            switch errno {
            case ENOSYS: "the kernel has no Landlock (Linux 5.13 or later with CONFIG_SECURITY_LANDLOCK)"
            case EOPNOTSUPP: "Landlock is not enabled (add landlock to the kernel's lsm= boot parameter)"
            case EPERM:
                "a system-call filter refuses landlock_create_ruleset (allow landlock_create_ruleset, landlock_add_rule and landlock_restrict_self in SystemCallFilter=)"
            default: String(cString: strerror(errno))
            }
        return "Landlock unavailable: \(reason)"
    }
}
