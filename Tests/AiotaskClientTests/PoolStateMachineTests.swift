import AiotaskProtocol
import Testing

@testable import AiotaskClient

/// The decisions of ``AiotaskClientPool``, without sockets: events in, actions out.
@Suite("The client pool's state machine")
struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine

    static let addresses: [ServerAddress] = [
        .tcp(host: "127.0.0.11", port: 4242), .tcp(host: "127.0.0.12", port: 4242),
        .tcp(host: "127.0.0.13", port: 4242),
    ]

    static func settings(_ strategy: BalancingStrategy, connections: Int = 1) -> Machine.Settings {
        Machine.Settings(
            connectionsPerEndpoint: connections,
            strategy: strategy,
            backoffBase: .milliseconds(100),
            backoffLimit: .milliseconds(1000)
        )
    }

    /// A machine started, every connection made; returns the connections in endpoint order.
    static func running(
        _ strategy: BalancingStrategy,
        connections: Int = 1,
        addresses: [ServerAddress] = addresses
    ) -> (Machine, [Machine.ConnectionID]) {
        var machine = Machine(addresses: addresses, settings: settings(strategy, connections: connections), seed: 7)
        var made: [Machine.ConnectionID] = []
        for action in machine.start() {
            guard case .connect(let id, let endpoint, _) = action else {
                Issue.record("unexpected \(action)")
                continue
            }
            _ = machine.connected(id, endpoint: endpoint)
            made.append(id)
        }
        return (machine, made)
    }

    static func connects(_ actions: [Machine.Action]) -> [(Machine.ConnectionID, Machine.EndpointID)] {
        actions.compactMap {
            if case .connect(let id, let endpoint, _) = $0 { return (id, endpoint) }
            return nil
        }
    }

    @discardableResult
    static func take(_ machine: inout Machine) -> Machine.ConnectionID? {
        guard case .connection(let id) = machine.acquire(nil) else { return nil }
        return id
    }

    @Test("start connects every endpoint the configured number of times")
    func startConnects() {
        var machine = Machine(addresses: Self.addresses, settings: Self.settings(.roundRobin, connections: 3))
        let connects = Self.connects(machine.start())
        #expect(connects.count == 9)
        #expect(Set(connects.map(\.1)).count == 3)
    }

    @Test("round robin sends tasks to the endpoints in turn")
    func roundRobinTakesTurns() {
        var (machine, connections) = Self.running(.roundRobin)
        let chosen = (0..<6).map { _ in Self.take(&machine) }
        #expect(chosen == connections + connections)
    }

    @Test("least outstanding sends a task to the less loaded of the two endpoints it compares")
    func leastOutstandingAvoidsTheBusyEndpoint() {
        // With two endpoints, both are the two choices: the less loaded always wins.
        var (machine, connections) = Self.running(.leastOutstanding, addresses: Array(Self.addresses.prefix(2)))
        for _ in 0..<10 {
            _ = Self.take(&machine)
            let counts = machine.outstandingPerEndpoint
            #expect(abs(counts[0] - counts[1]) <= 1, "\(counts)")
        }
        for _ in 0..<3 { _ = machine.release(connections[1]) }
        #expect(machine.outstandingPerEndpoint == [5, 2])
        for _ in 0..<3 { #expect(Self.take(&machine) == connections[1]) }
    }

    @Test("least outstanding spreads many tasks evenly over equal endpoints")
    func leastOutstandingSpreads() {
        var (machine, _) = Self.running(.leastOutstanding)
        for _ in 0..<300 { _ = Self.take(&machine) }
        let counts = machine.outstandingPerEndpoint
        #expect(counts.allSatisfy { (95...105).contains($0) }, "\(counts)")
    }

    @Test("first available sends every task to the first endpoint, and to the next only while it is out")
    func firstAvailableFailsOver() {
        var (machine, connections) = Self.running(.firstAvailable)
        #expect((0..<5).map { _ in Self.take(&machine) } == Array(repeating: connections[0], count: 5))
        for _ in 0..<5 { _ = machine.release(connections[0]) }
        let actions = machine.closed(connections[0], error: AiotaskClientError(.connectionLost, reason: "test"))
        #expect(actions.contains { if case .ejected = $0 { true } else { false } })
        #expect(Self.take(&machine) == connections[1])
    }

    @Test("a dropped connection ejects its endpoint; it is tried after the backoff and takes tasks once connected")
    func dropEjectsAndBackoffRestores() throws {
        var (machine, connections) = Self.running(.roundRobin)
        #expect(Self.take(&machine) == connections[0], "a choice before the drop")
        let dropped = AiotaskClientError(.connectionLost, reason: "test")
        let actions = machine.closed(connections[1], error: dropped)
        let endpoint = try #require(
            actions.compactMap { if case .scheduleRetry(let id, let delay) = $0 { (id, delay) } else { nil } }.first
        )
        #expect(endpoint.1 == .milliseconds(100))
        #expect(machine.takesTasksPerEndpoint == [true, false, true])
        for _ in 0..<6 { #expect(Self.take(&machine) != connections[1]) }

        let retry = Self.connects(machine.retryDue(endpoint.0))
        #expect(retry.count == 1)
        // Connecting fails again: the backoff doubles.
        let again = machine.connectFailed(retry[0].0, endpoint: retry[0].1, error: dropped)
        #expect(again.contains(.scheduleRetry(endpoint.0, after: .milliseconds(200))))
        let third = Self.connects(machine.retryDue(endpoint.0))
        let restored = machine.connected(third[0].0, endpoint: third[0].1)
        #expect(restored.contains(.restored(endpoint.0, Self.addresses[1])))
        #expect(machine.takesTasksPerEndpoint == [true, true, true])
    }

    @Test("a late event about an ended connection leaves alone the new connection that took its slot")
    func endedConnectionsSlotIsReused() throws {
        var (machine, connections) = Self.running(.firstAvailable, addresses: [Self.addresses[0]])
        let old = connections[0]
        #expect(Self.take(&machine) == old)
        let actions = machine.closed(old, error: AiotaskClientError(.connectionLost, reason: "test"))
        let endpoint = try #require(
            actions.compactMap { if case .scheduleRetry(let id, _) = $0 { id } else { nil } }.first
        )
        let retry = Self.connects(machine.retryDue(endpoint))
        let new = try #require(retry.first?.0)
        _ = machine.connected(new, endpoint: endpoint)
        // The per-task calls find a connection by its slot: the new connection sits where the old one did.
        #expect(new.slot == old.slot && new != old)
        #expect(Self.take(&machine) == new)

        // The old connection's task answered late, and its end reported twice: neither touches the new one.
        #expect(machine.release(old).isEmpty)
        #expect(machine.closed(old, error: AiotaskClientError(.connectionLost, reason: "again")).isEmpty)
        #expect(machine.outstandingPerEndpoint == [1])
        #expect(machine.takesTasksPerEndpoint == [true])
        #expect(Self.take(&machine) == new)
    }

    @Test("the backoff doubles with each failure in a row, up to its limit")
    func backoffDoubles() {
        let machine = Machine(addresses: Self.addresses, settings: Self.settings(.roundRobin))
        #expect(
            (1...6).map { machine.backoff(afterFailures: $0) }
                == [100, 200, 400, 800, 1000, 1000].map {
                    Duration.milliseconds($0)
                }
        )
    }

    @Test("a connection whose server said GOODBYE gets no new task, and is replaced once it closes")
    func goodbyeStopsNewTasks() {
        var (machine, connections) = Self.running(.roundRobin)
        _ = machine.goodbye(connections[0])
        for _ in 0..<6 { #expect(Self.take(&machine) != connections[0]) }
        let actions = machine.closed(connections[0], error: AiotaskClientError(.connectionLost, reason: "closed"))
        #expect(!actions.contains { if case .ejected = $0 { true } else { false } })
        #expect(actions.count == 1)
        guard case .scheduleRetry(_, let delay) = actions.first else {
            Issue.record("no retry after GOODBYE: \(actions)")
            return
        }
        #expect(delay == .milliseconds(100))
    }

    @Test("GOODBYE on one connection stops new tasks on all the connections to that server")
    func goodbyeCoversTheServer() {
        var (machine, connections) = Self.running(.roundRobin, connections: 2)
        // Tasks chosen before it: what the machine keeps for its choices must not outlive GOODBYE.
        #expect(Self.take(&machine) == connections[0])
        _ = machine.goodbye(connections[0])
        #expect(machine.takesTasksPerEndpoint == [false, true, true])
        for _ in 0..<8 {
            let chosen = Self.take(&machine)
            #expect(chosen != connections[0] && chosen != connections[1])
        }
    }

    @Test("a task waits while no endpoint takes tasks, and goes to the first connection made")
    func waitersAreServed() {
        var machine = Machine(addresses: Self.addresses, settings: Self.settings(.roundRobin))
        let waiter = machine.makeWaiterID()
        #expect(machine.acquire(waiter) == .wait)
        let connects = Self.connects(machine.start())
        let actions = machine.connected(connects[2].0, endpoint: connects[2].1)
        #expect(actions == [.resume(waiter, connects[2].0)])
        #expect(machine.stopWaiting(waiter, error: nil).isEmpty)
    }

    @Test("a waiting task past its limit fails with the last connect error")
    func waiterGivesUp() {
        var machine = Machine(addresses: [Self.addresses[0]], settings: Self.settings(.roundRobin))
        let connects = Self.connects(machine.start())
        _ = machine.connectFailed(
            connects[0].0,
            endpoint: connects[0].1,
            error: AiotaskClientError(.connectFailed, reason: "refused")
        )
        let waiter = machine.makeWaiterID()
        #expect(machine.acquire(waiter) == .wait)
        let actions = machine.stopWaiting(waiter, error: nil)
        guard case .fail(waiter, let error) = actions.first else {
            Issue.record("\(actions)")
            return
        }
        #expect(error.code == .connectFailed)
        #expect(error.reason.contains("refused"))
    }

    @Test("shutdown fails waiting tasks, closes idle connections at once and busy ones when their tasks end")
    func shutdownDrains() {
        var (machine, connections) = Self.running(.firstAvailable)
        let busy = Self.take(&machine)
        #expect(busy == connections[0])
        let actions = machine.shutDown()
        #expect(actions == [.close(connections[1]), .close(connections[2])])
        #expect(
            machine.acquire(nil)
                == .fail(AiotaskClientError(.connectionLost, reason: "the client pool is shutting down"))
        )
        for id in connections.dropFirst() {
            #expect(machine.closed(id, error: .init(.connectionLost, reason: "")).isEmpty)
        }
        #expect(machine.release(connections[0]) == [.close(connections[0])])
        #expect(machine.closed(connections[0], error: .init(.connectionLost, reason: "")) == [.finished])
        #expect(machine.isFinished)
    }

    @Test("a host name's new addresses are connected, and a vanished one closes once idle")
    func resolutionChanges() {
        var (machine, connections) = Self.running(.roundRobin, addresses: Array(Self.addresses.prefix(2)))
        let busy = Self.take(&machine)
        #expect(busy == connections[0])
        let actions = machine.resolved([Self.addresses[1], Self.addresses[2]])
        #expect(Self.connects(actions).count == 1)
        #expect(machine.addresses == [Self.addresses[1], Self.addresses[2]])
        #expect(!actions.contains(.close(connections[0])), "its task is still running")
        #expect(machine.release(connections[0]) == [.close(connections[0])])
        #expect(machine.closed(connections[0], error: .init(.connectionLost, reason: "")).isEmpty)
    }
}
