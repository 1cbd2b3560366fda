#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Unbuffered writes to the process's stderr, safe from any thread.
package enum StandardError {
    /// Writes `text` followed by a newline.
    package static func writeLine(_ text: String) {
        let line = text + "\n"
        line.utf8CString.withUnsafeBufferPointer { buffer in
            var offset = 0
            let count = buffer.count - 1
            while offset < count {
                let written = Glibc.write(2, buffer.baseAddress! + offset, count - offset)
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else { return }
                offset += written
            }
        }
    }
}
