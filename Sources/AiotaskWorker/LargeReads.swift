import NIOCore

/// How the server sizes its reads from clients and pool processes.
enum LargeReads {
    /// Starts small and grows up to 1 MiB while reads keep filling the buffer, so a large task or result arrives
    /// in a few `read` calls (NIO's default stops at 64 KiB), and an idle connection holds no large buffer.
    static let allocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 1 << 20)
}
