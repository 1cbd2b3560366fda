#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The entries of a directory, read with `readdir`.
enum DirectoryEntries {
    /// The names in the directory at `path`, without `.` and `..`; nil when it cannot be listed. A name that is not
    /// UTF-8 is left out.
    static func names(at path: String) -> [String]? {
        guard let directory = opendir(path) else { return nil }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            guard let name = String(validatingCString: namePointer(entry)) else { continue }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The name of `entry`, where it lies. Never copy `d_name` out of a `dirent`: the record is only as long as its
    /// name needs (`d_reclen`), so a copy of the 256-byte array reads past it (AddressSanitizer: heap-buffer-overflow).
    static func namePointer(_ entry: UnsafePointer<dirent>) -> UnsafePointer<CChar> {
        (UnsafeRawPointer(entry) + nameOffset).assumingMemoryBound(to: CChar.self)
    }

    private static let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
}
