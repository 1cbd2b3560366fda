// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "ClientExample",
    platforms: [.macOS(.v15)],
    dependencies: [
        // The aiotask package at the top of this repository. In a project of your own, depend on it by
        // its git URL and version instead.
        .package(name: "aiotask", path: "../..")
    ],
    targets: [
        .executableTarget(
            name: "ClientExample",
            dependencies: [.product(name: "AiotaskClient", package: "aiotask")]
        )
    ]
)
