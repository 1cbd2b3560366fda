import Foundation

/// Certificates made at test time with Debian's `openssl`, in a directory of the test's: certificate authorities,
/// and certificates they issue for servers and clients (valid, expired, for another name).
///
/// ```swift
/// let pki = try await TestCertificates.make(in: directory)   // the authority "ca"
/// let server = try await pki.issue("server", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"])
/// let client = try await pki.issue("client", commonName: "client-1")
/// ```
///
/// Keys are P-256 and unencrypted; nothing lives longer than two days.
public struct TestCertificates: Sendable {
    /// A certificate and its key, as PEM files.
    public struct Issued: Sendable, Hashable {
        public let certificate: String
        public let key: String
    }

    /// Where the files are.
    public let directory: String

    /// Makes the authority `ca` in `directory`.
    public static func make(in directory: String) async throws -> TestCertificates {
        let certificates = TestCertificates(directory: directory)
        try await certificates.makeAuthority("ca")
        return certificates
    }

    /// The PEM file of the authority `name`'s certificate.
    public func authority(_ name: String = "ca") -> String { "\(directory)/\(name).crt" }

    /// Makes a self-signed certificate authority named `name` (`NAME.crt`, `NAME.key`).
    @discardableResult
    public func makeAuthority(_ name: String) async throws -> String {
        try await Self.openssl(
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).crt", "-days", "2",
                "-subj", "/CN=aiotask test authority \(name)",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ]
        )
        // The state `openssl ca` keeps for the authority.
        let state = "\(directory)/\(name).db"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        try "".write(toFile: "\(state)/index.txt", atomically: true, encoding: .utf8)
        try "01\n".write(toFile: "\(state)/serial", atomically: true, encoding: .utf8)
        try """
        [ca]
        default_ca = test
        [test]
        database = \(state)/index.txt
        new_certs_dir = \(state)
        serial = \(state)/serial
        default_md = sha256
        default_days = 2
        unique_subject = no
        policy = any
        copy_extensions = copy
        [any]
        commonName = supplied
        """.write(toFile: "\(state)/openssl.cnf", atomically: true, encoding: .utf8)
        return authority(name)
    }

    /// Issues a certificate `name` (`NAME.crt`, `NAME.key`) signed by the authority `by`.
    ///
    /// - Parameters:
    ///   - commonName: the subject's CN; `name` by default.
    ///   - dnsNames, ipAddresses, emails, uris: its subject alternative names.
    ///   - expired: valid only on 1 and 2 January 2020.
    public func issue(
        _ name: String,
        commonName: String? = nil,
        dnsNames: [String] = [],
        ipAddresses: [String] = [],
        emails: [String] = [],
        uris: [String] = [],
        expired: Bool = false,
        by authorityName: String = "ca"
    ) async throws -> Issued {
        let issued = Issued(certificate: "\(directory)/\(name).crt", key: "\(directory)/\(name).key")
        let names =
            dnsNames.map { "DNS:\($0)" } + ipAddresses.map { "IP:\($0)" } + emails.map { "email:\($0)" }
            + uris.map { "URI:\($0)" }
        var request = [
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", issued.key, "-out", "\(directory)/\(name).csr", "-subj", "/CN=\(commonName ?? name)",
            "-addext", "basicConstraints=critical,CA:FALSE",
        ]
        if !names.isEmpty { request += ["-addext", "subjectAltName=" + names.joined(separator: ",")] }
        try await Self.openssl(request)
        let state = "\(directory)/\(authorityName).db"
        var signing = [
            "ca", "-batch", "-notext", "-config", "\(state)/openssl.cnf",
            "-cert", authority(authorityName), "-keyfile", "\(directory)/\(authorityName).key",
            "-in", "\(directory)/\(name).csr", "-out", issued.certificate,
        ]
        if expired { signing += ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"] }
        try await Self.openssl(signing)
        return issued
    }

    /// Runs `openssl` with `arguments`; throws its stderr when it fails.
    private static func openssl(_ arguments: [String]) async throws {
        let process = try SpawnedProcess.spawn("openssl", arguments)
        let exit = try await process.wait(limit: .seconds(30))
        guard exit == .exited(0) else {
            throw OpenSSLFailed(arguments: arguments, output: process.standardError)
        }
    }
}

/// `openssl` failed: its arguments and what it said.
public struct OpenSSLFailed: Error, CustomStringConvertible {
    public let arguments: [String]
    public let output: String

    public var description: String { "openssl \(arguments.joined(separator: " ")) failed: \(output)" }
}
