import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// An address the server could not listen on, and why, in words a person can act on:
/// `cannot listen on tcp://127.0.0.1:4399: address already in use`.
///
/// The address is named as it was configured and the reason is the system's text for the error, without the name of
/// the library call that failed: the operator must know *which* address to free or directory to create, not how
/// NIO binds a socket.
public struct ListenError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The address as configured (`tcp://127.0.0.1:4399`, `unix:/run/aiotask/aiotask.sock`), or the name of an
    /// adopted socket.
    public var address: String
    /// The `errno` of the failure, when the system gave one (`EADDRINUSE`, `ENOENT`, …).
    public var code: Int32?
    /// Why, in plain words: `address already in use`, `no such file or directory`.
    public var reason: String
    /// The error binding or adopting the socket threw (an `IOError`, a `SocketAddressError`, a
    /// ``UnixSocketPathError``, …), for a program that wants more than the words; not part of equality.
    public var underlying: (any Error)?

    public static func == (lhs: ListenError, rhs: ListenError) -> Bool {
        lhs.address == rhs.address && lhs.code == rhs.code && lhs.reason == rhs.reason
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(address)
        hasher.combine(code)
        hasher.combine(reason)
    }

    public var description: String { "cannot listen on \(address): \(reason)" }

    /// Describes `error`, thrown while binding or adopting the socket named `address`.
    public init(address: String, error: any Error) {
        self.address = address
        // A ListenError passed on keeps what it wrapped.
        underlying = (error as? ListenError).map { $0.underlying } ?? error
        switch error {
        case let error as IOError:
            code = error.errnoCode
            reason = Self.text(ofErrno: error.errnoCode)
        case SocketAddressError.unixDomainSocketPathTooLong:
            code = ENAMETOOLONG
            reason = "the path is longer than a unix socket address holds (107 bytes)"
        case let error as SocketAddressError.UnknownHost:
            code = nil
            reason = "cannot resolve the host \(error.host): \(error.errorDescription)"
        case let error as ListenError:
            code = error.code
            reason = error.reason
        case let error as UnixSocketPathError:
            code = error.code == .inUse ? EADDRINUSE : error.code == .notASocket ? ENOTSOCK : error.errnoCode
            reason = error.reason
        default:
            code = nil
            reason = "\(error)"
        }
    }

    /// The C library's text for `code`, lower-cased to run on from a colon: `address already in use`.
    static func text(ofErrno code: Int32) -> String {
        let text = String(cString: strerror(code))
        return text.prefix(1).lowercased() + text.dropFirst()
    }
}
