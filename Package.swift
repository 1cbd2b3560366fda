// swift-tools-version: 6.1
import PackageDescription

let upcomingFeatures: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "aiotask",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "AiotaskProtocol", targets: ["AiotaskProtocol"]),
        .library(name: "AiotaskClient", targets: ["AiotaskClient"]),
        .library(name: "AiotaskServer", targets: ["AiotaskServer"]),
        .library(name: "AiotaskWorker", targets: ["AiotaskWorker"]),
        // The tests' helpers, for the Benchmarks/ package (its daemons and load runs start as `SpawnedProcess`es, the
        // one child-process type); nothing shipped depends on it.
        .library(name: "AiotaskTestSupport", targets: ["AiotaskTestSupport"]),
        .executable(name: "aiotaskd", targets: ["aiotaskd"]),
        .executable(name: "aiotask", targets: ["aiotask"]),
        .executable(name: "aiotask-example-worker", targets: ["ExampleWorker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        // TLS for `tls://` addresses (server listeners and the client). BoringSSL compiles with it.
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // The client's trace propagation: a submit made inside a traced context carries its traceparent.
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        // Only `swift package generate-documentation` (scripts/build-docs) uses it. `swift build` compiles just the
        // plugin's two small scripts; its tools (SymbolKit, snippet-extract) are built when the plugin runs.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // The wire format only: frames, codes, their encoder and decoders, task ids, addresses, INFO, the
        // handler-link framing, the version. No channel, no allocator, no event loop.
        .target(
            name: "AiotaskProtocol",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: upcomingFeatures
        ),
        // The NIO glue that the client, the server and the pool links share: stream decoding (InboundStream), direct
        // frame reads, the coalescing frame writer, the fast-copy allocator, the malloc tuning. Internal (no product): what crosses into the other targets
        // is `package`.
        .target(
            name: "AiotaskTransport",
            dependencies: [
                "AiotaskProtocol",
                // glibc's malloc settings (MemoryTuning); Linux only, so that the client library builds elsewhere.
                .target(name: "CAiotaskShims", condition: .when(platforms: [.linux])),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "AiotaskClient",
            dependencies: [
                "AiotaskProtocol",
                "AiotaskTransport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // AiotaskClientPool: a Service with a Logger.
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // A client span around each submit made in a traced context, and its W3C traceparent on the wire.
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                // `tls://` addresses; NIOTLS for the handshake's event.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(name: "CAiotaskShims"),
        // The one way aiotask starts a child process (pool processes, and the tests' programs): its own process
        // group, chosen descriptors only, its exit watched through a pidfd instead of a thread per child.
        .target(
            name: "AiotaskChildProcess",
            dependencies: [
                "CAiotaskShims",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: upcomingFeatures
        ),
        // The sha256 built-in handler's digest, from the system's OpenSSL: the same SHA-NI and AVX2 code as a
        // vendored BoringSSL, without compiling one more copy of it in every build (swift-nio-ssl brings its own).
        .systemLibrary(
            name: "CLibcrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        .target(
            name: "Systemd",
            dependencies: [
                "CSystemd",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        // The embeddable server: connections, scheduling, the pool and its processes, the link to a pool process.
        // No command line, no systemd, no exit: an application runs it as one service among its own.
        .target(
            name: "AiotaskServer",
            dependencies: [
                "AiotaskProtocol",
                "AiotaskTransport",
                "AiotaskChildProcess",
                "CAiotaskShims",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // The metrics listener's HTTP/1.1 (Metrics/).
                .product(name: "NIOHTTP1", package: "swift-nio"),
                // The `tls://` listeners; NIOTLS for the handshake's event.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: upcomingFeatures
        ),
        // What a handler author imports: `Daemon.main { … }`, the daemon shell around the server (settings, config
        // file, command line, systemd lifecycle) and the pool-process runtime. Re-exports AiotaskServer.
        .target(
            name: "AiotaskWorker",
            dependencies: [
                "AiotaskProtocol",
                "AiotaskServer",
                "AiotaskTransport",
                "CAiotaskShims",
                "Systemd",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                // The TLS settings' PEM files, read as the settings are.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "aiotaskd",
            dependencies: [
                "AiotaskWorker",
                "CLibcrypto",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        // The command-line client; its `bench` is a load generator against a given server. The benchmark suite, which
        // starts its own daemons, is the package in Benchmarks/.
        .executableTarget(
            name: "aiotask",
            dependencies: [
                "AiotaskClient",
                "AiotaskProtocol",
                "AiotaskTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "ExampleWorker",
            dependencies: ["AiotaskWorker"],
            path: "Examples/ExampleWorker",
            swiftSettings: upcomingFeatures
        ),
        // Helpers of the tests only: no shipped target depends on it.
        .target(
            name: "AiotaskTestSupport",
            dependencies: [
                "AiotaskChildProcess",
                "CAiotaskShims",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "Tests/AiotaskTestSupport",
            swiftSettings: upcomingFeatures
        ),
        .testTarget(
            name: "AiotaskProtocolTests",
            dependencies: [
                "AiotaskProtocol",
                "AiotaskTestSupport",
                "AiotaskTransport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            // Inputs replayed by FrameDecoderMutationTests, read from the source tree.
            exclude: ["FuzzCorpus"],
            swiftSettings: upcomingFeatures
        ),
        .testTarget(
            name: "AiotaskClientTests",
            dependencies: [
                "AiotaskClient",
                // `aiotask top`'s view model (TopViewTests).
                "aiotask",
                "AiotaskProtocol",
                "AiotaskTestSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // ClientTraceTests: the client's span and the TRACE_CONTEXT it sends.
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .testTarget(
            name: "AiotaskWorkerTests",
            dependencies: [
                "AiotaskWorker",
                "AiotaskServer",
                "AiotaskChildProcess",
                "AiotaskClient",
                "AiotaskTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                // MetricsReporterTests: a swift-prometheus registry as the application's metrics backend.
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // TracePropagationTests: a client span and the daemon's journal entry share the trace id.
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                // TLSTests: the server's TLS contexts and the client's handshake errors.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                "aiotaskd",
                "aiotask",
                "ExampleWorker",
            ],
            swiftSettings: upcomingFeatures
        ),
    ]
)
