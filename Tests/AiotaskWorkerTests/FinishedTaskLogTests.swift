import AiotaskProtocol
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

@Suite("Finished-task memory")
struct FinishedTaskLogTests {
    @Test("past its capacity the oldest finished task is forgotten")
    func forgetsOldest() {
        var log = FinishedTaskLog(capacity: 2)
        let (first, second, third) = (TaskID.random(), TaskID.random(), TaskID.random())
        log.record(first, .done)
        log.record(second, .failed)
        log.record(third, .done)
        #expect(log.status(of: first) == nil)
        #expect(log.status(of: second) == .failed)
        #expect(log.status(of: third) == .done)
    }

    @Test("a reused id reports its newest status, also once the log has wrapped around")
    func reusedID() {
        var log = FinishedTaskLog(capacity: 3)
        let (reused, other) = (TaskID.random(), TaskID.random())
        log.record(reused, .failed)
        log.record(reused, .done)
        log.record(other, .done)
        #expect(log.status(of: reused) == .done)
        #expect(log.status(of: other) == .done)
        log.record(reused, .failed)
        log.record(TaskID.random(), .done)
        #expect(log.status(of: reused) == .failed)
        #expect(log.status(of: other) == .done)
    }

    @Test("a capacity of zero remembers nothing")
    func zeroCapacity() {
        var log = FinishedTaskLog(capacity: 0)
        let id = TaskID.random()
        log.record(id, .done)
        #expect(log.status(of: id) == nil)
    }
}
