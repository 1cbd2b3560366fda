import AiotaskWorker
import NIOCore

/// An aiotask worker whose handler is a Swift closure: it answers each task with the task's words reversed.
///
/// Run it like aiotaskd (same options, no `--handler`):
///
///     swift run aiotask-example-worker --listen tcp://127.0.0.1:4242
///     aiotask submit --server tcp://127.0.0.1:4242 "hello brave new world"   # world new brave hello
///
/// A task that is not UTF-8 text fails with the error's description as its message.
@main
struct ExampleWorker {
    static func main() async {
        await Daemon.main { task in
            guard let text = task.getString(at: task.readerIndex, length: task.readableBytes),
                text.utf8.elementsEqual(task.readableBytesView)
            else {
                throw ExampleError.notText(byteCount: task.readableBytes)
            }
            let reversed = text.split(separator: " ").reversed().joined(separator: " ")
            return ByteBuffer(string: reversed)
        }
    }
}

enum ExampleError: Error, CustomStringConvertible {
    case notText(byteCount: Int)

    var description: String {
        switch self {
        case .notText(let byteCount): "the task (\(byteCount) bytes) is not UTF-8 text"
        }
    }
}
