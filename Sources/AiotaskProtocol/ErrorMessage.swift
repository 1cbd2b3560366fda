/// What an `ERROR` frame's message starts with when the server closes the connection for a reason that a client
/// should tell apart from a broken protocol. The frame has no code field (an older client shows the whole payload as
/// text), so the reason is the message's first words, which read well as they are; see docs/protocol.md, `ERROR`.
public enum ErrorMessage {
    /// The server does not let the connecting user in (`allow-users`, `allow-groups` on a Unix socket).
    public static let permissionDeniedPrefix = "permission denied: "
}
