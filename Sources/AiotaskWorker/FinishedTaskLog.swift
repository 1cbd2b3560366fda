import AiotaskProtocol

/// The most recent finished tasks of a connection and how they ended, so that `STATUS` can answer for them.
///
/// Bounded: past its capacity the oldest entries are forgotten and their ids answer `NOT_FOUND`, so the memory
/// for finished tasks stays constant however long a connection lives.
struct FinishedTaskLog {
    private var statuses: [TaskID: TaskStatus] = [:]
    private var order: [TaskID] = []
    private var next = 0
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(0, capacity)
    }

    mutating func record(_ id: TaskID, _ status: TaskStatus) {
        guard capacity > 0 else { return }
        // An id may be reused once its task is answered: it keeps its place and takes the newer status.
        if statuses.updateValue(status, forKey: id) != nil { return }
        if order.count < capacity {
            order.append(id)
        } else {
            statuses[order[next]] = nil
            order[next] = id
            next = (next + 1) % capacity
        }
    }

    func status(of id: TaskID) -> TaskStatus? {
        statuses[id]
    }
}
