#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Makes blocking reads from `descriptor` give up after `timeout` (`SO_RCVTIMEO`), so that a test reading a plain
/// socket fails instead of hanging when the other end never answers.
///
/// Here rather than in the tests: a test target that imports Foundation and Testing sees `timeval` declared twice
/// (by Glibc and by the Swift runtime's shims), and with member import visibility it would have to import the
/// runtime's private shims module by name to use it.
@discardableResult
public func setReceiveTimeout(_ descriptor: Int32, _ timeout: Duration) -> Bool {
    var value = timeval(
        tv_sec: Int(timeout.components.seconds),
        tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000)
    )
    return setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size)) == 0
}
