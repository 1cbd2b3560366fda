/// The program the pool starts for each of its processes.
public struct ProcessCommand: Hashable, Sendable {
    /// Absolute path of the executable.
    public var executable: String
    /// Arguments after `argv[0]`.
    public var arguments: [String]
    /// Variables added to (or replacing those of) the supervisor's environment.
    public var environment: [String: String]
    /// How logs and `aiotask status` name the handler.
    public var displayName: String

    public init(executable: String, arguments: [String] = [], environment: [String: String] = [:], displayName: String)
    {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.displayName = displayName
    }

    /// Whether the process runs a Swift handler of this library (`PoolProcessRole.handler` in AiotaskWorker), which claims its tasks
    /// (see ``TaskClaims``); an external program does not.
    var runsSwiftHandler: Bool {
        environment[PoolProcessEnvironment.roleKey] == PoolProcessEnvironment.handlerRole
    }

    /// The running executable, re-executed as a pool process that runs its Swift handler.
    public static func currentExecutable(environment: [String: String] = [:], displayName: String) -> ProcessCommand {
        var environment = environment
        environment[PoolProcessEnvironment.roleKey] = PoolProcessEnvironment.handlerRole
        return ProcessCommand(
            executable: PoolProcessEnvironment.currentExecutablePath,
            environment: environment,
            displayName: displayName
        )
    }

    /// An external handler program speaking docs/handler-protocol.md on its stdin and stdout.
    ///
    /// It is started through the running executable, which arms the parent-death signal and then `exec`s it,
    /// so the program dies with the supervisor like every other pool process.
    public static func external(program: String, arguments: [String]) -> ProcessCommand {
        let environment = [PoolProcessEnvironment.roleKey: PoolProcessEnvironment.execRole]
        return ProcessCommand(
            executable: PoolProcessEnvironment.currentExecutablePath,
            arguments: [program] + arguments,
            environment: environment,
            displayName: "exec:" + ([program] + arguments).joined(separator: " ")
        )
    }
}
