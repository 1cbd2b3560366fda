import Testing

@testable import AiotaskServer

/// The rules of ``AgentCheck/answer(_:)``, without a socket: what HAProxy's agent check hears for each state of the
/// server (docs/deployment.md, "Many hosts behind HAProxy").
@Suite("Agent check answers")
struct AgentCheckTests {
    @Test(
        "a healthy pool says up ready, weighted by its idle share, never below 1 %",
        arguments: [
            (4, 4, "up ready 100%\n"), (4, 3, "up ready 75%\n"), (3, 1, "up ready 33%\n"), (4, 0, "up ready 1%\n"),
        ]
    )
    func ready(poolSize: Int, idle: Int, line: String) {
        let answer = AgentCheck.answer(.init(poolSize: poolSize, idleSlots: idle))
        #expect(answer.line == line)
    }

    @Test("a stopping server says drain, even once its pool has stopped")
    func stopping() {
        let answer = AgentCheck.answer(.init(isStopping: true, isPoolFailing: true, poolSize: 2, idleSlots: 0))
        #expect(answer == .drain(.stopping))
        #expect(answer.line == "up drain\n")
    }

    @Test("a pool that cannot keep a process alive says down, with its reason after #, drained or not")
    func down() {
        let answer = AgentCheck.answer(
            .init(isDrainedByOperator: true, isPoolFailing: true, poolSize: 2, idleSlots: 0)
        )
        #expect(answer == .down(.poolFailing))
        #expect(answer.line == "down #no pool process stays alive\n")
    }

    @Test("an operator's drain says drain, though the pool is idle")
    func drainedByOperator() {
        let answer = AgentCheck.answer(.init(isDrainedByOperator: true, poolSize: 2, idleSlots: 2))
        #expect(answer == .drain(.drainedByOperator))
    }

    @Test("a reload rolling the pool over says drain")
    func reloading() {
        let answer = AgentCheck.answer(.init(isRollingOver: true, poolSize: 2, idleSlots: 1))
        #expect(answer == .drain(.reloading))
    }

    @Test("more tasks waiting than the high-water mark say drain; as many as the mark, or no mark, say ready")
    func highWater() {
        let above = AgentCheck.Figures(poolSize: 2, idleSlots: 0, queuedTasks: 11, highWaterMark: 10)
        #expect(AgentCheck.answer(above) == .drain(.queueAboveHighWater))
        var at = above
        at.queuedTasks = 10
        #expect(AgentCheck.answer(at) == .ready(weightPercent: 1))
        var none = above
        none.highWaterMark = nil
        #expect(AgentCheck.answer(none) == .ready(weightPercent: 1))
    }

    @Test("every line is one line of printable ASCII")
    func lines() {
        let answers: [AgentCheck.Answer] = [
            .ready(weightPercent: 50), .drain(.stopping), .down(.poolFailing), .down(.init(rawValue: 200)),
        ]
        for answer in answers {
            let line = answer.line
            #expect(line.hasSuffix("\n"))
            #expect(line.dropLast().allSatisfy { $0.isASCII && !$0.isNewline })
        }
    }
}
