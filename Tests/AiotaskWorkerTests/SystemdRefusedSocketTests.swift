import AiotaskTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Sockets aiotaskd must not serve: meant for another process, or of the wrong kind.
@Suite("Refused passed sockets", .timeLimit(.minutes(1)))
struct SystemdRefusedSocketTests {
    @Test("LISTEN_FDS with a LISTEN_PID naming another process: exit 78, a clear message, ERRNO= to systemd")
    func wrongListenPID() async throws {
        let notifications = try SystemdNotifyListener()
        defer { notifications.close() }
        let socket = try makeListeningTCPSocket()
        defer { close(socket) }
        let process = try PassedSocketProcess(
            Products.aiotaskd,
            ["--handler", "echo", "--workers", "1"],
            environment: [
                "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
                "LISTEN_FDS": "1",
                "LISTEN_PID": "1",
                "LISTEN_FDNAMES": "aiotask",
                "NOTIFY_SOCKET": notifications.path,
            ],
            socket: socket
        )
        let (exit, standardError) = try await process.wait()
        #expect(exit == .exited(78), "\(standardError)")
        #expect(
            standardError.contains(
                "LISTEN_PID=1 does not name this process (\(process.pid)); refusing the passed sockets"
            ),
            "\(standardError)"
        )
        let failed = try await notifications.next(limit: .seconds(5)) { $0["ERRNO"] != nil }
        #expect(failed.message["ERRNO"] == String(EBADF))
        #expect(failed.message["STATUS"]?.contains("LISTEN_PID=1") == true, "\(failed.message)")
        #expect(!notifications.messages.contains { $0["READY"] != nil })
    }

    @Test(
        "a datagram socket from systemd-socket-activate --datagram: exit 78, a clear message, ERRNO= to systemd",
        .enabled(if: systemdSocketActivateIsInstalled, "no \(systemdSocketActivate) (package systemd)")
    )
    func datagramSocket() async throws {
        let port = try SystemdTestKit.freePort(type: Int32(SOCK_DGRAM.rawValue))
        let daemon = try SocketActivatedDaemon.start(
            listen: "127.0.0.1:\(port)",
            fdname: "aiotask-udp",
            datagram: true,
            ["--handler", "echo", "--workers", "1"]
        )
        defer { daemon.cleanUp() }
        try await daemon.waitUntilListening()
        // The first datagram makes systemd-socket-activate exec the daemon.
        try sendUDPDatagram(to: port)

        #expect(try await daemon.process.wait() == .exited(78))
        let message = "passed socket aiotask-udp (fd 3) is a datagram socket; use ListenStream= in the socket unit"
        #expect(daemon.process.standardError.contains(message), "\(daemon.process.standardError)")
        let failed = try await daemon.notifications.next(limit: .seconds(5)) { $0["ERRNO"] != nil }
        #expect(failed.message["ERRNO"] == String(EBADF))
        #expect(failed.message["STATUS"] == "Failed: \(message)")
        #expect(!daemon.notifications.messages.contains { $0["READY"] != nil })
        // Nothing was started: the daemon refused before spawning its pool.
        #expect(!daemon.process.standardError.contains("info: ready"))
    }
}
