import AiotaskChildProcess
import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

@Suite("Pool process isolation")
struct ProcessIsolationTests {
    @Test("a pool process inherits no socket, not even one left open across exec")
    func noInheritedSockets() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        // A listening socket without close-on-exec, as a careless library could leave behind: only the spawn's
        // own closing of every descriptor above 2 keeps it out of the pool.
        let leaky = try LeakySocket(path: server.directory + "/leaky.sock")
        defer { leaky.close() }
        try await withTimeout {
            let client = try await server.client()
            let first = try await client.workerPID()
            // Replace the process now that the server listens, a client is connected and the leaky socket exists.
            _ = try await client.failure(of: "exit 1")
            try await server.waitForFullPool()
            let pid = try await client.workerPID()
            #expect(pid != first)

            let descriptors = try openDescriptors(of: pid)
            #expect(descriptors.count >= 3, "\(descriptors)")
            let sockets = descriptors.filter { $0.value.hasPrefix("socket:") }
            #expect(sockets.isEmpty, "pool process \(pid) holds sockets: \(sockets)")
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "pool processes run with the open-file limit aiotaskd started with, not the one it raised for its clients",
        .enabled(if: (OpenFileLimit.current?.hard ?? 0) > 1024),
        arguments: ["echo", "exec:/bin/sleep 3600"]
    )
    func openFileLimitOfPoolProcesses(handler: String) async throws {
        let hard = try #require(OpenFileLimit.current?.hard)
        let directory = try makeTemporaryDirectory()
        let daemon = try SpawnedProcess.spawn(
            "/bin/sh",
            [
                "-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\"", Products.aiotaskd, "--listen",
                "unix:\(directory)/aiotask.sock", "--workers", "1", "--handler", handler,
            ],
            removing: systemdVariables
        )
        defer {
            daemon.killGroup()
            try? FileManager.default.removeItem(atPath: directory)
        }
        try await withTimeout {
            try await daemon.waitForStandardError(containing: "ready")
            #expect(try ConnectionScaleTests.openFileLimits(of: daemon.pid) == (hard, hard))
            // The limit is lowered by the pool process itself as it starts: wait until it has done so — it answered
            // a task (the Swift handler), or it became the program (which happens after).
            if handler == "echo" {
                let client = try await AiotaskClient.connect(to: .unix(path: directory + "/aiotask.sock"))
                #expect(try await client.submit(ByteBuffer(string: "x")) == ByteBuffer(string: "x"))
                try await client.close()
            }
            var pool = childProcesses(of: daemon.pid)
            while handler != "echo", pool.isEmpty || !pool.allSatisfy({ Self.command(of: $0) == "sleep" }) {
                try await Task.sleep(for: .milliseconds(5))
                pool = childProcesses(of: daemon.pid)
            }
            #expect(pool.count == 1)
            for pid in pool {
                let limits = try ConnectionScaleTests.openFileLimits(of: pid)
                #expect(limits == (1024, hard), "pool process \(pid): \(limits)")
            }
        }
        daemon.signal(SIGTERM)
        #expect(try await daemon.wait() == .exited(0))
    }

    /// The command name of `pid`, from `/proc/PID/comm`.
    private static func command(of pid: pid_t) -> String? {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines)
    }

    @Test("each pool process leads a process group of its own")
    func ownProcessGroup() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2)
        try await withTimeout {
            let started = server.logs.entries.filter { $0.message == "pool process started" }
            let pids = started.compactMap(TestServer.workerPID(of:))
            #expect(pids.count == 2)
            for pid in pids {
                #expect(getpgid(pid) == pid, "pool process \(pid) is in group \(getpgid(pid))")
                #expect(getpgid(pid) != getpgrp())
            }
        }
        try await server.stop()
    }

    @Test("pool processes die with the daemon, even when killed with SIGKILL and busy with a task")
    func dieWithDaemon() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = directory + "/aiotask.sock"
        let daemon = try DaemonProcess.spawn(
            Products.aiotaskd,
            ["--listen", "unix:\(socket)", "--workers", "2", "--handler", "chaos"],
            output: directory + "/aiotaskd.log"
        )
        let survivors = Survivors()
        defer {
            daemon.killIfRunning()
            survivors.kill()
        }

        try await withTimeout {
            let client = try await Self.connect(to: .unix(path: socket))
            let pids = childProcesses(of: daemon.pid)
            #expect(pids.count == 2, "\(pids)")
            let workers = try pids.map { try ProcessDeathWatch(pid: $0) }
            survivors.add(workers)
            #expect(workers.allSatisfy { $0.isAlive })

            // One process blocked in a task that ignores SIGTERM: it cannot notice its link closing; only the
            // parent-death signal can end it.
            _ = try await client.enqueue("hang")
            try await client.waitForInfo { $0.workers.busy == 1 }

            kill(daemon.pid, SIGKILL)
            #expect(await daemon.wait() == SIGKILL)
            for process in workers {
                #expect(
                    await process.waitForExit(limit: .seconds(5)),
                    "pool process \(process.pid) outlived its daemon"
                )
            }
            try? await client.close()
        }
    }

    /// Connects to a daemon that is starting, trying again until it listens.
    static func connect(to address: ServerAddress) async throws -> AiotaskClient {
        while true {
            do {
                return try await AiotaskClient.connect(to: address)
            } catch let error as AiotaskClientError where error.code == .connectFailed {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }
}

/// A Unix listening socket opened without close-on-exec.
private struct LeakySocket {
    let descriptor: Int32

    init(path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in path.utf8.prefix(buffer.count - 1).enumerated() { buffer[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0, listen(descriptor, 1) == 0 else {
            let error = errno
            Glibc.close(descriptor)
            throw POSIXError(.init(rawValue: error) ?? .EIO)
        }
    }

    func close() {
        Glibc.close(descriptor)
    }
}

/// A daemon the test started (a ``ChildProcess``) and reaps by its pid alone (never `waitpid(-1)`, which could
/// steal the exit of an in-process pool's processes).
private final class DaemonProcess: Sendable {
    private let child: ChildProcess
    var pid: pid_t { child.pid }

    private init(child: ChildProcess) {
        self.child = child
        child.watchExit()
    }

    /// Starts `executable` with `arguments`, its stdout and stderr appended to the file `output`, stdin empty.
    static func spawn(_ executable: String, _ arguments: [String], output: String) throws -> DaemonProcess {
        let environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AIOTASK_") }
        let input = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { close(input) }
        let log = open(output, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard log >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { close(log) }
        let child = try ChildProcess.spawn(
            executable,
            arguments: arguments,
            environment: environment,
            descriptors: [input, log, log]
        )
        return DaemonProcess(child: child)
    }

    /// Waits until the daemon is reaped; returns the signal that ended it, or 0 when it exited.
    func wait() async -> Int32 {
        await child.exitStatus() & 0x7f
    }

    /// Kills the daemon unless it is gone already (cleanup after a failed test).
    func killIfRunning() {
        child.signal(SIGKILL)
    }
}
