import AiotaskClient
import AiotaskProtocol
import AiotaskTestSupport
import Foundation
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Stopping without losing a task", .serialized)
struct GracefulShutdownTests {
    @Test("shutdown says GOODBYE, refuses later tasks as shuttingDown, answers the running one, then ends the stream")
    func goodbyeThenCleanClose() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(30)) {
            try await RawConnection.with(server.address) { connection in
                try await connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                #expect(try await connection.readFrame()?.type == FrameType.hello.rawValue)
                let running = TaskID.random()
                try await connection.send(.submit(running, timeout: nil, payload: ByteBuffer(string: "sleep 3000")))
                while try await server.server.info().workers.busy == 0 { try await Task.sleep(for: .milliseconds(5)) }

                let stopping = Task { try await server.server.shutdown() }
                let goodbye = try await connection.readFrame()
                #expect(goodbye?.type == FrameType.goodbye.rawValue)
                // Sent while the running task keeps the server draining for three seconds.
                let late = TaskID.random()
                try await connection.send(.submit(late, timeout: nil, payload: ByteBuffer(string: "echo late")))

                let frames = try await connection.readUntilClosed()
                #expect(!connection.wasReset, "the server reset the connection instead of ending it")
                let refusal = frames.first { $0.type == FrameType.failed.rawValue && $0.taskID == late.bytes }
                #expect(refusal?.afterTaskID.first == FailureReason.shuttingDown.rawValue, "\(frames)")
                let result = frames.first { $0.type == FrameType.result.rawValue && $0.taskID == running.bytes }
                #expect(result.map { String(decoding: $0.afterTaskID, as: UTF8.self) } == "slept 3000", "\(frames)")
                try await stopping.value
            }
        }
        try? FileManager.default.removeItem(atPath: server.directory)
    }

    @Test("a client that connects while the server drains is told GOODBYE right after HELLO")
    func goodbyeAfterLateHello() async throws {
        let server = try await TestServer.start(handler: .builtin("chaos"), workers: 1)
        try await withTimeout(.seconds(30)) {
            try await RawConnection.with(server.address) { early in
                try await early.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                _ = try await early.readFrame()
                try await RawConnection.with(server.address) { late in
                    try await early.send(
                        .submit(TaskID.random(), timeout: nil, payload: ByteBuffer(string: "sleep 3000"))
                    )
                    while try await server.server.info().workers.busy == 0 {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    let stopping = Task { try await server.server.shutdown() }
                    #expect(try await early.readFrame()?.type == FrameType.goodbye.rawValue)

                    try await late.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                    #expect(try await late.readFrame()?.type == FrameType.hello.rawValue)
                    #expect(try await late.readFrame()?.type == FrameType.goodbye.rawValue)
                    try await stopping.value
                }
            }
        }
        try? FileManager.default.removeItem(atPath: server.directory)
    }

    @Test(
        "at the drain deadline a task a handler program may have read from its pipe is never reported as not started: every task told shuttingDown never ran"
    )
    func drainDeadlineNeverDisownsTasksSentAhead() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ranLog = directory + "/ran.log"
        // A handler that finishes its work whatever the signal (it ignores SIGTERM), so that it goes on reading the
        // tasks in its pipe after the deadline, until the SIGKILL at the end of the kill grace.
        let script = try HandlerScript(
            """
            import os
            import signal
            import time

            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open("\(directory)/started-%d" % os.getpid(), "w").close()
            ran = open("\(ranLog)", "ab", buffering=0)
            for task in tasks():
                ran.write(task + b"\\n")
                time.sleep(0.1)
                reply(0, task)
            """
        )
        defer { script.remove() }
        let server = try await TestServer.start(handler: script.command, workers: 2) {
            $0.prefetch = 8
            $0.prefetchStallLimit = .seconds(3600)
            $0.drainTimeout = .milliseconds(300)
            $0.killGracePeriod = .milliseconds(500)
        }
        let count = 40
        let answers = try await withTimeout(.seconds(30)) {
            try await RawConnection.with(server.address) { connection in
                try await connection.send(.hello(Hello(maximumPayloadLength: 1 << 20)))
                #expect(try await connection.readFrame()?.type == FrameType.hello.rawValue)
                let tasks = (0..<count).map { (TaskID.random(), "task-\($0)") }
                var bytes = ByteBuffer()
                for (id, payload) in tasks {
                    try bytes.writeFrame(.submit(id, timeout: nil, payload: ByteBuffer(string: payload)))
                }
                try await connection.send(Array(bytes.readableBytesView))
                // Both processes started (so they ignore SIGTERM by now) and busy, each with eight tasks sent ahead in
                // its pipe, the rest queued.
                func started() -> Int {
                    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
                    return names.filter { $0.hasPrefix("started-") }.count
                }
                while true {
                    let busy = try await server.server.info().workers.busy
                    if started() == 2 && busy == 2 { break }
                    try await Task.sleep(for: .milliseconds(5))
                }
                try await server.server.shutdown()
                return try await DrainAnswers(tasks, frames: connection.readUntilClosed())
            }
        }
        let ran = try String(contentsOfFile: ranLog, encoding: .utf8).split(separator: "\n").map(String.init)
        answers.check(runs: ran)
        #expect(answers.reasons[.shuttingDown, default: 0] > 0, "\(answers.reasons)")
    }
}

/// The answers a raw connection got to its tasks, checked against how many times the handler ran each one.
struct DrainAnswers {
    /// The answers to each task, by payload (a result, or a failure's reason), in the order they came.
    var answers: [String: [Outcome]] = [:]
    var strays: [RawFrame] = []

    init(_ tasks: [(TaskID, String)], frames: [RawFrame]) {
        var payloads: [[UInt8]: String] = [:]
        for (id, payload) in tasks {
            payloads[id.bytes] = payload
            answers[payload] = []
        }
        for frame in frames where frame.type != FrameType.goodbye.rawValue {
            guard let payload = payloads[frame.taskID] else {
                strays.append(frame)
                continue
            }
            switch frame.type {
            case FrameType.result.rawValue:
                answers[payload, default: []].append(.success(String(decoding: frame.afterTaskID, as: UTF8.self)))
            case FrameType.failed.rawValue:
                let rest = frame.afterTaskID
                let reason = FailureReason(rawValue: rest.first ?? 0)
                answers[payload, default: []].append(
                    .failure(reason, String(decoding: rest.dropFirst(), as: UTF8.self))
                )
            default:
                strays.append(frame)
            }
        }
    }

    /// How many tasks got each kind of answer (`nil` for a success).
    var reasons: [FailureReason?: Int] {
        answers.values.compactMap(\.first).reduce(into: [:]) { tally, outcome in
            if case .failure(let reason, _) = outcome {
                tally[reason, default: 0] += 1
            } else {
                tally[nil, default: 0] += 1
            }
        }
    }

    /// Checks that every task got exactly one answer, that none ran twice, that a task told `shuttingDown` never ran,
    /// and that a task with a result ran once; `runs` holds one entry (the payload) per time the handler ran a task.
    func check(runs: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        var runCount: [String: Int] = [:]
        for payload in runs { runCount[payload, default: 0] += 1 }
        #expect(strays.isEmpty, "frames for no task sent: \(strays.prefix(3))", sourceLocation: sourceLocation)
        var disowned: [String] = []
        for (payload, outcomes) in answers.sorted(by: { $0.key < $1.key }) {
            let ran = runCount[payload, default: 0]
            #expect(
                outcomes.count == 1,
                "\(payload): \(outcomes.count) answers: \(outcomes)",
                sourceLocation: sourceLocation
            )
            #expect(ran <= 1, "\(payload) ran \(ran) times", sourceLocation: sourceLocation)
            switch outcomes.first {
            case .failure(.shuttingDown, _) where ran > 0: disowned.append(payload)
            case .success:
                #expect(ran == 1, "\(payload) has a result but ran \(ran) times", sourceLocation: sourceLocation)
            default: break
            }
        }
        #expect(
            disowned.isEmpty,
            "\(disowned.count) tasks told shuttingDown (never started) ran: \(disowned.prefix(20))",
            sourceLocation: sourceLocation
        )
    }
}
