import AiotaskProtocol
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// The scheduling rules — queue, dispatch, prefetch and withdrawal, cancel, drain, reload roll-over — without a
/// process, a socket or an event loop: a ``SchedulerHarness`` carries out the scheduler's actions on plain values,
/// as `Supervisor` does on `PoolSlot`s.
@Suite("Scheduler")
struct SchedulerTests {
    @Test("waiting tasks go to idle slots in arrival order, the slot idle last first")
    func dispatchToIdleSlots() {
        var pool = SchedulerHarness(workers: 3)
        pool.becomeIdle(0, 1, 2)
        let tasks = pool.arrive(4)
        #expect(pool.dispatch() == ["run t0 on 2", "run t1 on 1", "run t2 on 0"])
        #expect(pool.running.mapValues(\.name) == [0: "t2", 1: "t1", 2: "t0"])
        #expect(pool.running[0] === tasks[2])
        #expect(pool.scheduler.queuedCount == 1)
        #expect(pool.scheduler.queuedBytes == 10)
        // A slot said idle that is busy again by the time a task comes (its process broke, say) is skipped.
        pool.scheduler.slotBecameIdle(1)
        #expect(pool.dispatch() == [])
        pool.finishRunning(on: 1)
        pool.becomeIdle(1)
        #expect(pool.dispatch() == ["run t3 on 1"])
        #expect(pool.scheduler.queuedCount == 0)
        #expect(pool.scheduler.queuedBytes == 0)
    }

    @Test("tasks are sent ahead to the busy slot with the fewest, up to what each slot may take")
    func prefetchLimits() {
        var pool = SchedulerHarness(workers: 2)
        pool.becomeIdle(0, 1)
        pool.arrive(2)
        _ = pool.dispatch()
        pool.slots[0].prefetchDepth = 2
        pool.slots[1].prefetchDepth = 1
        pool.arrive(5)
        #expect(pool.dispatch() == ["send t2 ahead to 0", "send t3 ahead to 1", "send t4 ahead to 0"])
        // Sent-ahead tasks still wait: they count until they start.
        #expect(pool.scheduler.queuedCount == 5)
        #expect(pool.scheduler.queuedBytes == 50)
        pool.startNext(on: 0)
        #expect(pool.scheduler.queuedCount == 4)
        #expect(pool.scheduler.queuedBytes == 40)
        #expect(pool.dispatch() == ["send t5 ahead to 0"])
    }

    @Test("with prefetch off, no task is sent ahead to a busy slot")
    func prefetchOff() {
        var pool = SchedulerHarness(workers: 1, allowsPrefetch: false)
        pool.becomeIdle(0)
        pool.arrive(2)
        pool.slots[0].prefetchDepth = 8
        #expect(pool.dispatch() == ["run t0 on 0"])
        #expect(pool.scheduler.queuedCount == 1)
    }

    @Test("an idle slot with an empty queue takes the tasks not started from the slot holding the most")
    func withdrawalToIdleSlot() {
        var pool = SchedulerHarness(workers: 3)
        pool.becomeIdle(0, 1)
        pool.arrive(2)
        _ = pool.dispatch()
        pool.slots[0].prefetchDepth = 3
        pool.slots[1].prefetchDepth = 3
        pool.arrive(3)
        #expect(pool.dispatch() == ["send t2 ahead to 0", "send t3 ahead to 1", "send t4 ahead to 0"])
        pool.slots[0].claims = true
        pool.slots[1].claims = true
        pool.becomeIdle(2)
        #expect(pool.dispatch() == ["withdraw from 0", "run t2 on 2", "send t4 ahead to 1"])
        #expect(pool.sentAhead(to: 0) == [])
        #expect(pool.scheduler.queuedCount == 2)
    }

    @Test("nothing is withdrawn while no slot is idle, and a withdrawal that brings nothing back ends the dispatch")
    func emptyWithdrawal() {
        var pool = SchedulerHarness(workers: 2)
        pool.becomeIdle(0)
        pool.arrive(1)
        _ = pool.dispatch()
        pool.slots[0].prefetchDepth = 1
        pool.arrive(1)
        _ = pool.dispatch()
        pool.slots[0].claims = true
        pool.slots[0].hasClaimedAll = true
        #expect(pool.dispatch() == [])
        pool.becomeIdle(1)
        #expect(pool.dispatch() == ["withdraw from 0"])
        #expect(pool.sentAhead(to: 0).count == 1)
    }

    @Test("a cancelled waiting task leaves the counts and takes no slot; a dispatched one is withdrawn or stopped")
    func cancel() {
        var pool = SchedulerHarness(workers: 2)
        pool.becomeIdle(0)
        let tasks = pool.arrive(3)
        #expect(pool.dispatch() == ["run t0 on 0"])
        pool.slots[0].prefetchDepth = 1
        #expect(pool.dispatch() == ["send t1 ahead to 0"])
        // Queued: out of the counts at once, dropped when it comes up.
        #expect(pool.scheduler.stop(tasks[2]) == .none)
        #expect(pool.scheduler.queuedCount == 1)
        #expect(pool.scheduler.queuedBytes == 10)
        pool.scheduler.taskFinished(tasks[2], succeeded: false)
        pool.becomeIdle(1)
        #expect(pool.dispatch() == [])
        #expect(pool.scheduler.queuedCount == 1)
        // Sent ahead: its slot withdraws it.
        #expect(pool.scheduler.stop(tasks[1]) == .withdrawFromItsSlot)
        #expect(pool.scheduler.queuedCount == 0)
        #expect(pool.scheduler.queuedBytes == 0)
        // Running: its slot stops its process.
        #expect(pool.scheduler.stop(tasks[0]) == .interruptItsSlot)
        // Finished already: nothing.
        #expect(pool.scheduler.stop(tasks[0]) == .none)
        // The withdrawn task, finished, does not come back to the queue.
        #expect(pool.scheduler.putBack([tasks[1]]) == .queued)
        #expect(pool.dispatch() == [])
        #expect(pool.scheduler.counters.failed == 1)
    }

    @Test("the queue refuses tasks beyond its length, bytes or the payload limit, counting frames still arriving")
    func queueLimits() {
        var scheduler = Scheduler<FakeTask>(
            limits: .init(queueCapacity: 2, maximumPayloadLength: 100, maximumQueuedBytes: 150, allowsPrefetch: true)
        )
        _ = scheduler.start(workers: 1)
        #expect(
            scheduler.taskArrived(FakeTask("a", size: 101))
                == .refused(.payloadTooLarge, "task of 101 bytes exceeds the limit of 100 bytes")
        )
        #expect(scheduler.taskArrived(FakeTask("b", size: 100)) == .queued)
        #expect(scheduler.reserve(51) == false)
        #expect(scheduler.reserve(30) == true)
        #expect(scheduler.reservedBytes == 30)
        let refused = FakeTask("c", size: 21)
        #expect(
            scheduler.taskArrived(refused)
                == .refused(.rejected, "queue full: 100 bytes waiting and 30 arriving (limit 150 bytes)")
        )
        #expect(refused.isFinished)
        scheduler.unreserve(30)
        #expect(scheduler.taskArrived(FakeTask("d", size: 21)) == .queued)
        #expect(
            scheduler.taskArrived(FakeTask("e", size: 1))
                == .refused(.rejected, "queue full: 2 tasks waiting (capacity 2)")
        )
        #expect(scheduler.counters.submitted == 5)
        #expect(scheduler.queuedCount == 2)
        #expect(scheduler.queuedBytes == 121)
        #expect(scheduler.maximumPayloadLimitInFlight == 100)
    }

    @Test("tasks of a connection that holds them back are set aside, and come back at the head in order")
    func heldTasks() {
        var pool = SchedulerHarness(workers: 1)
        pool.holdingConnections = [7]
        let held = [FakeTask("h0", size: 10, connection: 7), FakeTask("h1", size: 10, connection: 7)]
        for task in held { #expect(pool.scheduler.taskArrived(task) == .queued) }
        pool.arrive(1)
        #expect(pool.dispatch() == ["hold h0", "hold h1"])
        // Held tasks still wait.
        #expect(pool.scheduler.queuedCount == 3)
        pool.holdingConnections = []
        #expect(pool.scheduler.putBack(held) == .queued)
        pool.becomeIdle(0)
        #expect(pool.dispatch() == ["run h0 on 0"])
        pool.finishRunning(on: 0)
        pool.becomeIdle(0)
        #expect(pool.dispatch() == ["run h1 on 0"])
        pool.finishRunning(on: 0)
        pool.becomeIdle(0)
        #expect(pool.dispatch() == ["run t0 on 0"])
    }

    @Test("a drain refuses new tasks and is over once the tasks in flight are answered, said once")
    func drain() {
        var pool = SchedulerHarness(workers: 1)
        pool.becomeIdle(0)
        let tasks = pool.arrive(2)
        _ = pool.dispatch()
        pool.scheduler.drain()
        #expect(
            pool.scheduler.taskArrived(FakeTask("late", size: 1))
                == .refused(.shuttingDown, "the server is shutting down")
        )
        #expect(pool.scheduler.isDrained(busySlots: 1) == false)
        pool.finishRunning(on: 0)
        pool.becomeIdle(0)
        #expect(pool.dispatch() == ["run t1 on 0"])
        #expect(pool.scheduler.isDrained(busySlots: 1) == false)
        pool.finishRunning(on: 0)
        #expect(pool.scheduler.isDrained(busySlots: 0) == true)
        #expect(pool.scheduler.isDrained(busySlots: 0) == false)
        #expect(tasks.allSatisfy { $0.isFinished })
        #expect(pool.scheduler.counters.succeeded == 2)
    }

    @Test(
        "a drain is not over while a running task is unanswered, though its slot let go of its process: the answer leaves before the connection closes"
    )
    func drainWaitsForTheAnswerOfAStoppedProcess() {
        var pool = SchedulerHarness(workers: 1)
        pool.becomeIdle(0)
        let tasks = pool.arrive(2)
        pool.slots[0].prefetchDepth = 1
        #expect(pool.dispatch() == ["run t0 on 0", "send t1 ahead to 0"])
        pool.scheduler.drain()
        // t0's process finishes it, starts t1, and is then stopped: no slot is busy, t1 is not answered yet.
        pool.finishRunning(on: 0)
        #expect(pool.scheduler.isDrained(busySlots: 0) == false)
        pool.scheduler.taskFinished(tasks[1], succeeded: false)
        #expect(pool.scheduler.isDrained(busySlots: 0) == true)
    }

    @Test("at the drain deadline every task not started is answered once, and nothing starts any more")
    func drainDeadline() {
        var pool = SchedulerHarness(workers: 2)
        pool.becomeIdle(0)
        let tasks = pool.arrive(5)
        pool.slots[0].prefetchDepth = 2
        #expect(pool.dispatch() == ["run t0 on 0", "send t1 ahead to 0", "send t2 ahead to 0"])
        _ = pool.scheduler.stop(tasks[3])
        pool.scheduler.taskFinished(tasks[3], succeeded: false)
        pool.scheduler.drain()
        var answered: [ObjectIdentifier: Int] = [ObjectIdentifier(tasks[3]): 1]
        func answer(_ task: FakeTask) {
            answered[ObjectIdentifier(task), default: 0] += 1
            pool.scheduler.taskFinished(task, succeeded: false)
        }
        // The queue: t4 (t3 was cancelled and answered already).
        let waiting = pool.scheduler.drainDeadline()
        #expect(waiting.map(\.name) == ["t4"])
        waiting.forEach(answer)
        // The running task is interrupted; the tasks sent ahead come back from the stopped process, not started.
        answer(tasks[0])
        #expect(pool.scheduler.putBack(pool.takeSentAhead(from: 0)) == .answerNotStarted)
        for task in [tasks[1], tasks[2]] where !task.isFinished { answer(task) }
        pool.becomeIdle(0, 1)
        #expect(pool.dispatch() == [])
        #expect(answered.count == 5)
        #expect(answered.values.allSatisfy { $0 == 1 })
        #expect(pool.scheduler.queuedCount == 0)
        #expect(pool.scheduler.queuedBytes == 0)
        #expect(pool.scheduler.isDrained(busySlots: 0) == true)
    }

    @Test("a reload shrinks the pool from the highest indexes and grows it into the missing ones")
    func reloadRollOver() {
        var scheduler = Scheduler<FakeTask>(limits: SchedulerHarness.limits())
        #expect(scheduler.start(workers: 4) == 0..<4)
        #expect(
            scheduler.reload(limits: SchedulerHarness.limits(), workers: 2)
                == .init(stay: [], retire: [2, 3], renew: [0, 1], start: [])
        )
        // Slot 2 was idle and left at once; slot 3 is busy and leaves after its task.
        scheduler.slotRetired(2)
        #expect(scheduler.members == [.inPool, .inPool, nil, .retiring])
        // Growing again: slot 3, still there, stays rather than a new slot taking its index.
        #expect(
            scheduler.reload(limits: SchedulerHarness.limits(), workers: 5)
                == .init(stay: [3], retire: [], renew: [0, 1, 3], start: [2, 4])
        )
        #expect(scheduler.members == [.inPool, .inPool, .inPool, .inPool, .inPool])
        #expect(
            scheduler.reload(limits: SchedulerHarness.limits(), workers: 0)
                == .init(stay: [], retire: [1, 2, 3, 4], renew: [0], start: [])
        )
        for index in 1...4 { scheduler.slotRetired(index) }
        #expect(scheduler.members.compactMap { $0 }.count == 1)
        // Stopped slots (shutdown) neither stay, nor are renewed, nor give up their index.
        scheduler.stopAllSlots()
        #expect(
            scheduler.reload(limits: SchedulerHarness.limits(), workers: 2)
                == .init(stay: [], retire: [], renew: [], start: [1])
        )
    }

    @Test("a reload's new limits apply to the next task, and tasks keep the payload limit they came under")
    func reloadLimits() {
        var scheduler = Scheduler<FakeTask>(limits: SchedulerHarness.limits(maximumPayloadLength: 100))
        _ = scheduler.start(workers: 1)
        let early = FakeTask("early", size: 80)
        #expect(scheduler.taskArrived(early) == .queued)
        _ = scheduler.reload(limits: SchedulerHarness.limits(maximumPayloadLength: 50), workers: 1)
        #expect(
            scheduler.taskArrived(FakeTask("late", size: 80))
                == .refused(.payloadTooLarge, "task of 80 bytes exceeds the limit of 50 bytes")
        )
        #expect(scheduler.maximumPayloadLimitInFlight == 100)
        scheduler.taskFinished(early, succeeded: true)
        #expect(scheduler.maximumPayloadLimitInFlight == 0)
    }
}

/// A task: a name, a size and its connection.
final class FakeTask: SchedulableTask, CustomStringConvertible {
    let name: String
    let size: Int
    let connection: Int
    var state: TaskState = .queued
    var payloadLimit: Int?

    init(_ name: String, size: Int, connection: Int = 0) {
        self.name = name
        self.size = size
        self.connection = connection
    }

    var isFinished: Bool {
        if case .finished = state { return true }
        return false
    }

    var description: String { name }
}

/// A pool of plain values, and the scheduler that runs it: carries out the scheduler's actions as `Supervisor` does.
struct SchedulerHarness {
    struct Slot {
        var isIdle = false
        var running: FakeTask?
        /// Set when tasks sent ahead were withdrawn for an idle slot: no more are sent behind its slow task.
        var isHoldingUp = false
        var sentAhead: [FakeTask] = []
        /// How many tasks the slot may have sent ahead while busy.
        var prefetchDepth = 0
        /// Whether the slot's process claims its tasks, so that those not claimed can be withdrawn.
        var claims = false
        /// Whether it claimed all the tasks sent ahead to it already.
        var hasClaimedAll = false
    }

    var scheduler: Scheduler<FakeTask>
    var slots: [Slot]
    var holdingConnections: Set<Int> = []
    private var arrived = 0

    static func limits(maximumPayloadLength: Int = 1 << 20) -> Scheduler<FakeTask>.Limits {
        .init(
            queueCapacity: 1000,
            maximumPayloadLength: maximumPayloadLength,
            maximumQueuedBytes: 1 << 30,
            allowsPrefetch: true
        )
    }

    init(workers: Int, allowsPrefetch: Bool = true) {
        var limits = Self.limits()
        limits.allowsPrefetch = allowsPrefetch
        scheduler = Scheduler(limits: limits)
        slots = scheduler.start(workers: workers).map { _ in Slot() }
    }

    var running: [Int: FakeTask] {
        slots.indices.reduce(into: [:]) { running, index in running[index] = slots[index].running }
    }

    func sentAhead(to slot: Int) -> [String] { slots[slot].sentAhead.map(\.name) }

    mutating func becomeIdle(_ indexes: Int...) {
        for index in indexes {
            slots[index].isIdle = true
            scheduler.slotBecameIdle(index)
        }
    }

    /// `count` tasks of 10 bytes arrive, named t0, t1, … in order.
    @discardableResult
    mutating func arrive(_ count: Int) -> [FakeTask] {
        (0..<count).map { _ in
            let task = FakeTask("t\(arrived)", size: 10)
            arrived += 1
            let admission = scheduler.taskArrived(task)
            precondition(admission == .queued, "task \(task) was refused: \(admission)")
            return task
        }
    }

    /// Dispatches until the scheduler has nothing more to do; the actions carried out, described.
    mutating func dispatch() -> [String] {
        var done: [String] = []
        var view = View(slots: slots, holdingConnections: holdingConnections)
        while let action = scheduler.nextDispatch(&view) {
            switch action {
            case .run(let task, let index):
                precondition(slots[index].isIdle, "run on slot \(index), which is not idle")
                slots[index].isIdle = false
                slots[index].running = task
                slots[index].isHoldingUp = false
                task.state = .running(pid: Int32(index))
                done.append("run \(task) on \(index)")
            case .prefetch(let task, let index):
                slots[index].sentAhead.append(task)
                done.append("send \(task) ahead to \(index)")
            case .hold(let task):
                done.append("hold \(task)")
            case .withdraw(let index):
                done.append("withdraw from \(index)")
                let withdrawn = slots[index].hasClaimedAll ? [] : slots[index].sentAhead
                slots[index].sentAhead.removeAll { task in withdrawn.contains { $0 === task } }
                if !withdrawn.isEmpty { slots[index].isHoldingUp = true }
                view.slots = slots
                guard !withdrawn.isEmpty, scheduler.putBack(withdrawn) == .queued else { return done }
            }
            view.slots = slots
        }
        return done
    }

    /// The slot's running task is answered, and it starts the next task sent ahead to it, if any.
    mutating func finishRunning(on index: Int) {
        if let task = slots[index].running { scheduler.taskFinished(task, succeeded: true) }
        slots[index].running = nil
        if !slots[index].sentAhead.isEmpty { startNext(on: index) }
    }

    /// The slot starts the next task sent ahead to it.
    mutating func startNext(on index: Int) {
        let next = slots[index].sentAhead.removeFirst()
        scheduler.prefetchedTaskStarts(next)
        next.state = .running(pid: Int32(index))
        slots[index].running = next
    }

    mutating func takeSentAhead(from index: Int) -> [FakeTask] {
        defer { slots[index].sentAhead = [] }
        return slots[index].sentAhead
    }

    struct View: SchedulerPool {
        var slots: [Slot]
        let holdingConnections: Set<Int>

        func isIdle(_ slot: Int) -> Bool { slots[slot].isIdle }

        func canPrefetch(_ slot: Int, size: Int) -> Bool {
            slots[slot].running != nil && !slots[slot].isHoldingUp
                && slots[slot].sentAhead.count < slots[slot].prefetchDepth
        }

        func prefetchedCount(_ slot: Int) -> Int { slots[slot].sentAhead.count }

        func canWithdraw(_ slot: Int) -> Bool { slots[slot].claims && !slots[slot].sentAhead.isEmpty }

        func isHoldingTasks(_ task: FakeTask) -> Bool { holdingConnections.contains(task.connection) }
    }
}
