#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Readies a Unix socket path for listening without taking it from a live server.
///
/// Binding needs the path free, and a socket file outlives the process that bound it when that process dies
/// without removing it (SIGKILL, a crash). Removing whatever socket file is there would let a second daemon
/// silently take the path from a first one that still serves: the first keeps its socket, unreachable by name,
/// and removes the second's file when it stops. So the file is removed only once a connection to it is refused,
/// which proves that no process listens there.
enum UnixSocketPath {
    /// Removes a stale socket file at `path`; does nothing when there is no file.
    ///
    /// - Throws: ``UnixSocketPathError`` when a process accepts connections at `path`, when `path` is a file
    ///   that is not a socket, or when it cannot be told whether a process listens there.
    static func prepareForListening(at path: String) throws(UnixSocketPathError) {
        var status = stat()
        guard lstat(path, &status) == 0 else {
            if errno == ENOENT { return }
            throw UnixSocketPathError(cannotCheck: path, errno: errno)
        }
        guard status.st_mode & S_IFMT == S_IFSOCK else { throw UnixSocketPathError(path: path, code: .notASocket) }

        switch probe(path) {
        case 0, EAGAIN, EINPROGRESS:
            // Accepted, or the listener's backlog is full: either way a process listens there.
            throw UnixSocketPathError(path: path, code: .inUse)
        case ECONNREFUSED:
            // Nobody listens: the file was left behind by a process that is gone.
            if unlink(path) != 0 && errno != ENOENT {
                throw UnixSocketPathError(cannotCheck: path, errno: errno)
            }
        case ENOENT:
            return
        case let error:
            throw UnixSocketPathError(cannotCheck: path, errno: error)
        }
    }

    /// Connects to `path` without blocking and closes the connection: 0 on success, else the `errno`.
    private static func probe(_ path: String) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let fits = withUnsafeMutableBytes(of: &address.sun_path) { buffer -> Bool in
            guard path.utf8.count < buffer.count else { return false }
            buffer.copyBytes(from: path.utf8)
            return true
        }
        // A path too long for an address cannot be bound either; binding reports that.
        guard fits else { return ENOENT }
        let descriptor = socket(
            AF_UNIX,
            Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue),
            0
        )
        guard descriptor >= 0 else { return errno }
        defer { close(descriptor) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        return result == 0 ? 0 : errno
    }
}

/// A Unix socket path cannot be listened on: `cannot listen on unix:PATH: REASON`.
public struct UnixSocketPathError: Error, CustomStringConvertible, Sendable {
    /// What stands in the way.
    public struct Code: Hashable, Sendable {
        let name: String
        /// A live process accepts connections at the path.
        public static let inUse = Code(name: "inUse")
        /// The path names a file that is not a socket.
        public static let notASocket = Code(name: "notASocket")
        /// The path could not be examined (permissions, I/O).
        public static let cannotCheck = Code(name: "cannotCheck")
    }

    /// The socket path.
    public var path: String
    public var code: Code
    /// The system's reason, for ``Code/cannotCheck``.
    public var detail: String = ""
    /// The `errno` the check failed with, for ``Code/cannotCheck``.
    public var errnoCode: Int32?

    /// Why the path cannot be listened on, in plain words.
    public var reason: String {
        switch code {
        case .inUse: "another process is listening there"
        case .notASocket: "the path exists and is not a socket"
        default: "cannot tell whether another process is listening there: \(detail)"
        }
    }

    public var description: String {
        "cannot listen on unix:\(path): \(reason)"
    }

    init(path: String, code: Code, detail: String = "", errnoCode: Int32? = nil) {
        self.path = path
        self.code = code
        self.detail = detail
        self.errnoCode = errnoCode
    }

    /// The check of `path` failed with `errno`.
    init(cannotCheck path: String, errno code: Int32) {
        self.init(path: path, code: .cannotCheck, detail: String(cString: strerror(code)), errnoCode: code)
    }
}
