import Foundation
import NIOConcurrencyHelpers
import Testing

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
        let count = 300_000
        let outcome = RaceOutcome()
        nonisolated(unsafe) let processSide = process
        Thread.detachNewThread {
            var claimed = [Bool](repeating: false, count: count)
            for index in 0..<count { claimed[index] = processSide.claim(UInt32(index)) }
            outcome.claimed.withLockedValue { $0 = claimed }
        }
        // The supervisor's side: withdraws the tasks "sent" up to a few past where the process was last seen.
        var withdrawn = [Bool](repeating: false, count: count)
        var sent: UInt32 = 0
        let deadline = ContinuousClock.now + .seconds(20)
        var claimed: [Bool]?
        while claimed == nil {
            try #require(ContinuousClock.now < deadline, "the claiming thread did not finish")
            if let first = supervisor.withdraw(from: 0, sent: sent) {
                for index in Int(first)..<max(Int(first), Int(sent)) { withdrawn[index] = true }
                sent = UInt32(min(count, Int(first) + 8))
            }
            claimed = outcome.claimed.withLockedValue { $0 }
        }
        let both = (0..<count).filter { claimed![$0] && withdrawn[$0] }.count
        let neither = (0..<count).filter { !claimed![$0] && !withdrawn[$0] }.count
        #expect(both == 0)
        #expect(neither == 0)
        #expect(withdrawn.contains(true))
        #expect(claimed!.contains(true))
    }
}

/// What the claiming thread of ``TaskClaimsTests/race()`` found.
private final class RaceOutcome: Sendable {
    let claimed = NIOLockedValueBox<[Bool]?>(nil)
}
