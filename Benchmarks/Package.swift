// swift-tools-version: 6.1
import PackageDescription

// The benchmark suite of aiotask, kept out of the main package so that nothing shipped carries it (as swift-nio keeps
// its Benchmarks/). `aiotask-bench` starts aiotaskd processes of its own, measures every performance figure with the
// shipped `aiotask bench` load generator, and prints one table against the targets; see docs/performance.md.
//
//   swift build -c release
//   swift build -c release --package-path Benchmarks --scratch-path .build/benchmarks --product aiotask-bench
//   .build/benchmarks/release/aiotask-bench --repeat 5
//
// It has a build folder of its own (`.build/benchmarks`): built in the root's folder, a clean clone's first build
// failed with "no target named aiotask-bench in build description" (SwiftPM 6.3 re-resolved the shared checkouts).
let package = Package(
    name: "AiotaskBenchmarks",
    platforms: [.macOS(.v15)],
    products: [.executable(name: "aiotask-bench", targets: ["AiotaskBench"])],
    dependencies: [
        .package(name: "aiotask", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "AiotaskBench",
            dependencies: [
                .product(name: "AiotaskClient", package: "aiotask"),
                .product(name: "AiotaskProtocol", package: "aiotask"),
                .product(name: "AiotaskTestSupport", package: "aiotask"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [
                .enableUpcomingFeature("ExistentialAny"),
                .enableUpcomingFeature("MemberImportVisibility"),
            ]
        )
    ]
)
