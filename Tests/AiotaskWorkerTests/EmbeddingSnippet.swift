import AiotaskWorker
import Logging
import ServiceLifecycle
import UnixSignals

/// Runs an aiotask server beside the application's own services, until SIGTERM or SIGINT drains them all.
func runAiotaskServer(
    _ configuration: ServerConfiguration,
    beside services: [any Service],
    logger: Logger
) async throws {
    let server = AiotaskServer(configuration: configuration, logger: logger)
    let group = ServiceGroup(
        services: [server] + services,
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger
    )
    try await group.run()
}
