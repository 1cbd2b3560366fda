import CAiotaskShims
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// Who is at the other end of a Unix socket connection, as the kernel recorded it when the client connected
/// (`SO_PEERCRED`, `SO_PEERGROUPS`): neither the client nor a later change of its process can alter it.
struct PeerCredentials: Equatable, Sendable {
    /// The client's effective user id when it connected.
    var uid: UInt32
    /// The client's effective group id when it connected.
    var gid: UInt32
    /// The client's process id when it connected (it may have exited since).
    var pid: Int32
    /// The client's supplementary groups when it connected; nil when the kernel cannot say (`SO_PEERGROUPS`
    /// needs Linux 4.13), in which case only ``gid`` counts.
    var groups: [UInt32]?

    /// The credentials of the peer of the socket `descriptor`; nil when it is not a Unix socket (TCP).
    ///
    /// Read once per connection, when it opens: the task path never touches them.
    ///
    /// - Throws: The `errno` of a failed `getsockname` or `getsockopt`.
    static func read(descriptor: Int32) throws(PeerCredentialsError) -> PeerCredentials? {
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        var pid: Int32 = 0
        let status = aiotask_peer_credentials(descriptor, &uid, &gid, &pid)
        guard status != 1 else { return nil }
        guard status == 0 else { throw PeerCredentialsError(errno: -status) }
        return PeerCredentials(uid: uid, gid: gid, pid: pid, groups: readGroups(descriptor: descriptor))
    }

    /// The peer's supplementary groups, or nil when the kernel cannot say.
    private static func readGroups(descriptor: Int32) -> [UInt32]? {
        var capacity = 64
        // The groups can only have been fixed when the peer connected, so two rounds suffice; a third is a margin.
        for _ in 0..<3 {
            var groups = [UInt32](repeating: 0, count: capacity)
            let count = aiotask_peer_groups(descriptor, &groups, Int32(capacity))
            guard count >= 0 else { return nil }
            if Int(count) <= capacity { return Array(groups.prefix(Int(count))) }
            capacity = Int(count)
        }
        return nil
    }

    /// The journal fields of every entry about this client's connection and tasks: `CLIENT_UID`, `CLIENT_GID`,
    /// `CLIENT_PID`.
    var metadata: Logger.Metadata {
        ["client_uid": "\(uid)", "client_gid": "\(gid)", "client_pid": "\(pid)"]
    }
}

/// The credentials of a Unix socket's peer could not be read.
struct PeerCredentialsError: Error, CustomStringConvertible {
    var errno: Int32

    var description: String { String(cString: strerror(errno)) }
}

/// Which local users may use the server over a Unix socket (`allow-users`, `allow-groups`).
///
/// Both lists empty, the default, lets in everyone the socket's file mode lets connect. Otherwise a client is let in
/// when its user is in ``users``, or its group or one of its supplementary groups is in ``groups``. Root is not
/// special: it is let in only when listed (as `root` or `0`), as php-fpm's `listen.acl_users` does; the file mode
/// does not stop root, so this is the only thing that can.
public struct PeerPolicy: Equatable, Sendable {
    /// User ids let in.
    public var users: [UInt32]
    /// Group ids let in, as the primary group or a supplementary one.
    public var groups: [UInt32]

    public init(users: [UInt32] = [], groups: [UInt32] = []) {
        self.users = users
        self.groups = groups
    }

    /// Whether everyone the socket's file mode lets connect is let in.
    public var allowsEveryone: Bool { users.isEmpty && groups.isEmpty }

    /// Whether a client with these credentials is let in.
    func allows(_ peer: PeerCredentials) -> Bool {
        if allowsEveryone || users.contains(peer.uid) || groups.contains(peer.gid) { return true }
        return peer.groups?.contains(where: groups.contains) ?? false
    }
}
