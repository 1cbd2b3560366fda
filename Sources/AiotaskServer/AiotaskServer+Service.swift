import ServiceLifecycle

extension AiotaskServer: Service {
    /// Starts the server unless ``start(configuration:logger:eventLoop:)`` did, serves until graceful shutdown or
    /// cancellation, then drains and returns.
    ///
    /// Draining is ``shutdown()``: new tasks are refused as `shuttingDown`, the tasks in flight get their results
    /// within the configuration's drain timeout, and what is left then is failed. A cancelled run drains the same
    /// way, so that a sibling service failing in a `ServiceGroup` loses no task that could still finish. A server
    /// drained before by ``shutdown()`` stays stopped, and this returns once told to.
    ///
    /// - Throws: what ``start(configuration:logger:eventLoop:)`` throws when the server cannot start.
    public func run() async throws {
        try await startIfCreated()
        await withTaskCancellationOrGracefulShutdownHandler {
            await stopRequested.wait()
        } onCancelOrGracefulShutdown: { [stopRequested] in
            stopRequested.signal()
        }
        try await shutdown()
    }
}
