import AiotaskChildProcess
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The Landlock ruleset every pool process enters before it executes its program, made from the configuration's
/// ``HiddenPaths`` (see ``HiddenPathsPlan``).
enum HandlerConfinement {
    /// The ruleset hiding `hidden` (with the daemon's `environment`) from the pool's processes; nil when nothing is
    /// to be hidden, or when Landlock is unavailable, which is logged as a warning naming what stays readable and
    /// why. The pool runs either way: failing to start would turn a kernel without Landlock into an outage, while
    /// the service's other hardening still holds (docs/security.md).
    ///
    /// - Parameter makeRuleset: builds the ruleset allowing the paths given (``LandlockRuleset/make(allowing:)``;
    ///   a test hands in a kernel without Landlock).
    static func make(
        _ hidden: HiddenPaths,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger,
        makeRuleset: ([String]) -> Result<
            (ruleset: LandlockRuleset, skipped: [(path: String, errno: Int32)]), LandlockUnavailable
        > = LandlockRuleset.make(allowing:)
    ) -> LandlockRuleset? {
        let paths = hidden.paths(environment: environment).map(resolved)
        guard !paths.isEmpty else { return nil }
        let names = paths.joined(separator: ", ")
        let allowed = HiddenPathsPlan.allowedPaths(hiding: paths, entries: entries(of:))
        switch makeRuleset(allowed) {
        case .failure(let error):
            logger.warning(
                "pool processes can read \(names): \(error); set hide-credentials = 0 if that is intended",
                metadata: ["hidden_paths": "\(names)"]
            )
            return nil
        case .success(let (ruleset, skipped)):
            for (path, code) in skipped {
                // Removed since it was listed, most likely: beneath it nothing is readable to the pool.
                logger.debug("pool processes cannot read \(path) either: \(String(cString: strerror(code)))")
            }
            logger.info("pool processes cannot read \(names) (Landlock)", metadata: ["hidden_paths": "\(names)"])
            return ruleset
        }
    }

    /// `path` with its symbolic links resolved, when it exists: Landlock follows a link to its target, so the
    /// target is what is hidden (a link to it then leads nowhere readable).
    private static func resolved(_ path: String) -> String {
        guard let real = realpath(path, nil) else { return path }
        defer { free(real) }
        return String(cString: real)
    }

    /// The entry names of the directory at `path`, or nil when it is no directory or cannot be listed.
    private static func entries(of path: String) -> [String]? {
        DirectoryEntries.names(at: path)
    }
}
