import NIOCore

/// Who awaits a task's answer: the promise behind a ``TaskHandle``, or the suspended caller of
/// ``AiotaskClient/submit(_:timeout:)-(ByteBuffer,_)`` itself, resumed straight from the event loop.
enum PendingTask {
    case promise(EventLoopPromise<ByteBuffer>)
    case continuation(UnsafeContinuation<ByteBuffer, any Error>)

    func succeed(_ result: ByteBuffer) {
        switch self {
        case .promise(let promise): promise.succeed(result)
        case .continuation(let continuation): continuation.resume(returning: result)
        }
    }

    func fail(_ error: any Error) {
        switch self {
        case .promise(let promise): promise.fail(error)
        case .continuation(let continuation): continuation.resume(throwing: error)
        }
    }
}
