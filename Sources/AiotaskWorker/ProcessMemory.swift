#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The memory a pool process holds, read from `/proc/PID/stat`.
enum ProcessMemory {
    /// Bytes in one mebibyte, the unit of the memory limit's setting and messages.
    static let mebibyte = 1 << 20

    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// The resident set size of `pid` in bytes, or nil when it is gone, a zombie, or not a child of this process
    /// (its pid was reused): only a live child of ours is ever measured, and so only ever killed for its size.
    static func residentBytes(of pid: pid_t) -> Int? {
        let descriptor = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return residentBytes(parsingStat: buffer[0..<count], parent: getpid())
    }

    /// The resident bytes from the text of a `/proc/PID/stat` file, nil unless it describes a live child of
    /// `parent`. The command name in parentheses may itself hold spaces and parentheses, so the fields are
    /// counted from the last `)`: state, ppid, … with the RSS in pages as the 22nd.
    static func residentBytes(parsingStat stat: ArraySlice<UInt8>, parent: pid_t) -> Int? {
        guard let close = stat.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = stat[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 21, let state = fields[0].first, state != UInt8(ascii: "Z"), state != UInt8(ascii: "X"),
            let ppid = pid_t(String(decoding: fields[1], as: UTF8.self)), ppid == parent,
            let pages = Int(String(decoding: fields[21], as: UTF8.self))
        else { return nil }
        return pages * pageSize
    }

    /// `bytes` in whole MiB, rounded up, so that any size over a limit of whole MiB reads as more than it.
    static func mebibytesRoundedUp(_ bytes: Int) -> Int {
        (bytes + mebibyte - 1) / mebibyte
    }
}
