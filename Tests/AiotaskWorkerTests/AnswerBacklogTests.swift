import NIOCore
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// The rules of a connection whose client leaves its answers unread, without a channel or a process.
@Suite("Answer backlog")
struct AnswerBacklogTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test("a connection whose answers stop leaving holds back its tasks, and releases them once they leave")
    func holdAndRelease() {
        var backlog = AnswerBacklog(writeTimeout: .seconds(60))
        #expect(!backlog.isHoldingTasks)
        #expect(
            backlog.writabilityChanged(isWritable: false, now: start) == .holdTasks(stallCheck: start + .seconds(60))
        )
        #expect(backlog.isHoldingTasks)
        #expect(backlog.writabilityChanged(isWritable: false, now: start) == .none)
        #expect(backlog.writabilityChanged(isWritable: true, now: start) == .releaseTasks(resumeReading: false))
        #expect(!backlog.isHoldingTasks)
        #expect(backlog.writabilityChanged(isWritable: true, now: start) == .none)
    }

    @Test("a client that keeps sending frames is not disconnected, however long it takes before it reads")
    func sendingIsProgress() {
        var backlog = AnswerBacklog(writeTimeout: .seconds(60))
        _ = backlog.writabilityChanged(isWritable: false, now: start)
        backlog.frameReceived(now: start + .seconds(50))
        #expect(backlog.stallCheckDue(now: start + .seconds(60)) == .checkStall(at: start + .seconds(110)))
        backlog.frameReceived(now: start + .seconds(100))
        #expect(backlog.stallCheckDue(now: start + .seconds(110)) == .checkStall(at: start + .seconds(160)))
    }

    @Test("a client that neither reads nor sends for the write timeout is disconnected; without one, never")
    func stalledClient() {
        var backlog = AnswerBacklog(writeTimeout: .seconds(60))
        _ = backlog.writabilityChanged(isWritable: false, now: start)
        #expect(backlog.stallCheckDue(now: start + .seconds(59)) == .checkStall(at: start + .seconds(60)))
        #expect(backlog.stallCheckDue(now: start + .seconds(60)) == .disconnect)

        var patient = AnswerBacklog(writeTimeout: nil)
        #expect(patient.writabilityChanged(isWritable: false, now: start) == .holdTasks(stallCheck: nil))
        #expect(patient.stallCheckDue(now: start + .seconds(3600)) == .none)
    }

    @Test(
        "answers given at once pause reading only past their limit while blocked, and reading resumes with the answers"
    )
    func immediateAnswers() {
        var backlog = AnswerBacklog(writeTimeout: nil)
        // While answers flow, any number of them is fine.
        for _ in 0..<(AnswerBacklog.immediateAnswerLimit * 2) { #expect(backlog.answeredAtOnce() == .none) }
        _ = backlog.writabilityChanged(isWritable: false, now: start)
        for _ in 0..<AnswerBacklog.immediateAnswerLimit { #expect(backlog.answeredAtOnce() == .none) }
        #expect(backlog.answeredAtOnce() == .pauseReading)
        #expect(backlog.answeredAtOnce() == .none)
        #expect(backlog.writabilityChanged(isWritable: true, now: start) == .releaseTasks(resumeReading: true))
        // The count starts again with the next blockage.
        _ = backlog.writabilityChanged(isWritable: false, now: start)
        #expect(backlog.answeredAtOnce() == .none)
    }
}
