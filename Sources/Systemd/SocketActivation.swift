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
///
/// Switch on its ``code``; the other properties say what was wrong, as far as the code has them.
public struct SocketActivationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of problem this is.
    public struct Code: Hashable, Sendable {
        private enum Base: Hashable, Sendable {
            case wrongListenPID, invalidEnvironment, datagramSocket, notAListeningStreamSocket
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// `LISTEN_PID` names another process: the sockets are not meant for this one.
        public static let wrongListenPID = Code(.wrongListenPID)
        /// `LISTEN_FDS` is not a number, or sd_listen_fds failed (``SocketActivationError/errnoCode``).
        public static let invalidEnvironment = Code(.invalidEnvironment)
        /// A passed descriptor is a datagram socket; aiotask needs stream sockets.
        public static let datagramSocket = Code(.datagramSocket)
        /// A passed descriptor is not a listening stream socket (`Accept=yes`, a FIFO, a file, …).
        public static let notAListeningStreamSocket = Code(.notAListeningStreamSocket)
    }

    /// What kind of problem this is.
    public var code: Code
    /// For ``Code/wrongListenPID``: this process's pid.
    public var expectedPID: Int32?
    /// For ``Code/wrongListenPID``: the text of `LISTEN_PID`.
    public var foundPID: String?
    /// For ``Code/invalidEnvironment``: the `errno` sd_listen_fds failed with, when it gave one.
    public var errnoCode: Int32?
    /// For ``Code/invalidEnvironment``: why, in words (the system's text for ``errnoCode``).
    public var reason: String?
    /// For ``Code/datagramSocket`` and ``Code/notAListeningStreamSocket``: the descriptor.
    public var descriptor: Int32?
    /// For ``Code/datagramSocket`` and ``Code/notAListeningStreamSocket``: the descriptor's `FileDescriptorName=`.
    public var name: String?

    /// An error of the given kind; the static functions named after the codes fill in what each one has.
    public init(
        _ code: Code,
        expectedPID: Int32? = nil,
        foundPID: String? = nil,
        errnoCode: Int32? = nil,
        reason: String? = nil,
        descriptor: Int32? = nil,
        name: String? = nil
    ) {
        self.code = code
        self.expectedPID = expectedPID
        self.foundPID = foundPID
        self.errnoCode = errnoCode
        self.reason = reason
        self.descriptor = descriptor
        self.name = name
    }

    /// `LISTEN_PID` names another process: the sockets are not meant for this one.
    public static func wrongListenPID(expected: Int32, found: String) -> SocketActivationError {
        SocketActivationError(.wrongListenPID, expectedPID: expected, foundPID: found)
    }

    /// `LISTEN_FDS` is not a number, or sd_listen_fds failed, for `reason`.
    public static func invalidEnvironment(_ reason: String) -> SocketActivationError {
        SocketActivationError(.invalidEnvironment, reason: reason)
    }

    /// sd_listen_fds failed with `errno`.
    public static func invalidEnvironment(errno code: Int32) -> SocketActivationError {
        SocketActivationError(.invalidEnvironment, errnoCode: code, reason: String(cString: strerror(code)))
    }

    /// A passed descriptor is a datagram socket; aiotask needs stream sockets.
    public static func datagramSocket(descriptor: Int32, name: String) -> SocketActivationError {
        SocketActivationError(.datagramSocket, descriptor: descriptor, name: name)
    }

    /// A passed descriptor is not a listening stream socket (`Accept=yes`, a FIFO, a file, …).
    public static func notAListeningStreamSocket(descriptor: Int32, name: String) -> SocketActivationError {
        SocketActivationError(.notAListeningStreamSocket, descriptor: descriptor, name: name)
    }

    public var description: String {
        let socket = "\(name ?? "?") (fd \(descriptor.map { "\($0)" } ?? "?"))"
        switch code {
        case .wrongListenPID:
            return
                "LISTEN_PID=\(foundPID ?? "") does not name this process (\(expectedPID.map { "\($0)" } ?? "?")); refusing the passed sockets"
        case .invalidEnvironment:
            return "cannot take the sockets passed by systemd: \(reason ?? "")"
        case .datagramSocket:
            return "passed socket \(socket) is a datagram socket; use ListenStream= in the socket unit"
        default:
            return "passed descriptor \(socket) is not a listening stream socket; use ListenStream= and Accept=no"
        }
    }
}

extension SocketActivationError.Code: CustomStringConvertible {
    public var description: String {
        switch base {
        case .wrongListenPID: "wrong LISTEN_PID"
        case .invalidEnvironment: "invalid environment"
        case .datagramSocket: "datagram socket"
        case .notAListeningStreamSocket: "not a listening stream socket"
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
            throw .invalidEnvironment(errno: -count)
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
