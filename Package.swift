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
        .library(name: "AiotaskWorker", targets: ["AiotaskWorker"]),
        .executable(name: "aiotaskd", targets: ["aiotaskd"]),
        .executable(name: "aiotask", targets: ["aiotask"]),
        .executable(name: "aiotask-example-worker", targets: ["ExampleWorker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        // Only `swift package generate-documentation` (scripts/build-docs) uses it. `swift build` compiles just the
        // plugin's two small scripts; its tools (SymbolKit, snippet-extract) are built when the plugin runs.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(
            name: "AiotaskProtocol",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "AiotaskClient",
            dependencies: [
                "AiotaskProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(name: "CAiotaskShims"),
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
        .target(
            name: "AiotaskWorker",
            dependencies: [
                "AiotaskProtocol",
                "CAiotaskShims",
                "Systemd",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "aiotaskd",
            dependencies: [
                "AiotaskWorker",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "aiotask",
            dependencies: [
                "AiotaskClient",
                "AiotaskProtocol",
                "CAiotaskShims",
                "AiotaskTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
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
        .target(
            name: "AiotaskTestSupport",
            dependencies: [.product(name: "NIOConcurrencyHelpers", package: "swift-nio")],
            path: "Tests/AiotaskTestSupport",
            swiftSettings: upcomingFeatures
        ),
        .testTarget(
            name: "AiotaskProtocolTests",
            dependencies: [
                "AiotaskProtocol",
                "AiotaskTestSupport",
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
                "AiotaskProtocol",
                "AiotaskTestSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .testTarget(
            name: "AiotaskWorkerTests",
            dependencies: [
                "AiotaskWorker",
                "AiotaskClient",
                "AiotaskTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                "aiotaskd",
                "aiotask",
                "ExampleWorker",
            ],
            swiftSettings: upcomingFeatures
        ),
    ]
)
