import Systemd
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `SocketActivationError` is a struct around a code, as `AiotaskClientError` is; the old case names still make it.
@Suite("Codes of socket-activation errors")
struct SocketActivationErrorTests {
    @Test("a failed sd_listen_fds keeps its errno beside the words, and the code is what a caller switches on")
    func keepsErrno() {
        let error = SocketActivationError.invalidEnvironment(errno: EINVAL)
        #expect(error.code == .invalidEnvironment)
        #expect(error.errnoCode == EINVAL)
        #expect(error.description == "cannot take the sockets passed by systemd: \(String(cString: strerror(EINVAL)))")
    }

    @Test("each code carries what it is about, and reads as before")
    func fieldsOfEachCode() {
        let pid = SocketActivationError.wrongListenPID(expected: 42, found: "1")
        #expect(pid.code == .wrongListenPID && pid.expectedPID == 42 && pid.foundPID == "1")
        #expect(pid.description == "LISTEN_PID=1 does not name this process (42); refusing the passed sockets")
        let datagram = SocketActivationError.datagramSocket(descriptor: 3, name: "aiotask")
        #expect(datagram.code == .datagramSocket && datagram.descriptor == 3 && datagram.name == "aiotask")
        #expect(
            datagram.description
                == "passed socket aiotask (fd 3) is a datagram socket; use ListenStream= in the socket unit"
        )
        let notListening = SocketActivationError.notAListeningStreamSocket(descriptor: 4, name: "x")
        #expect(notListening.code == .notAListeningStreamSocket)
        #expect(notListening != datagram)
    }
}
