import AiotaskProtocol
import Logging
import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// The rules of one client connection on the server, without a socket, a scheduler or a process.
@Suite("Connection state machine")
struct ConnectionStateMachineTests {
    /// A task as the tests track it.
    struct Task: ConnectionTask, Equatable {
        let id: TaskID
        var payload: ByteBuffer
        var timeout: Duration?
        /// The trace context it came with.
        var trace: TraceParent? = nil
        var status = TaskStatus.inQueue
    }

    typealias Machine = ConnectionStateMachine<Task>

    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let limits = Machine.Limits(
        maximumPayloadLength: 1 << 20,
        maximumTasksPerConnection: 4,
        idleTimeout: .seconds(300),
        writeTimeout: .seconds(60)
    )

    /// An open connection.
    func open(limits: Machine.Limits? = nil) -> Machine {
        var machine = Machine(finishedTasksRemembered: 16, writeTimeout: .seconds(60), now: start)
        let action = machine.channelActive(registered: true, now: start, limits: limits ?? self.limits)
        #expect(action == .armIdleCheck(at: start + .seconds(300)))
        return machine
    }

    func receive(_ frame: Frame, on machine: inout Machine, isAccepting: Bool = true) -> Machine.Action {
        receive(.frame(frame), on: &machine, isAccepting: isAccepting)
    }

    func receive(_ inbound: InboundFrame, on machine: inout Machine, isAccepting: Bool = true) -> Machine.Action {
        machine.frameReceived(inbound, limits: limits, isAccepting: isAccepting) {
            Task(id: $0, payload: $1, timeout: $2, trace: $3?.parent)
        }
    }

    @Test("HELLO makes the connection extended, with the client's result limit; without it, the original protocol")
    func helloNegotiation() {
        var machine = open()
        let id = TaskID(high: 1, low: 1)
        #expect(
            receive(.hello(Hello(maximumPayloadLength: 1000)), on: &machine)
                == .greet(.hello(Hello(maximumPayloadLength: 1 << 20)), goodbye: nil, pauseReading: false)
        )
        #expect(machine.isExtended)
        #expect(machine.resultLimit == 1000)
        _ = receive(.submit(id, timeout: nil, payload: ByteBuffer(string: "x")), on: &machine)
        #expect(
            machine.taskSucceeded(id, result: ByteBuffer(string: "y"), now: start, limits: limits)
                == .writeAnswer(.result(id, ByteBuffer(string: "y")), armIdleCheck: nil)
        )

        var legacy = open()
        #expect(
            receive(.enqueue(id, payload: ByteBuffer(string: "x")), on: &legacy)
                == .submit(Task(id: id, payload: ByteBuffer(string: "x")))
        )
        #expect(!legacy.isExtended)
        #expect(legacy.resultLimit == 65_535 - 16)
        // A legacy client is answered DONE, and a failure is UPDATE NOT_FOUND: it knows neither RESULT nor FAILED.
        #expect(
            legacy.taskSucceeded(id, result: ByteBuffer(string: "y"), now: start, limits: limits)
                == .writeAnswer(.done(id, result: ByteBuffer(string: "y")), armIdleCheck: nil)
        )
        _ = receive(.enqueue(id, payload: ByteBuffer()), on: &legacy)
        #expect(
            legacy.taskFailed(id, reason: .handlerError, message: "no", now: start, limits: limits)
                == .writeAnswer(.update(id, .notFound), armIdleCheck: nil)
        )
        // Nor a FAILED status.
        #expect(receive(.status(id), on: &legacy) == .write(.update(id, .notFound), pauseReading: false))
    }

    @Test("an extension frame without HELLO also makes the connection extended")
    func extensionWithoutHello() {
        var machine = open()
        let id = TaskID(high: 1, low: 2)
        _ = receive(.submit(id, timeout: .seconds(1), payload: ByteBuffer()), on: &machine)
        #expect(machine.isExtended)
        #expect(machine.resultLimit == Int(UInt32.max))
        #expect(
            machine.taskFailed(id, reason: .timedOut, message: "late", now: start, limits: limits)
                == .writeAnswer(.failed(id, .timedOut, message: "late"), armIdleCheck: nil)
        )
        #expect(receive(.status(id), on: &machine) == .write(.update(id, .failed), pauseReading: false))
    }

    @Test(
        "an operator's DRAIN, either way, sets the server's drain and is answered with INFO on an extended connection"
    )
    func operatorDrain() {
        var machine = open()
        #expect(receive(.drain(true), on: &machine) == .setDrained(true, pauseReading: false))
        #expect(machine.isExtended)
        #expect(receive(.drain(false), on: &machine) == .setDrained(false, pauseReading: false))
    }

    @Test("a draining server says GOODBYE once, only to an extended client, then closes the output")
    func goodbyeAndHalfClose() {
        var legacy = open()
        #expect(legacy.serverDraining() == .none)
        #expect(legacy.serverClosing(linger: .seconds(2)) == .closeOutput(linger: .seconds(2)))

        var machine = open()
        _ = receive(.hello(Hello(maximumPayloadLength: 1000)), on: &machine)
        let goodbye = Frame.goodbye("the server is stopping; submit new tasks on a new connection")
        #expect(machine.serverDraining() == .sayGoodbye(goodbye))
        #expect(machine.serverDraining() == .none)
        #expect(machine.serverClosing(linger: .seconds(2)) == .closeOutput(linger: .seconds(2)))

        // A client that says HELLO to a draining server gets GOODBYE right behind the answer.
        var late = open()
        #expect(
            receive(.hello(Hello(maximumPayloadLength: 1000)), on: &late, isAccepting: false)
                == .greet(.hello(Hello(maximumPayloadLength: 1 << 20)), goodbye: goodbye, pauseReading: false)
        )
        #expect(late.serverDraining() == .none)

        // A connection already gone closes nothing.
        _ = machine.channelInactive()
        #expect(machine.serverClosing(linger: .seconds(2)) == .none)
    }

    @Test("tasks held back while answers are unread run in order once they drain, and reading resumes")
    func drainingAnswers() {
        var machine = open()
        let first = Task(id: TaskID(high: 2, low: 1), payload: ByteBuffer())
        let second = Task(id: TaskID(high: 2, low: 2), payload: ByteBuffer())
        #expect(
            machine.writabilityChanged(isWritable: false, now: start, writeTimeout: .seconds(60))
                == .holdTasks(stallCheck: start + .seconds(60))
        )
        #expect(machine.isHoldingTasks)
        machine.hold(first)
        machine.hold(second)
        #expect(
            machine.writabilityChanged(isWritable: true, now: start + .seconds(1), writeTimeout: .seconds(60))
                == .releaseTasks([first, second], resumeReading: false)
        )
        #expect(!machine.isHoldingTasks)
        #expect(machine.heldTasks.isEmpty)
    }

    @Test("a client that neither reads nor sends for the write timeout is disconnected, once")
    func writeTimeoutStall() {
        var machine = open()
        let id = TaskID(high: 3, low: 1)
        _ = receive(.enqueue(id, payload: ByteBuffer()), on: &machine)
        _ = machine.writabilityChanged(isWritable: false, now: start, writeTimeout: .seconds(60))
        // A frame is progress: the deadline moves.
        machine.framesReceived(now: start + .seconds(30))
        #expect(machine.stallCheckDue(now: start + .seconds(60)) == .armStallCheck(at: start + .seconds(90)))
        #expect(
            machine.stallCheckDue(now: start + .seconds(90))
                == .disconnectStalled(timeout: .seconds(60), tasksInFlight: 1)
        )
        #expect(machine.lifecycle == .closing)
        #expect(machine.stallCheckDue(now: start + .seconds(200)) == .none)
        // Its tasks are abandoned when the channel goes.
        #expect(machine.channelInactive() == .tearDown(abandoned: [Task(id: id, payload: ByteBuffer())]))
    }

    @Test("reading pauses past 1,024 answers given at once while the client reads none, and resumes with them")
    func pauseAfterImmediateAnswers() {
        var machine = open()
        let id = TaskID(high: 4, low: 1)
        // While answers flow, any number of them is fine.
        for _ in 0..<2000 {
            #expect(receive(.status(id), on: &machine) == .write(.update(id, .notFound), pauseReading: false))
        }
        _ = machine.writabilityChanged(isWritable: false, now: start, writeTimeout: nil)
        for _ in 0..<AnswerBacklog.immediateAnswerLimit {
            #expect(receive(.status(id), on: &machine) == .write(.update(id, .notFound), pauseReading: false))
        }
        #expect(receive(.status(id), on: &machine) == .write(.update(id, .notFound), pauseReading: true))
        #expect(receive(.infoRequest, on: &machine) == .writeInfo(pauseReading: false))
        #expect(
            machine.writabilityChanged(isWritable: true, now: start, writeTimeout: nil)
                == .releaseTasks([], resumeReading: true)
        )
    }

    @Test("tasks refused at once count as answers given at once; tasks the scheduler takes do not")
    func refusalsCount() {
        var machine = open()
        _ = machine.writabilityChanged(isWritable: false, now: start, writeTimeout: nil)
        for _ in 0..<AnswerBacklog.immediateAnswerLimit {
            #expect(machine.taskSubmitted(refusedAtOnce: false) == .none)
            #expect(machine.taskSubmitted(refusedAtOnce: true) == .none)
        }
        #expect(machine.taskSubmitted(refusedAtOnce: true) == .pauseReading)
    }

    @Test("a frame after the connection started closing is ignored")
    func frameAfterClose() {
        var machine = open()
        let id = TaskID(high: 5, low: 1)
        #expect(
            receive(.done(id, result: ByteBuffer()), on: &machine)
                == .close(
                    reason: "closing connection: protocol violation: the client sent a \(FrameType.done) frame, "
                        + "which only a server sends",
                    level: .warning,
                    farewell: nil
                )
        )
        #expect(!machine.isReading)
        #expect(receive(.enqueue(id, payload: ByteBuffer()), on: &machine) == .none)
        #expect(receive(.status(id), on: &machine) == .none)
        #expect(receive(.oversized(.submit, id, length: 1 << 30), on: &machine) == .none)
        #expect(machine.inFlight.isEmpty)
        // Answers to tasks taken before still leave; a violation is reported once.
        #expect(machine.protocolViolated("again") == .none)
    }

    @Test("an extended client is told why its connection closes; a task id in use breaks the protocol")
    func violationFarewell() {
        var machine = open()
        let id = TaskID(high: 6, low: 1)
        _ = receive(.submit(id, timeout: nil, payload: ByteBuffer()), on: &machine)
        let reason = "task id \(id) is already in use on this connection"
        #expect(
            receive(.submit(id, timeout: nil, payload: ByteBuffer()), on: &machine)
                == .close(
                    reason: "closing connection: protocol violation: \(reason)",
                    level: .warning,
                    farewell: .error("protocol violation: \(reason)")
                )
        )
        // The task taken before is still answered (the idle check armed at the start has not fired yet).
        #expect(
            machine.taskSucceeded(id, result: ByteBuffer(), now: start, limits: limits)
                == .writeAnswer(.result(id, ByteBuffer()), armIdleCheck: nil)
        )
    }

    @Test("tasks past the per-connection limit and oversized ones are refused at once")
    func refusals() {
        var machine = open()
        for low in 0..<4 {
            let id = TaskID(high: 7, low: UInt64(low))
            #expect(
                receive(.enqueue(id, payload: ByteBuffer()), on: &machine)
                    == .submit(Task(id: id, payload: ByteBuffer()))
            )
        }
        let fifth = TaskID(high: 7, low: 4)
        #expect(
            receive(.enqueue(fifth, payload: ByteBuffer()), on: &machine)
                == .refuse(
                    Task(id: fifth, payload: ByteBuffer()),
                    .rejected,
                    "too many tasks in flight on this connection (limit 4)",
                    pauseReading: false
                )
        )
        var other = open()
        let big = TaskID(high: 8, low: 1)
        #expect(
            receive(.oversized(.submit, big, length: (1 << 20) + 1), on: &other)
                == .refuse(
                    Task(id: big, payload: ByteBuffer()),
                    .payloadTooLarge,
                    "task of \((1 << 20) + 1) bytes exceeds the limit of \(1 << 20) bytes",
                    pauseReading: false
                )
        )
        let unheld = TaskID(high: 8, low: 2)
        #expect(
            receive(.oversized(.enqueue, unheld, length: 1000), on: &other)
                == .refuseUnheld(Task(id: unheld, payload: ByteBuffer()), length: 1000, pauseReading: false)
        )
    }

    @Test("an idle connection closes after the idle timeout; tasks in flight and new frames keep it open")
    func idle() {
        var machine = open()
        let id = TaskID(high: 9, low: 1)
        machine.framesReceived(now: start + .seconds(100))
        _ = receive(.enqueue(id, payload: ByteBuffer()), on: &machine)
        // Not idle: a task is in flight. The check is armed again when it is answered.
        #expect(machine.idleCheckDue(now: start + .seconds(300), limits: limits) == .none)
        #expect(
            machine.taskSucceeded(id, result: ByteBuffer(), now: start + .seconds(500), limits: limits)
                == .writeAnswer(.done(id, result: ByteBuffer()), armIdleCheck: start + .seconds(800))
        )
        machine.framesReceived(now: start + .seconds(600))
        #expect(
            machine.idleCheckDue(now: start + .seconds(800), limits: limits) == .armIdleCheck(at: start + .seconds(900))
        )
        #expect(
            machine.idleCheckDue(now: start + .seconds(900), limits: limits)
                == .close(
                    reason:
                        "closing connection: idle timeout: no request for 300 s and no task in flight (idle-timeout)",
                    level: .info,
                    farewell: nil
                )
        )
    }

    @Test("a connection past the server's limit is refused and reads nothing")
    func refusedConnection() {
        var machine = Machine(finishedTasksRemembered: 16, writeTimeout: nil, now: start)
        #expect(machine.channelActive(registered: false, now: start, limits: limits) == .refuseConnection)
        #expect(!machine.isReading)
        #expect(receive(.hello(Hello(maximumPayloadLength: 1)), on: &machine) == .none)
    }
}
