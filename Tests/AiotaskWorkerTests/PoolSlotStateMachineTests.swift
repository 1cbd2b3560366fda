import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// A pool process, as the state machine sees it: an identity.
private final class FakeProcess {
    let name: String
    init(_ name: String) { self.name = name }
}

/// A task, as the state machine sees it: an identity.
private final class SlotTestTask {
    let name: String
    init(_ name: String) { self.name = name }
}

private typealias Machine = PoolSlotStateMachine<FakeProcess, SlotTestTask>

/// An action with names instead of identities, to compare.
private enum Did: Equatable {
    case none
    case startProcess
    case scheduleRestart(after: Duration)
    case reportIdle
    case startTask(String)
    case scheduleMemoryCheck
    case replace(String, Machine.Replacement, sentAhead: [String], runningIsAnswered: Bool, running: String?)
    case stop(String?, sentAhead: [String], leavePool: Bool)
    case died(String, running: String?, sentAhead: [String], restartAfter: Duration)
    case rejectReply

    init(_ action: Machine.Action) {
        switch action {
        case .none: self = .none
        case .startProcess: self = .startProcess
        case .scheduleRestart(let delay): self = .scheduleRestart(after: delay)
        case .reportIdle: self = .reportIdle
        case .startTask(let task): self = .startTask(task.name)
        case .scheduleMemoryCheck: self = .scheduleMemoryCheck
        case .replaceProcess(let process, let replacement, let sentAhead, let runningIsAnswered, let running):
            self = .replace(
                process.name,
                replacement,
                sentAhead: sentAhead.map(\.task.name),
                runningIsAnswered: runningIsAnswered,
                running: running?.name
            )
        case .stopProcess(let process, let sentAhead, let leavePool):
            self = .stop(process?.name, sentAhead: sentAhead.map(\.task.name), leavePool: leavePool)
        case .processDied(let process, let running, let sentAhead, let delay):
            self = .died(
                process.name,
                running: running?.name,
                sentAhead: sentAhead.map(\.task.name),
                restartAfter: delay
            )
        case .rejectReply: self = .rejectReply
        }
    }
}

private let maximumBackoff = Duration.seconds(3)
private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

extension Machine {
    /// Starts a process and takes it to idle, as a slot does.
    fileprivate mutating func startIdle(_ process: FakeProcess, at now: NIODeadline = t0, taskQuota: Int? = nil) {
        #expect(Did(start()) == .startProcess)
        processStarted(process, at: now, taskQuota: taskQuota)
        #expect(Did(processReady(process)) == .reportIdle)
    }

    fileprivate mutating func reply(
        from process: FakeProcess,
        at now: NIODeadline = t0,
        nextIsCancelled: Bool = false,
        overMemoryLimit: Bool = false
    ) -> (answered: String?, then: Did) {
        let action = replyReceived(
            from: process,
            at: now,
            nextIsCancelled: nextIsCancelled,
            overMemoryLimit: overMemoryLimit
        )
        return (action.answered?.name, Did(action.then))
    }

    /// Whether one more small task may be sent ahead, with room for 32.
    fileprivate func canPrefetch(at now: NIODeadline = t0) -> Bool {
        canPrefetch(size: 100, at: now, depth: 32, stallLimit: .seconds(1), processIsSound: true)
    }
}

/// The pool slot's rules, without a process: what a reply, a crash, a cancel, a reload or the drain does.
@Suite("Pool slot state machine")
struct PoolSlotStateMachineTests {
    @Test("a crash while tasks wait sent ahead fails the running task once and puts the others back in order")
    func crashWithTasksSentAhead() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        let tasks = (0..<4).map { SlotTestTask("t\($0)") }
        machine.run(tasks[0], index: 0, at: t0)
        for index in 1..<4 { machine.prefetch(tasks[index], index: UInt32(index), bytes: 100) }

        let action = machine.processExited(process, at: t0 + .milliseconds(10), maximumBackoff: maximumBackoff)
        #expect(Did(action) == .died("p1", running: "t0", sentAhead: ["t1", "t2", "t3"], restartAfter: .zero))
        #expect(machine.process == nil)
        #expect(machine.sentAheadCount == 0)
        // A late reply of the dead process answers nothing: the running task is answered once, as crashed.
        #expect(machine.reply(from: process) == (nil, .rejectReply))
        #expect(Did(machine.processExited(process, at: t0, maximumBackoff: maximumBackoff)) == .none)

        guard case .processDied(_, _, let sentAhead, _) = action else { return }
        // A process that gave up every task sent ahead started none of them: they all go back, in order.
        let gaveUp = Machine.settleAfterDeath(sentAhead, firstWithdrawn: 1, repliesAreAllRead: false)
        #expect(gaveUp.requeue.map(\.name) == ["t1", "t2", "t3"])
        #expect(gaveUp.fail.isEmpty)
        // One that claimed the first may have started it: it fails; the rest go back, in order.
        let claimedOne = Machine.settleAfterDeath(sentAhead, firstWithdrawn: 2, repliesAreAllRead: false)
        #expect(claimedOne.requeue.map(\.name) == ["t2", "t3"])
        #expect(claimedOne.fail.map(\.name) == ["t1"])
        // A handler program whose every reply was read had not started any task after its running one.
        let program = Machine.settleAfterDeath(sentAhead, firstWithdrawn: nil, repliesAreAllRead: true)
        #expect(program.requeue.map(\.name) == ["t1", "t2", "t3"])
        #expect(program.fail.isEmpty)
        // Unless its replies were cut short: then any of them may have started.
        let cutShort = Machine.settleAfterDeath(sentAhead, firstWithdrawn: nil, repliesAreAllRead: false)
        #expect(cutShort.requeue.isEmpty)
        #expect(cutShort.fail.map(\.name) == ["t1", "t2", "t3"])
    }

    @Test("a cancelled task sent ahead that the process has not claimed is withdrawn, and its process keeps running")
    func cancelUnclaimed() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        let tasks = (0..<3).map { SlotTestTask("t\($0)") }
        machine.run(tasks[0], index: 7, at: t0)
        machine.prefetch(tasks[1], index: 8, bytes: 100)
        machine.prefetch(tasks[2], index: 9, bytes: 100)
        #expect(machine.withdrawalStart == 8)

        // The process has not claimed its running task yet: nothing can be withdrawn, so it is tried again.
        let early = machine.cancelledSentAhead(firstUnclaimed: nil, cancelledStillSentAhead: true, attempt: 1)
        guard case .retry(let delay, let attempt) = early else {
            Issue.record("expected a retry, got \(early)")
            return
        }
        #expect(delay == .microseconds(200))
        #expect(attempt == 2)
        let late = machine.cancelledSentAhead(
            firstUnclaimed: nil,
            cancelledStillSentAhead: true,
            attempt: Machine.cancelWithdrawalAttempts
        )
        guard case .none = late else {
            Issue.record("expected no more retries, got \(late)")
            return
        }

        let action = machine.cancelledSentAhead(firstUnclaimed: 8, cancelledStillSentAhead: false, attempt: 2)
        guard case .requeue(let withdrawn, let dispatch) = action else {
            Issue.record("expected a requeue, got \(action)")
            return
        }
        #expect(withdrawn.map(\.name) == ["t1", "t2"])
        #expect(dispatch)
        #expect(!machine.holds(tasks[1]))
        #expect(machine.sentAheadCount == 0)
        // The process answers its task and stays.
        #expect(machine.reply(from: process) == ("t0", .reportIdle))
        #expect(machine.idleProcess === process)
    }

    @Test("a cancelled task sent ahead that the process claimed stops the process when its turn comes")
    func cancelClaimed() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        let tasks = (0..<3).map { SlotTestTask("t\($0)") }
        machine.run(tasks[0], index: 0, at: t0)
        machine.prefetch(tasks[1], index: 1, bytes: 100)
        machine.prefetch(tasks[2], index: 2, bytes: 100)
        // The process claimed t1, the cancelled one: only t2 comes back.
        guard
            case .requeue(let withdrawn, _) = machine.cancelledSentAhead(
                firstUnclaimed: 2,
                cancelledStillSentAhead: true,
                attempt: 1
            )
        else {
            Issue.record("expected a requeue")
            return
        }
        #expect(withdrawn.map(\.name) == ["t2"])
        #expect(machine.holds(tasks[1]))

        let reply = machine.reply(from: process, nextIsCancelled: true)
        #expect(reply.answered == "t0")
        #expect(
            reply.then
                == .replace("p1", .cancelledSentAhead, sentAhead: ["t1"], runningIsAnswered: true, running: nil)
        )
        #expect(Machine.Replacement.cancelledSentAhead.ending == .terminate)
        #expect(machine.process == nil)
    }

    @Test("a cancelled running task stops its process; another task's cancel does not")
    func cancelRunning() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        let running = SlotTestTask("t0")
        machine.run(running, index: 0, at: t0)
        #expect(Did(machine.interrupt(SlotTestTask("other"))) == .none)
        #expect(machine.isBusy)
        #expect(
            Did(machine.interrupt(running))
                == .replace("p1", .interrupt, sentAhead: [], runningIsAnswered: false, running: "t0")
        )
        #expect(Machine.Replacement.interrupt.ending == .terminate)
        #expect(!machine.isBusy)
    }

    @Test("a process that reached its task quota is recycled once idle, and gets no more tasks sent ahead than it runs")
    func recycle() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process, taskQuota: 2)
        machine.run(SlotTestTask("t0"), index: 0, at: t0)
        // One task left after t0: it may be sent ahead, but no second one.
        #expect(machine.canPrefetch())
        machine.prefetch(SlotTestTask("t1"), index: 1, bytes: 100)
        #expect(!machine.canPrefetch())
        #expect(machine.reply(from: process) == ("t0", .startTask("t1")))
        #expect(
            machine.reply(from: process)
                == ("t1", .replace("p1", .recycle, sentAhead: [], runningIsAnswered: false, running: nil))
        )
        #expect(Machine.Replacement.recycle.ending == .retire)
    }

    @Test("a reload renews an idle process at once and a busy one after its task, with nothing sent ahead meanwhile")
    func renewDuringReload() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        machine.run(SlotTestTask("t0"), index: 0, at: t0)
        #expect(Did(machine.renew()) == .none)
        #expect(machine.isBusy)
        #expect(!machine.canPrefetch())
        #expect(
            machine.reply(from: process)
                == ("t0", .replace("p1", .renew, sentAhead: [], runningIsAnswered: false, running: nil))
        )
        #expect(Machine.Replacement.renew.ending == .retire)

        // The successor runs the new configuration; a second reload renews it at once, being idle.
        let successor = FakeProcess("p2")
        #expect(Did(machine.predecessorDied(process)) == .startProcess)
        machine.startIdle(successor)
        #expect(
            Did(machine.renew()) == .replace("p2", .renew, sentAhead: [], runningIsAnswered: false, running: nil)
        )
    }

    @Test("a slot leaving the shrunk pool goes after its task, or stays if the pool grows back meanwhile")
    func retireAfterTask() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        machine.run(SlotTestTask("t0"), index: 0, at: t0)
        #expect(Did(machine.retire()) == .none)
        #expect(machine.isRetiring)
        #expect(!machine.canPrefetch())
        machine.stayInPool()
        #expect(!machine.isRetiring)
        #expect(Did(machine.retire()) == .none)
        #expect(machine.reply(from: process) == ("t0", .stop("p1", sentAhead: [], leavePool: true)))
        #expect(machine.isStopped)
        #expect(Did(machine.start()) == .none)

        var idle = Machine()
        idle.startIdle(FakeProcess("p2"))
        #expect(Did(idle.retire()) == .stop("p2", sentAhead: [], leavePool: true))
    }

    @Test("the drain deadline stops a busy process and hands back its task and those sent ahead")
    func drainDeadline() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        #expect(Did(machine.drainDeadline()) == .none)
        machine.run(SlotTestTask("t0"), index: 0, at: t0)
        machine.prefetch(SlotTestTask("t1"), index: 1, bytes: 100)
        #expect(
            Did(machine.drainDeadline())
                == .replace("p1", .drainDeadline, sentAhead: ["t1"], runningIsAnswered: false, running: "t0")
        )
        #expect(Machine.Replacement.drainDeadline.ending == .terminate)
        // After the stop, the replacement stays down.
        #expect(Did(machine.stop()) == .stop(nil, sentAhead: [], leavePool: false))
        #expect(Did(machine.predecessorDied(process)) == .none)
    }

    @Test("a process over the memory limit while busy is killed with its task; after a task, it is replaced when idle")
    func memoryLimit() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        machine.run(SlotTestTask("t0"), index: 0, at: t0)
        #expect(Did(machine.memoryReading(exceedsLimit: false)) == .scheduleMemoryCheck)
        #expect(
            Did(machine.memoryReading(exceedsLimit: true))
                == .replace("p1", .memoryLimit, sentAhead: [], runningIsAnswered: false, running: "t0")
        )
        #expect(Machine.Replacement.memoryLimit.ending == .kill)
        #expect(Did(machine.memoryReading(exceedsLimit: true)) == .none)

        // Over the limit after a task: the task sent ahead still runs there, nothing more is sent, then it goes.
        var after = Machine()
        let second = FakeProcess("p2")
        after.startIdle(second)
        after.run(SlotTestTask("t0"), index: 0, at: t0)
        after.prefetch(SlotTestTask("t1"), index: 1, bytes: 100)
        #expect(after.reply(from: second, overMemoryLimit: true) == ("t0", .startTask("t1")))
        #expect(!after.canPrefetch())
        #expect(
            after.reply(from: second)
                == (
                    "t1",
                    .replace("p2", .renewOverMemoryLimit, sentAhead: [], runningIsAnswered: false, running: nil)
                )
        )
        // Counted as a memory-limit restart, not a reload.
        #expect(Machine.Replacement.renewOverMemoryLimit.restartReason == .memoryLimit)
        #expect(Machine.Replacement.renew.restartReason == .reload)
    }

    @Test("a task that times out stops its process; a timeout of a task gone since does nothing")
    func timeout() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        let first = SlotTestTask("t0")
        machine.run(first, index: 0, at: t0)
        #expect(machine.reply(from: process) == ("t0", .reportIdle))
        #expect(Did(machine.timedOut(first)) == .none)
        machine.run(SlotTestTask("t1"), index: 1, at: t0)
        machine.prefetch(SlotTestTask("t2"), index: 2, bytes: 100)
        #expect(Did(machine.timedOut(first)) == .none)
        #expect(machine.isBusy)
        let running = machine.busy?.running.task
        #expect(running?.name == "t1")
        guard let running else { return }
        #expect(
            Did(machine.timedOut(running))
                == .replace("p1", .timeout, sentAhead: ["t2"], runningIsAnswered: false, running: "t1")
        )
        #expect(Machine.Replacement.timeout.ending == .terminate)
    }

    @Test("the restart backoff grows while processes keep dying young, and a good task resets it")
    func restartBackoff() {
        var machine = Machine()
        var now = t0
        var delays: [Duration] = []
        for number in 1...5 {
            let process = FakeProcess("p\(number)")
            machine.startIdle(process, at: now)
            now = now + .milliseconds(10)
            guard
                case .processDied(_, _, _, let delay) = machine.processExited(
                    process,
                    at: now,
                    maximumBackoff: .milliseconds(300)
                )
            else {
                Issue.record("expected a restart")
                return
            }
            delays.append(delay)
            #expect(Did(machine.restartBackoffElapsed()) == .startProcess)
        }
        #expect(delays == [.zero, .milliseconds(100), .milliseconds(200), .milliseconds(300), .milliseconds(300)])
        #expect(machine.consecutiveCrashes == 5)
        #expect(!machine.isKeepingProcessAlive(at: now))

        // A process that answers a task shows the slot works: its crash restarts at once.
        let good = FakeProcess("good")
        machine.startIdle(good, at: now)
        #expect(!machine.isKeepingProcessAlive(at: now))
        machine.run(SlotTestTask("t0"), index: 0, at: now)
        #expect(machine.reply(from: good) == ("t0", .reportIdle))
        #expect(machine.isKeepingProcessAlive(at: now))
        #expect(
            Did(machine.processExited(good, at: now, maximumBackoff: .seconds(3)))
                == .died("good", running: nil, sentAhead: [], restartAfter: .zero)
        )

        // So does one that lived a while, without a task.
        for _ in 0..<3 {
            _ = machine.processFailedToStart(maximumBackoff: .seconds(3))
        }
        let old = FakeProcess("old")
        machine.startIdle(old, at: now)
        #expect(
            Did(machine.processExited(old, at: now + .seconds(2), maximumBackoff: .seconds(3)))
                == .died("old", running: nil, sentAhead: [], restartAfter: .zero)
        )
    }

    @Test("a process that cannot start is tried again at once, then after a growing backoff")
    func failedStart() {
        var machine = Machine()
        #expect(Did(machine.start()) == .startProcess)
        #expect(Did(machine.processFailedToStart(maximumBackoff: maximumBackoff)) == .scheduleRestart(after: .zero))
        #expect(Did(machine.start()) == .startProcess)
        #expect(
            Did(machine.processFailedToStart(maximumBackoff: maximumBackoff))
                == .scheduleRestart(after: .milliseconds(100))
        )
        #expect(Did(machine.stop()) == .stop(nil, sentAhead: [], leavePool: false))
        #expect(Did(machine.restartBackoffElapsed()) == .none)
    }

    @Test("a replacement starts only once the process it replaces is dead")
    func replacementWaitsForPredecessor() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        #expect(
            Did(machine.renew()) == .replace("p1", .renew, sentAhead: [], runningIsAnswered: false, running: nil)
        )
        #expect(machine.process == nil)
        #expect(Did(machine.start()) == .none)
        #expect(Did(machine.restartBackoffElapsed()) == .none)
        // The slot is not failing meanwhile: its successor is on its way.
        #expect(machine.isKeepingProcessAlive(at: t0))
        #expect(Did(machine.predecessorDied(FakeProcess("other"))) == .none)
        #expect(Did(machine.predecessorDied(process)) == .startProcess)
        #expect(Did(machine.predecessorDied(process)) == .none)
    }

    @Test("tasks sent ahead stop at the byte limit, behind a slow task, and behind one that held others up")
    func prefetchLimits() {
        var machine = Machine()
        let process = FakeProcess("p1")
        machine.startIdle(process)
        #expect(!machine.canPrefetch())
        machine.run(SlotTestTask("t0"), index: 0, at: t0)
        #expect(machine.canPrefetch())
        #expect(!machine.canPrefetch(at: t0 + .seconds(2)))
        #expect(!machine.canPrefetch(size: 1, at: t0, depth: 32, stallLimit: .seconds(1), processIsSound: false))
        machine.prefetch(SlotTestTask("big"), index: 1, bytes: Machine.prefetchByteLimit)
        #expect(!machine.canPrefetch())
        #expect(machine.withdraw(from: 1, holdingUpRunning: true).map(\.name) == ["big"])
        // Its tasks went to an idle process: the running one is slow, so none is sent ahead behind it.
        #expect(!machine.canPrefetch())
    }
}
