import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import Glibc
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// One process, with one task sent ahead behind the running one, however long that one runs.
private func prefetchingWorker(handler: ProcessCommand = .builtin("chaos")) async throws -> TestServer {
    try await TestServer.start(handler: handler, workers: 1) {
        $0.prefetch = 1
        $0.prefetchStallLimit = .seconds(3600)
    }
}

/// A handler program (which does not claim its tasks) answering `sleep MS`, `pid` and anything else as echo.
private func sleepyScript() throws -> HandlerScript {
    try HandlerScript(
        """
        import os
        import time

        for task in tasks():
            if task.startswith(b"sleep "):
                time.sleep(int(task[6:]) / 1000)
                reply(0, b"slept")
            elif task == b"pid":
                reply(0, str(os.getpid()).encode())
            else:
                reply(0, task)
        """
    )
}

@Suite("Prefetch: tasks sent ahead to busy processes", .serialized)
struct PrefetchTests {
    @Test("a task sent ahead waits in the process's pipe, reports inQueue, and runs next on the same process")
    func runsNext() async throws {
        let server = try await prefetchingWorker()
        try await withTimeout {
            let client = try await server.client()
            let running = try await client.enqueue("sleep 2000")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let ahead = try await client.enqueue("pid")
            #expect(try await ahead.status() == .inQueue)
            #expect(try await running.text() == "slept 2000")
            let pid = try await ahead.text()
            #expect(try await client.workerPID() == pid_t(pid))
            try await client.close()
        }
        try await server.stop()
    }

    @Test("when the process dies, only its running task fails; the task it had not started runs on another one")
    func crashRequeues() async throws {
        let server = try await prefetchingWorker()
        try await withTimeout {
            let client = try await server.client()
            let doomedPID = try await client.workerPID()
            let running = try await client.enqueue("sleep 60000")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let ahead = try await client.enqueue("pid")
            _ = try await client.waitForInfo { $0.queue.length == 1 }
            kill(doomedPID, SIGKILL)
            let failure = await running.failure()
            #expect(failure?.reason == .workerCrashed)
            #expect(failure?.message.contains("SIGKILL") == true)
            let ranOn = try #require(pid_t(try await ahead.text()))
            #expect(ranOn != doomedPID)
            try await client.close()
        }
        try await server.stop()
    }

    @Test("a timed-out task's process is replaced, and the task sent ahead of it still gets its result")
    func timeoutRequeues() async throws {
        let server = try await prefetchingWorker()
        try await withTimeout {
            let client = try await server.client()
            let slow = try await client.enqueue("sleep 60000", timeout: .milliseconds(300))
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let ahead = try await client.enqueue("echo after the timeout")
            #expect(await slow.failure()?.reason == .timedOut)
            #expect(try await ahead.text() == "after the timeout")
            try await client.close()
        }
        try await server.stop()
    }

    @Test("cancelling a task sent ahead to a Swift handler withdraws it: answered at once, the process carries on")
    func cancelAheadWithdraws() async throws {
        let server = try await prefetchingWorker()
        let outcome = try await cancelBehindRunningTask(on: server)
        #expect(outcome.sameProcess)
        #expect(outcome.restarts == 0)
        try await server.stop()
    }

    @Test(
        "cancelling a task sent ahead to a handler program answers it at once; its process is replaced as it starts it"
    )
    func cancelAheadOfProgram() async throws {
        let script = try sleepyScript()
        defer { script.remove() }
        let server = try await prefetchingWorker(handler: script.command)
        #expect(try await !cancelBehindRunningTask(on: server).sameProcess)
        try await server.stop()
    }

    @Test(
        "by default nothing is sent ahead to a handler program: a task cancelled while it waits leaves the process be"
    )
    func noAutomaticPrefetchToPrograms() async throws {
        let script = try sleepyScript()
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 1) {
            $0.prefetchStallLimit = .seconds(3600)
        }
        let outcome = try await cancelBehindRunningTask(on: server)
        #expect(outcome.sameProcess)
        #expect(outcome.restarts == 0)
        try await server.stop()
    }

    /// On a pool of one process: runs `sleep 2000`, submits a second task behind it and cancels that one, which
    /// must be answered `cancelled` at once while the first completes. Returns whether the pool's process is then
    /// still the one that ran them, and the pool's restart count.
    private func cancelBehindRunningTask(on server: TestServer) async throws -> (sameProcess: Bool, restarts: Int) {
        try await withTimeout {
            let client = try await server.client()
            let firstPID = try await client.workerPID()
            // Long enough that the cancel's answer, if it is not held back, comes while this one still runs.
            let running = try await client.enqueue("sleep \(2000 * testSlowdown)")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let behind = try await client.enqueue("echo never answered")
            _ = try await client.waitForInfo { $0.queue.length == 1 }
            behind.cancel()
            #expect(await behind.failure()?.reason == .cancelled)
            // "At once": not after the running task. Answers come in order on the connection, so had the running
            // task finished first, its result would be in and the server would no longer know it.
            #expect(try await running.status() == .processing, "the cancel was answered after the running task")
            #expect(try await running.text().hasPrefix("slept"))
            try await server.waitForFullPool()
            let outcome = (try await client.workerPID() == firstPID, try await client.serverInfo().workers.restarts)
            try await client.close()
            return outcome
        }
    }

    @Test("tasks sent ahead to a process busy with a long task are withdrawn and run on the process that is idle")
    func withdrawnToIdleProcess() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 2) {
            $0.prefetchStallLimit = .seconds(3600)
        }
        try await withTimeout {
            let client = try await server.client()
            // Both processes have started serving (and so claim their tasks) once both answered a task.
            let warmUp = [try await client.enqueue("sleep 100"), try await client.enqueue("sleep 100")]
            for task in warmUp { #expect(try await task.text() == "slept 100") }
            let long = try await client.enqueue("sleep 60000")
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let short = try await client.enqueue("sleep 2000")
            _ = try await client.waitForInfo { $0.tasks.running == 2 }
            // Both processes are busy: the tasks are sent ahead to both in turn.
            var handles: [TaskHandle] = []
            for _ in 0..<20 { handles.append(try await client.enqueue("pid")) }
            #expect(try await short.text() == "slept 2000")
            var pids = Set<String>()
            for handle in handles { pids.insert(try await handle.text()) }
            #expect(pids.count == 1, "every task ran on the process that became idle, not behind the long task")
            #expect(try await long.status() == .processing)
            let withdrawal = await server.logs.first { $0.message.contains("withdrew") }
            #expect(withdrawal.level == .debug)
            long.cancel()
            try await client.close()
        }
        try await server.stop()
    }

    @Test(
        "a handler program stopped for a timeout runs no task twice: the tasks sent ahead that it goes on to read during its grace period are answered by it, not run again elsewhere"
    )
    func stoppedProgramKeepsTasksItMayRead() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ranLog = directory + "/ran.log"
        // Ignores SIGTERM, so it finishes its task after the timeout and reads on from its pipe until SIGKILL.
        let script = try HandlerScript(
            """
            import signal
            import time

            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open("\(directory)/started", "w").close()
            ran = open("\(ranLog)", "ab", buffering=0)
            for task in tasks():
                name, milliseconds = task.split(b":")
                ran.write(name + b"\\n")
                time.sleep(int(milliseconds) / 1000)
                reply(0, name)
            """
        )
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 1) {
            $0.prefetch = 2
            $0.prefetchStallLimit = .seconds(3600)
            $0.killGracePeriod = .seconds(2) * testSlowdown
        }
        try await withTimeout {
            let client = try await server.client()
            // Once the program ignores SIGTERM: the timeout must find it running the task, not starting up.
            while !FileManager.default.fileExists(atPath: directory + "/started") {
                try await Task.sleep(for: .milliseconds(5))
            }
            let slow = try await client.enqueue("slow:600", timeout: .milliseconds(200))
            _ = try await client.waitForInfo { $0.tasks.running == 1 }
            let ahead = [try await client.enqueue("first:50"), try await client.enqueue("second:50")]
            #expect(await slow.failure()?.reason == .timedOut)
            #expect(try await ahead[0].text() == "first")
            #expect(try await ahead[1].text() == "second")
            try await server.waitForFullPool()
            try await client.close()
        }
        try await server.stop()
        let ran = try String(contentsOfFile: ranLog, encoding: .utf8).split(separator: "\n").sorted()
        #expect(ran == ["first", "second", "slow"], "each task ran once")
    }
}
