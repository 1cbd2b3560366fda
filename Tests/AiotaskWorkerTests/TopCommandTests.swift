import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Testing

@testable import AiotaskServer

#if canImport(Glibc)
    import Glibc
#endif

/// `aiotask top` in a real pseudo-terminal: a tmux server of the test's own runs it against a test server, and the
/// test reads the screen tmux keeps, presses keys, and checks that the terminal is left as it was found.
@Suite("aiotask top in a terminal", .enabled(if: Tmux.isInstalled, "no \(Tmux.path) (package tmux)"))
struct TopCommandTests {
    @Test(
        "top shows every pool process by its real pid and the running task, and q or Ctrl-C restores the terminal",
        arguments: ["q", "C-c"]
    )
    func liveView(quitKey: String) async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2)
        let tmux = try Tmux(directory: server.directory)
        do {
            try await withTimeout(.seconds(40)) {
                let client = try await server.client()
                let task = try await client.enqueue("sleep 30000")
                let pool = try await client.waitForPool { $0.processes.contains { $0.taskID == task.id } }
                let pids = pool.processes.compactMap(\.pid)
                #expect(pids.count == 2)
                let children = childProcesses(of: getpid())
                for pid in pids { #expect(children.contains(pid_t(pid)), "pid \(pid) is not a child of the server") }

                let files = server.directory
                try await tmux.start(
                    "stty -g > \(files)/before; \(Products.aiotask) top --server \(server.address); "
                        + "echo $? > \(files)/status; stty -g > \(files)/after; echo TOP-EXITED; sleep 60"
                )
                let screen = try await tmux.waitForScreen { screen in
                    pids.allSatisfy { pid in screen.contains { $0.contains(" \(pid) ") } }
                        && screen.contains { $0.contains("\(task.id)") }
                }
                let busy = try #require(screen.first { $0.contains("\(task.id)") })
                #expect(busy.contains("busy"), "\(busy)")
                #expect(screen.contains { $0.contains("SLOT") && $0.contains("RSS") && $0.contains("RESTARTS") })
                #expect(screen.contains { $0.contains("queue 0/") })
                #expect(try await tmux.run(["display-message", "-p", "#{alternate_on}"]) == "1\n")

                try await tmux.run(["send-keys", "-t", "top", quitKey])
                let after = try await tmux.waitForScreen { screen in screen.contains { $0.contains("TOP-EXITED") } }
                #expect(!after.contains { $0.contains("SLOT") }, "the view is still on screen: \(after)")
                #expect(try String(contentsOfFile: "\(files)/status", encoding: .utf8) == "0\n")
                let before = try String(contentsOfFile: "\(files)/before", encoding: .utf8)
                #expect(try String(contentsOfFile: "\(files)/after", encoding: .utf8) == before, "terminal modes")
                #expect(try await tmux.run(["display-message", "-p", "#{alternate_on}"]) == "0\n")
                task.cancel()
                try await client.close()
            }
        } catch {
            tmux.kill()
            throw error
        }
        tmux.kill()
        try await server.stop()
    }

    @Test("top --once prints one screen and --json one object, without a terminal")
    func onceAndJSON() async throws {
        let server = try await TestServer.start(handler: .builtin("echo"), workers: 2)
        try await withTimeout {
            let pool = try await server.server.poolStatus()
            let once = try await runCLI(["top", "--once", "--server", "\(server.address)"])
            #expect(once.exit == .exited(0), "\(once.standardError)")
            for process in pool.processes {
                #expect(once.standardOutput.contains(" \(process.pid ?? -1) "), "\(once.standardOutput)")
            }
            let json = try await runCLI(["top", "--json", "--server", "\(server.address)"])
            #expect(json.exit == .exited(0), "\(json.standardError)")
            let decoded = try JSONDecoder().decode(PoolStatus.self, from: Data(json.standardOutput.utf8))
            #expect(decoded.processes.map(\.pid) == pool.processes.map(\.pid))
            #expect(decoded.processes.allSatisfy { $0.state == .idle })
        }
        try await server.stop()
    }
}

extension AiotaskClient {
    /// Waits until the pool's state satisfies `condition`, asking again every few milliseconds.
    func waitForPool(_ condition: (PoolStatus) -> Bool) async throws -> PoolStatus {
        while true {
            let status = try await poolStatus()
            if condition(status) { return status }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

/// A tmux server of a test's own, on a socket in the test's directory, with no configuration file.
struct Tmux: Sendable {
    static let path = "/usr/bin/tmux"
    static var isInstalled: Bool { access(path, X_OK) == 0 }

    let socket: String

    init(directory: String) throws {
        socket = directory + "/tmux.sock"
    }

    /// Starts the session `top`, 160 by 40, running `command` in `sh`.
    func start(_ command: String) async throws {
        try await run(["-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", "160", "-y", "40", command])
    }

    /// Runs tmux with `arguments` on this server; its output. Fails when it exits other than 0.
    @discardableResult
    func run(_ arguments: [String]) async throws -> String {
        let process = try SpawnedProcess.spawn(Self.path, ["-S", socket] + arguments)
        let exit = try await process.wait()
        guard exit == .exited(0) else {
            throw TmuxFailed(arguments: arguments, exit: exit, standardError: process.standardError)
        }
        return process.standardOutput
    }

    /// The pane's lines, as a reader sees them.
    func screen() async throws -> [String] {
        try await run(["capture-pane", "-p", "-t", "top"]).components(separatedBy: "\n")
    }

    /// Reads the screen until `condition` holds (tmux announces no change, so this is polled); the screen.
    func waitForScreen(_ condition: ([String]) -> Bool) async throws -> [String] {
        while true {
            let screen = try await screen()
            if condition(screen) { return screen }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Ends the tmux server and what runs in it.
    func kill() {
        _ = try? SpawnedProcess.spawn(Self.path, ["-S", socket, "kill-server"])
    }

    struct TmuxFailed: Error, CustomStringConvertible {
        var arguments: [String]
        var exit: ProcessExit
        var standardError: String
        var description: String { "tmux \(arguments.joined(separator: " ")): \(exit): \(standardError)" }
    }
}
