import ArgumentParser
import Testing

@testable import AiotaskServer
@testable import AiotaskWorker

/// `allow-users` and `allow-groups`: names and ids, lists, lookups in the user and group databases.
extension ConfigTests {
    @Test("allow-users and allow-groups take names and ids, repeated or separated by commas, and resolve them to ids")
    func peerLists() throws {
        let settings = try ConfigFile.parse(
            """
            allow-users = root, 4242
            allow-users = nobody
            allow_groups = root 5000,5000
            """,
            path: Self.path
        )
        #expect(settings["allow-users"] == .accounts(["root", "4242", "nobody"]))
        let configuration = try settings.configuration(handler: Self.handler)
        #expect(configuration.peerPolicy.users == [0, 4242, 65534])
        // A group listed twice counts once.
        #expect(configuration.peerPolicy.groups == [0, 5000])
        #expect(
            try ConfigFile.parse("", path: Self.path).configuration(handler: Self.handler).peerPolicy.allowsEveryone
        )
    }

    @Test("the command line's allow-users replaces the file's, and reads commas as the file does")
    func peerListsOnTheCommandLine() throws {
        let file = try ConfigFile.parse("allow-users = nobody\n", path: Self.path)
        let commandLine = try DaemonOptions.parse(["--allow-users", "root,4242", "--allow-users", "7"]).settings
        let merged = file.overridden(by: commandLine)
        #expect(merged["allow-users"] == .accounts(["root", "4242", "7"]))
        #expect(try merged.configuration(handler: Self.handler).peerPolicy.users == [0, 4242, 7])
        // Not given: the file's list stands.
        #expect(file.overridden(by: try DaemonOptions.parse([]).settings) == file)
    }

    @Test(
        "an unknown user or group, or an id that names no one, is an error of its file and line",
        arguments: [
            (
                "workers = 2\nallow-users = root, no-such-user-aiotask\n",
                "allow-users: no user named 'no-such-user-aiotask'", 2
            ),
            ("\nallow-groups = no-such-group-aiotask\n", "allow-groups: no group named 'no-such-group-aiotask'", 2),
            ("allow-users = 4294967295\n", "allow-users: 4294967295 is not a valid user id", 1),
            ("allow-groups = ,\n", "allow-groups: no group in ','", 1),
        ]
    )
    func unknownAccount(text: String, message: String, line: Int) {
        #expect {
            _ = try ConfigFile.parse(text, path: Self.path)
        } throws: { error in
            "\(error)" == "\(Self.path):\(line): \(message)"
        }
    }

    @Test("a reload reads the lists again: an allow-users change is no change that needs a restart")
    func peerListsReload() throws {
        let started = try ConfigFile.parse("allow-users = root\n", path: Self.path)
        let next = try ConfigFile.parse("allow-users = nobody\nallow-groups = root\n", path: Self.path)
        #expect(started.changesNeedingRestart(to: next).isEmpty)
        #expect(try next.configuration(handler: Self.handler).peerPolicy == PeerPolicy(users: [65534], groups: [0]))
    }
}

/// Who ``PeerPolicy`` lets in.
@Suite("Peer policy")
struct PeerPolicyTests {
    static let nobody = PeerCredentials(uid: 65534, gid: 65534, pid: 1, groups: [])

    @Test("no list lets everyone in; a list lets in its users and the members of its groups, and no one else")
    func lists() {
        #expect(PeerPolicy().allows(Self.nobody))
        #expect(PeerPolicy(users: [65534]).allows(Self.nobody))
        #expect(!PeerPolicy(users: [1000]).allows(Self.nobody))
        #expect(PeerPolicy(users: [1000], groups: [65534]).allows(Self.nobody), "its primary group")
        var member = Self.nobody
        member.groups = [27, 4242]
        #expect(PeerPolicy(groups: [4242]).allows(member), "a supplementary group")
        #expect(!PeerPolicy(groups: [4243]).allows(member))
        // A kernel without SO_PEERGROUPS: only the primary group is known.
        member.groups = nil
        #expect(!PeerPolicy(groups: [4242]).allows(member))
    }

    @Test("root is let in only when listed")
    func root() {
        let root = PeerCredentials(uid: 0, gid: 0, pid: 1, groups: [0])
        #expect(!PeerPolicy(users: [65534]).allows(root))
        #expect(!PeerPolicy(groups: [65534]).allows(root))
        #expect(PeerPolicy(users: [0]).allows(root))
        #expect(PeerPolicy(users: [65534], groups: [0]).allows(root))
    }
}
