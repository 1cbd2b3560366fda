// swift-tools-version: 6.1
import PackageDescription

// libFuzzer targets for aiotask, kept out of the main package so that they are built only on purpose, with
// `-sanitize=fuzzer`. See README.md.
let package = Package(
    name: "AiotaskFuzz",
    dependencies: [
        .package(name: "aiotask", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "FuzzFrameDecoder",
            dependencies: [
                .product(name: "AiotaskProtocol", package: "aiotask"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    ]
)
