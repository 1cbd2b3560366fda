/// Which protocol a client speaks to its server: aiotask's extended protocol, or only the frames of the original
/// aiotask 0.0.2 (see docs/protocol.md, section 10).
///
/// An original 0.0.2 server cannot parse the extended protocol's `HELLO`: it discards what it received and the
/// connection is of no use. ``legacy`` lets a client (and `aiotask --protocol legacy`) work with such a server, so
/// that clients can move to aiotask before their servers do; ``automatic`` tries the extended protocol first.
public enum WireProtocol: Hashable, Sendable {
    /// The extended protocol: `HELLO` first, then `SUBMIT`, with results, failures with their reason, per-task
    /// timeouts, `CANCEL`, server statistics and `GOODBYE`. Needs an aiotask server (`aiotaskd`).
    case extended
    /// Only the frames of aiotask 0.0.2: `ENQUEUE` and `STATUS` out, `DONE` and `UPDATE` back. Works with any
    /// aiotask server. A task fails only when the server answers `NOT_FOUND` for it (as `aiotaskd` does, without
    /// a reason; an original server never does), with `FailureReason.unknown`; tasks are limited to
    /// ``AiotaskClient/legacyMaximumPayloadLength`` bytes; per-task timeouts, ``TaskHandle/cancel()`` and server
    /// statistics throw ``AiotaskClientError/Code/legacyProtocol``.
    case legacy
    /// The extended protocol if the server answers `HELLO` within ``automaticFallbackDelay`` (or the connect
    /// timeout, if shorter); otherwise a new connection in the ``legacy`` protocol. The extended attempt's
    /// connection is closed: the `HELLO` made it useless to an original server.
    case automatic

    /// How long ``automatic`` waits for the server's `HELLO` before it takes the server for an original one. An
    /// `aiotaskd` answers `HELLO` as soon as it reads it, on its event loop; only a stalled server takes longer.
    public static let automaticFallbackDelay: Duration = .seconds(2)
}

extension WireProtocol: CustomStringConvertible {
    public var description: String {
        switch self {
        case .extended: "extended"
        case .legacy: "legacy"
        case .automatic: "automatic"
        }
    }
}
