#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The memory a pool process holds, read from `/proc/PID/stat`.
package enum ProcessMemory {
    /// Bytes in one mebibyte, the unit of the memory limit's setting and messages.
    package static let mebibyte = 1 << 20

    static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// The resident set size of `pid` in bytes, or nil when it is gone, a zombie, or not a child of this process
    /// (its pid was reused): only a live child of ours is ever measured, and so only ever killed for its size.
    static func residentBytes(of pid: pid_t) -> Int? {
        residentBytes(of: pid, parent: getpid())
    }

    /// The memory of `pid` (a live child of ours) and of the processes it started: the sum of the resident sets of
    /// `pid` and of every live descendant, found through `/proc/PID/task/TID/children`, and how many descendants
    /// were counted; nil when `pid` itself cannot be measured. Pages shared between them count once per process.
    /// A descendant whose parent died was reparented elsewhere, and is not counted.
    static func treeResidentBytes(of pid: pid_t) -> (bytes: Int, descendants: Int)? {
        guard var total = residentBytes(of: pid) else { return nil }
        var descendants = 0
        var parents = [pid]
        while let parent = parents.popLast(), descendants < maximumDescendants {
            for child in children(of: parent) {
                // Checked against its parent, so a pid reused since the listing is not counted.
                guard let resident = residentBytes(of: child, parent: parent) else { continue }
                total += resident
                descendants += 1
                parents.append(child)
            }
        }
        return (total, descendants)
    }

    /// Most descendants of one process read by ``treeResidentBytes(of:)``: a fork bomb is not walked to its end.
    static let maximumDescendants = 1000

    private static func residentBytes(of pid: pid_t, parent: pid_t) -> Int? {
        var buffer = [UInt8](repeating: 0, count: 1024)
        let count = readStart(of: "/proc/\(pid)/stat", into: &buffer)
        guard count > 0 else { return nil }
        return residentBytes(parsingStat: buffer[0..<count], parent: parent)
    }

    /// The children of `pid`, from the `children` file of each of its threads (a child belongs to the thread that
    /// started it).
    private static func children(of pid: pid_t) -> [pid_t] {
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(directory) }
        var children: [pid_t] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while let entry = readdir(directory) {
            let thread = String(cString: DirectoryEntries.namePointer(entry))
            guard pid_t(thread) != nil else { continue }
            let count = readStart(of: "/proc/\(pid)/task/\(thread)/children", into: &buffer)
            guard count > 0 else { continue }
            children += buffer[0..<count].split { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") }.compactMap {
                pid_t(String(decoding: $0, as: UTF8.self))
            }
        }
        return children
    }

    /// Reads the start of the file at `path` into `buffer`: the byte count, or -1.
    private static func readStart(of path: String, into buffer: inout [UInt8]) -> Int {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return -1 }
        defer { close(descriptor) }
        return buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
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
