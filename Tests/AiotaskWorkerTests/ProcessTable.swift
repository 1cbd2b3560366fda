import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// One process as `/proc` shows it.
struct ProcessEntry: Hashable, Sendable, CustomStringConvertible {
    var pid: pid_t
    /// The one-letter state: `R`, `S`, `D`, `Z` (zombie), …
    var state: Character
    var parent: pid_t
    var group: pid_t
    var command: String

    var isZombie: Bool { state == "Z" || state == "X" }

    var description: String { "\(pid) (\(command)) state \(state) ppid \(parent) pgid \(group)" }
}

/// Reads the system's process table from `/proc`, for tests that must find leftover processes.
enum ProcessTable {
    /// The process `pid`, or nil when there is none.
    static func entry(_ pid: pid_t) -> ProcessEntry? {
        guard let stat = read("/proc/\(pid)/stat"), let open = stat.firstIndex(of: UInt8(ascii: "(")),
            let close = stat.lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        let fields = stat[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 3, let state = fields[0].first,
            let parent = pid_t(String(decoding: fields[1], as: UTF8.self)),
            let group = pid_t(String(decoding: fields[2], as: UTF8.self))
        else { return nil }
        return ProcessEntry(
            pid: pid,
            state: Character(UnicodeScalar(state)),
            parent: parent,
            group: group,
            command: String(decoding: stat[(open + 1)..<close], as: UTF8.self)
        )
    }

    /// Every process whose environment, as it was started, holds `variable` (`NAME=value`): the processes a test
    /// started with it, and everything they started in turn, wherever they were reparented.
    static func processes(withEnvironment variable: String) -> [ProcessEntry] {
        let needle = Array(variable.utf8) + [0]
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return names.compactMap { name -> ProcessEntry? in
            guard let pid = pid_t(name), let environment = read("/proc/\(pid)/environ", limit: 1 << 20),
                contains(environment, needle) || environment.starts(with: needle)
            else { return nil }
            return entry(pid)
        }
    }

    /// How long `pid` has been running, to the kernel's clock tick (usually 10 ms).
    static func age(_ pid: pid_t) -> Duration? {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: UInt8(ascii: ")")),
            let uptime = read("/proc/uptime"),
            let now = Double(String(decoding: uptime.prefix { $0 != UInt8(ascii: " ") }, as: UTF8.self))
        else { return nil }
        // Field 22, the start time in clock ticks since boot, is the 20th after the command name.
        let fields = stat[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 19, let ticks = Double(String(decoding: fields[19], as: UTF8.self)) else { return nil }
        let seconds = now - ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
        return .milliseconds(Int64(max(0, seconds) * 1000))
    }

    /// The resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
    static func residentKiB(_ pid: pid_t) -> Int? {
        guard let status = read("/proc/\(pid)/status") else { return nil }
        for line in String(decoding: status, as: UTF8.self).split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.dropFirst("VmRSS:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
        }
        return nil
    }

    /// Sends SIGKILL to `pid` only if it is, at that moment, a child of `parent`: through a pidfd, so a pid
    /// reused by an unrelated process between the check and the signal cannot be hit. Returns whether it was sent.
    static func killChild(_ pid: pid_t, of parent: pid_t) -> Bool {
        let descriptor = pidfdOpen(pid, 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        guard let process = entry(pid), process.parent == parent, !process.isZombie else { return false }
        return pidfdSendSignal(descriptor, SIGKILL, nil, 0) == 0
    }

    private static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        // Variables are separated by NUL: match one that starts right after a NUL.
        let separated = [0] + needle
        guard haystack.count >= separated.count else { return false }
        for start in 0...(haystack.count - separated.count)
        where haystack[start] == 0 && haystack[start..<(start + separated.count)].elementsEqual(separated) {
            return true
        }
        return false
    }

    private static func read(_ path: String, limit: Int = 64 * 1024) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while bytes.count < limit {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }

    private static let pidfdOpen: @convention(c) (pid_t, UInt32) -> Int32 = {
        guard let symbol = dlsym(nil, "pidfd_open") else {
            return { _, _ in -1 }
        }
        return unsafeBitCast(symbol, to: (@convention(c) (pid_t, UInt32) -> Int32).self)
    }()

    private static let pidfdSendSignal: @convention(c) (Int32, Int32, UnsafeMutableRawPointer?, UInt32) -> Int32 = {
        guard let symbol = dlsym(nil, "pidfd_send_signal") else {
            return { _, _, _, _ in -1 }
        }
        return unsafeBitCast(
            symbol,
            to: (@convention(c) (Int32, Int32, UnsafeMutableRawPointer?, UInt32) -> Int32).self
        )
    }()
}
