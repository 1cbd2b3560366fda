import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOConcurrencyHelpers
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Processes a handler leaves outside its process group (`setsid` and a double fork) die with the pool process
/// that started them — on a timeout, a cancel, the daemon's SIGTERM — and are logged: the real `aiotaskd`, a
/// child subreaper, takes them back.
@Suite("Processes a handler leaves behind")
struct LeftoverProcessTests {
    /// A handler program that answers `escape` with the pid of a `sleep 3600` it started in a session of its own
    /// (a double fork: its parent exits at once, so nothing ties it to the handler), and hangs on any other task.
    static func escapingHandler() throws -> HandlerScript {
        try HandlerScript(
            """
            import os
            import time

            for task in tasks():
                if task != b"escape":
                    while True:
                        time.sleep(3600)
                reader, writer = os.pipe()
                child = os.fork()
                if child == 0:
                    os.setsid()
                    grandchild = os.fork()
                    if grandchild == 0:
                        os.execv("/bin/sleep", ["sleep", "3600"])
                    os.write(writer, str(grandchild).encode())
                    os._exit(0)
                os.close(writer)
                pid = os.read(reader, 32)
                os.waitpid(child, 0)
                reply(0, pid)
            """
        )
    }

    /// Starts aiotaskd with the escaping handler and one pool process, connects, and has a `sleep 3600` escape.
    static func escape(
        _ body:
            @escaping @Sendable (_ daemon: RunningDaemon, _ client: AiotaskClient, _ escaped: ProcessDeathWatch)
            async throws -> Void
    ) async throws {
        let script = try escapingHandler()
        defer { script.remove() }
        let daemon = try await RunningDaemon.start(
            arguments: ["--handler", "exec:\(HandlerScript.python) \(script.path)", "--workers", "1"]
        )
        let survivors = Survivors()
        defer { survivors.kill() }
        try await daemon.stopAfter {
            try await withTimeout(.seconds(30)) {
                let client = try await AiotaskClient.connect(to: daemon.server)
                let answer = String(decoding: try await client.submit("escape"), as: UTF8.self)
                let pid = try #require(pid_t(answer), "not a pid: \(answer)")
                let escaped = try ProcessDeathWatch(pid: pid)
                survivors.add([escaped])
                #expect(getsid(pid) != getsid(daemon.process.pid), "the process did not leave the handler's session")
                try await body(daemon, client, escaped)
                try await client.close()
            }
        }
    }

    /// Expects `process` to die, to be reaped (its `/proc` entry gone: no zombie left), and the daemon to have
    /// logged its killing.
    static func expectKilledAndLogged(_ process: ProcessDeathWatch, by daemon: RunningDaemon) async throws {
        #expect(await process.waitForExit(limit: .seconds(10 * testSlowdown)), "process \(process.pid) lives on")
        try await withTimeout(.seconds(10)) {
            while access("/proc/\(process.pid)", F_OK) == 0 { try await Task.sleep(for: .milliseconds(10)) }
        }
        try await daemon.process.waitForStandardError(
            containing: "killed process \(process.pid) (sleep 3600) left behind by a handler",
            limit: .seconds(10)
        )
    }

    @Test("a process a handler left outside its group dies when the handler's task times out, and is logged")
    func afterTimeout() async throws {
        try await Self.escape { daemon, client, escaped in
            let failure = try #require(try await client.failure(of: "hang", timeout: .milliseconds(300)))
            #expect(failure.reason == .timedOut)
            try await Self.expectKilledAndLogged(escaped, by: daemon)
        }
    }

    @Test("a process a handler left outside its group dies when the handler's task is cancelled, and is logged")
    func afterCancel() async throws {
        try await Self.escape { daemon, client, escaped in
            let task = try await client.enqueue("hang")
            #expect(try await task.status() == .processing)
            task.cancel()
            let failure = try #require(await task.failure())
            #expect(failure.reason == .cancelled)
            try await Self.expectKilledAndLogged(escaped, by: daemon)
        }
    }

    @Test("a process a handler left outside its group dies when aiotaskd stops on SIGTERM, and is logged")
    func afterSigterm() async throws {
        let script = try Self.escapingHandler()
        defer { script.remove() }
        let daemon = try await RunningDaemon.start(
            arguments: ["--handler", "exec:\(HandlerScript.python) \(script.path)", "--workers", "1"]
        )
        let survivors = Survivors()
        defer { survivors.kill() }
        let escaped = NIOLockedValueBox<ProcessDeathWatch?>(nil)
        try await daemon.stopAfter {
            try await withTimeout(.seconds(30)) {
                let client = try await AiotaskClient.connect(to: daemon.server)
                let answer = String(decoding: try await client.submit("escape"), as: UTF8.self)
                let pid = try #require(pid_t(answer), "not a pid: \(answer)")
                let watch = try ProcessDeathWatch(pid: pid)
                escaped.withLockedValue { $0 = watch }
                survivors.add([watch])
                try await client.close()
            }
        }
        // stopAfter sent SIGTERM and saw the daemon exit 0: the process must be gone already.
        let process = try #require(escaped.withLockedValue { $0 })
        #expect(!process.isAlive, "process \(process.pid) outlived aiotaskd")
        try await Self.expectKilledAndLogged(process, by: daemon)
    }
}
