import AiotaskProtocol

/// The most recent answers of a connection, so that `STATUS` can answer for tasks that are finished.
///
/// Bounded: it keeps the last `capacity` answers, so the memory for finished tasks stays constant however long a
/// connection lives; an older task's id answers `NOT_FOUND`. Recording costs no hashing (it runs once per task);
/// a `STATUS` lookup, which is rare, reads the answers newest first, so an id reused on the connection reports
/// its newest status.
struct FinishedTaskLog {
    private struct Answer {
        let id: TaskID
        let status: TaskStatus
    }

    private var answers: [Answer] = []
    /// Where the next answer goes once `answers` is full: the oldest one.
    private var next = 0
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(0, capacity)
    }

    mutating func record(_ id: TaskID, _ status: TaskStatus) {
        guard capacity > 0 else { return }
        if answers.count < capacity {
            answers.append(Answer(id: id, status: status))
        } else {
            answers[next] = Answer(id: id, status: status)
            next = (next + 1) % capacity
        }
    }

    func status(of id: TaskID) -> TaskStatus? {
        // Newest first: from just before `next` back to the start, then from the end back to `next`.
        for index in answers.indices[..<next].reversed() + answers.indices[next...].reversed()
        where answers[index].id == id {
            return answers[index].status
        }
        return nil
    }
}
