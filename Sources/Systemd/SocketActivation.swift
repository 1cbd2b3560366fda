import CSystemd

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A listening socket passed by systemd (`LISTEN_FDS`), with its `FileDescriptorName=`.
public struct ActivatedSocket: Hashable, Sendable {
    /// The descriptor, bound, listening and close-on-exec.
    public var descriptor: Int32
    /// The unit's `FileDescriptorName=`, or systemd's default (`unknown`, or the socket unit's name).
    public var name: String
    /// The accept-queue length to restore after the socket is adopted, when it could be read from the kernel.
    public var backlog: Int32?
}

/// Why the sockets systemd passed cannot be served.
public enum SocketActivationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// `LISTEN_PID` names another process: the sockets are not meant for this one.
    case wrongListenPID(expected: Int32, found: String)
    /// `LISTEN_FDS` is not a number, or sd_listen_fds failed.
    case invalidEnvironment(String)
    /// A passed descriptor is a datagram socket; aiotask needs stream sockets.
    case datagramSocket(descriptor: Int32, name: String)
    /// A passed descriptor is not a listening stream socket (`Accept=yes`, a FIFO, a file, …).
    case notAListeningStreamSocket(descriptor: Int32, name: String)

    public var description: String {
        switch self {
        case .wrongListenPID(let expected, let found):
            "LISTEN_PID=\(found) does not name this process (\(expected)); refusing the passed sockets"
        case .invalidEnvironment(let reason):
            "cannot take the sockets passed by systemd: \(reason)"
        case .datagramSocket(let descriptor, let name):
            "passed socket \(name) (fd \(descriptor)) is a datagram socket; use ListenStream= in the socket unit"
        case .notAListeningStreamSocket(let descriptor, let name):
            "passed descriptor \(name) (fd \(descriptor)) is not a listening stream socket; use ListenStream= and Accept=no"
        }
    }
}

/// Socket activation: the listening sockets systemd passes to a service.
public enum SocketActivation {
    /// Takes the sockets passed through `LISTEN_FDS`, checks each, marks them close-on-exec and clears the
    /// variables so child processes don't see them. Returns an empty array when no socket was passed.
    public static func takeListeningSockets() throws(SocketActivationError) -> [ActivatedSocket] {
        guard getenv("LISTEN_FDS") != nil else { return [] }
        if let listenPID = getenv("LISTEN_PID").map({ String(cString: $0) }), listenPID != String(getpid()) {
            throw .wrongListenPID(expected: getpid(), found: listenPID)
        }
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count >= 0 else {
            throw .invalidEnvironment(String(cString: strerror(-count)))
        }
        defer {
            if let names {
                for index in 0..<Int(count) { free(names[index]) }
                free(names)
            }
        }
        var sockets: [ActivatedSocket] = []
        for index in 0..<count {
            let descriptor = SD_LISTEN_FDS_START + index
            let name = names?[Int(index)].map { String(cString: $0) } ?? "fd\(descriptor)"
            if sd_is_socket(descriptor, AF_UNSPEC, Int32(SOCK_DGRAM.rawValue), -1) > 0 {
                throw .datagramSocket(descriptor: descriptor, name: name)
            }
            guard sd_is_socket(descriptor, AF_UNSPEC, Int32(SOCK_STREAM.rawValue), 1) > 0 else {
                throw .notAListeningStreamSocket(descriptor: descriptor, name: name)
            }
            sockets.append(ActivatedSocket(descriptor: descriptor, name: name, backlog: tcpBacklog(of: descriptor)))
        }
        return sockets
    }

    /// The accept-queue limit of a listening TCP socket, read from `TCP_INFO` (where Linux reports it in
    /// `tcpi_sacked` for sockets in the LISTEN state); nil for other sockets.
    static func tcpBacklog(of descriptor: Int32) -> Int32? {
        guard sd_is_socket_inet(descriptor, AF_UNSPEC, Int32(SOCK_STREAM.rawValue), 1, 0) > 0 else { return nil }
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(descriptor, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0, info.tcpi_sacked > 0 else {
            return nil
        }
        return Int32(clamping: info.tcpi_sacked)
    }

    /// Restores a socket's accept-queue length after adoption (NIO calls `listen` again with its own backlog).
    public static func restoreBacklog(of socket: ActivatedSocket, default fallback: Int32) {
        _ = listen(socket.descriptor, socket.backlog ?? fallback)
    }
}
