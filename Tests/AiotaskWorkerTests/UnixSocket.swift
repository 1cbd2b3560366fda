import AiotaskTestSupport
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A plain blocking stream socket to a Unix socket path, for tests that need thousands of connections or exact
/// control over every byte and every `write`, without an event loop in between.
final class UnixSocket {
    let descriptor: Int32

    /// Connects to `path`; reads give up after `receiveTimeout`.
    init(path: String, receiveTimeout: Duration = .seconds(20)) throws {
        descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        let connected = UnixSocketAddress.connect(descriptor, to: path)
        guard connected == 0 else {
            let error = errno
            close(descriptor)
            throw POSIXError(.init(rawValue: error) ?? .EIO)
        }
        setReceiveTimeout(descriptor, receiveTimeout)
    }

    deinit {
        close(descriptor)
    }

    /// Writes all of `bytes`; false if the peer has closed the connection first (no SIGPIPE is raised).
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes {
                Glibc.send(descriptor, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            offset += count
        }
        return true
    }

    /// Ends the sending side: the server reads the end of the stream.
    func finishSending() {
        shutdown(descriptor, Int32(SHUT_WR))
    }

    /// Reads exactly `count` bytes.
    ///
    /// - Throws: ``SocketReadError`` when the connection ends first or the receive timeout passes.
    func receive(count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let received = bytes.withUnsafeMutableBytes {
                recv(descriptor, $0.baseAddress! + offset, count - offset, 0)
            }
            if received < 0 && errno == EINTR { continue }
            guard received > 0 else { throw SocketReadError(errno: received == 0 ? 0 : errno, received: offset) }
            offset += received
        }
        return bytes
    }

    /// Reads until the server closes the connection (an end of stream or a reset).
    ///
    /// - Throws: ``SocketReadError`` when the receive timeout passes first.
    func receiveUntilClosed() throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let received = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
            if received > 0 {
                bytes += chunk[..<received]
            } else if received == 0 || errno == ECONNRESET {
                return bytes
            } else if errno != EINTR {
                throw SocketReadError(errno: errno, received: bytes.count)
            }
        }
    }
}

/// A read that ended before it got what it wanted.
struct SocketReadError: Error, CustomStringConvertible {
    /// 0 for an end of stream, `EAGAIN` for the receive timeout, else the error of `recv`.
    var errno: Int32
    /// Bytes received before it ended.
    var received: Int

    var description: String {
        errno == 0
            ? "the connection ended after \(received) bytes"
            : "recv failed after \(received) bytes: \(String(cString: strerror(errno)))"
    }
}
