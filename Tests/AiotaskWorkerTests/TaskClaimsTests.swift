import Foundation
import NIOConcurrencyHelpers
import Synchronization
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The supervisor's and the pool process's views of the same task-claims memory, the second one taken over as a
/// pool process does it: through the descriptor named in its environment.
private func sharedClaims() throws -> (supervisor: TaskClaims, process: TaskClaims) {
    let (supervisor, descriptor) = try #require(TaskClaims.create())
    setenv(TaskClaims.descriptorKey, String(dup(descriptor)), 1)
    close(descriptor)
    let process = try #require(TaskClaims.inherited())
    #expect(getenv(TaskClaims.descriptorKey) == nil)
    return (supervisor, process)
}

@Suite("Task claims: the memory through which tasks sent ahead are withdrawn", .serialized)
struct TaskClaimsTests {
    @Test("the process claims tasks in order; a withdrawal takes exactly the tasks it has not claimed")
    func claimAndWithdraw() throws {
        let (supervisor, process) = try sharedClaims()
        #expect(supervisor.isAnnounced)
        #expect(process.claim(0))
        #expect(process.claim(1))
        // Task 1 runs; tasks 2, 3 and 4 were sent ahead.
        #expect(supervisor.withdraw(from: 2, sent: 5) == 2)
        #expect(!process.claim(2))
        #expect(!process.claim(3))
        #expect(!process.claim(4))
        #expect(process.claim(5))
    }

    @Test("nothing is withdrawn while the task the supervisor awaits the answer to is not claimed yet")
    func awaitedTaskIsNeverWithdrawn() throws {
        let (supervisor, process) = try sharedClaims()
        #expect(process.claim(0))
        #expect(supervisor.withdraw(from: 2, sent: 3) == nil)
        #expect(process.claim(1))
        #expect(supervisor.withdraw(from: 2, sent: 3) == 2)
        #expect(!process.claim(2))
    }

    @Test("indexes wrap around after 2^32 tasks")
    func wrapAround() throws {
        let (supervisor, process) = try sharedClaims()
        // Withdraws the first 2^32 - 3 tasks at once, as if they had been sent and withdrawn.
        #expect(supervisor.withdraw(from: 0, sent: UInt32.max - 2) == 0)
        #expect(process.claim(UInt32.max - 2))
        #expect(process.claim(UInt32.max - 1))
        #expect(process.claim(UInt32.max))
        #expect(process.claim(0))
        #expect(supervisor.withdraw(from: 1, sent: 3) == 1)
        #expect(!process.claim(1))
        #expect(!process.claim(2))
        #expect(process.claim(3))
    }

    @Test("claims and withdrawals racing on two threads: every task is either claimed or withdrawn, never both")
    func race() throws {
        let (supervisor, process) = try sharedClaims()
        let count: UInt32 = 300_000
        let race = ClaimRace()
        nonisolated(unsafe) let processSide = process
        // The process's side: claims each task once it has been delivered to it, in order, as it reads them.
        Thread.detachNewThread {
            var claimed = [Bool](repeating: false, count: Int(count))
            for index in 0..<count {
                var spins = 0
                while race.delivered.load(ordering: .acquiring) <= index { spinOrYield(&spins) }
                claimed[Int(index)] = processSide.claim(index)
                race.attempted.store(index + 1, ordering: .releasing)
            }
            race.claimed.withLockedValue { $0 = claimed }
            race.finished.signal()
        }
        // The supervisor's side: sends tasks 8 at a time, at most 16 ahead of the process as a supervisor sends
        // ahead, and withdraws after each batch. Most batches are delivered at once, so the withdrawal races the
        // claims of the process; every fourth only after it, as tasks still in the pipe, so some tasks are
        // certainly withdrawn. The last batch is never withdrawn, so some are certainly claimed.
        var withdrawn = [Bool](repeating: false, count: Int(count))
        var withdrawnBelow: UInt32 = 0
        var sent: UInt32 = 0
        var batch = 0
        let deadline = ContinuousClock.now + .seconds(20)
        while sent < count {
            var spins = 0
            while sent - race.attempted.load(ordering: .acquiring) >= 16 {
                try #require(ContinuousClock.now < deadline, "the claiming thread stopped claiming")
                spinOrYield(&spins)
            }
            sent = min(count, sent + 8)
            batch += 1
            if !batch.isMultiple(of: 4) || sent == count { race.delivered.store(sent, ordering: .releasing) }
            guard sent < count, let first = supervisor.withdraw(from: 0, sent: sent) else { continue }
            // Tasks below `withdrawnBelow` were withdrawn before, and are marked already.
            for index in max(first, withdrawnBelow)..<max(first, sent) { withdrawn[Int(index)] = true }
            withdrawnBelow = sent
        }
        try #require(race.finished.wait(timeout: .now() + 20) == .success, "the claiming thread did not finish")
        let claimed = try #require(race.claimed.withLockedValue { $0 })
        let both = (0..<Int(count)).filter { claimed[$0] && withdrawn[$0] }.count
        let neither = (0..<Int(count)).filter { !claimed[$0] && !withdrawn[$0] }.count
        #expect(both == 0)
        #expect(neither == 0)
        #expect(withdrawn.contains(true))
        #expect(claimed.contains(true))
    }
}

/// Waits for the other thread of ``TaskClaimsTests/race()`` by spinning, so that the two race closely, and yields
/// the processor now and then, so that a thread that is not running gets to.
private func spinOrYield(_ spins: inout Int) {
    spins += 1
    if spins.isMultiple(of: 64) { sched_yield() }
}

/// What the two threads of ``TaskClaimsTests/race()`` share: how many tasks the process has been delivered and has
/// tried to claim, and what it found when claiming them.
private final class ClaimRace: Sendable {
    let delivered = Atomic<UInt32>(0)
    let attempted = Atomic<UInt32>(0)
    let claimed = NIOLockedValueBox<[Bool]?>(nil)
    let finished = DispatchSemaphore(value: 0)
}
