import NIOSSL

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The files of the TLS settings: where a path points, and their PEM contents, with errors that name the setting
/// and the file.
enum CredentialFile {
    /// The directory systemd puts `LoadCredential=` files in, for the service's processes only.
    static let credentialsDirectoryVariable = "CREDENTIALS_DIRECTORY"

    /// `path` as given when absolute; a relative one in `$CREDENTIALS_DIRECTORY`.
    static func resolve(_ path: String, setting: String) throws(ConfigurationError) -> String {
        guard !path.isEmpty else { throw ConfigurationError(setting: setting, reason: "no file named") }
        if path.hasPrefix("/") { return path }
        guard let directory = getenv(credentialsDirectoryVariable).map({ String(cString: $0) }), !directory.isEmpty
        else {
            throw ConfigurationError(
                setting: setting,
                reason: "'\(path)' is a relative path and $\(credentialsDirectoryVariable) is not set: give an "
                    + "absolute path, or load the file with systemd's LoadCredential="
            )
        }
        return directory + "/" + path
    }

    /// The certificates of the PEM file at `path`, at least one.
    static func certificates(at path: String, setting: String) throws(ConfigurationError) -> [NIOSSLCertificate] {
        let bytes = try contents(of: path, setting: setting)
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMBytes(bytes)
        } catch {
            throw ConfigurationError(setting: setting, reason: "\(path) is not a PEM certificate file: \(error)")
        }
        guard !certificates.isEmpty else {
            throw ConfigurationError(setting: setting, reason: "\(path) holds no PEM certificate")
        }
        return certificates
    }

    /// The private key of the PEM file at `path`.
    static func privateKey(at path: String, setting: String) throws(ConfigurationError) -> NIOSSLPrivateKey {
        let bytes = try contents(of: path, setting: setting)
        do {
            return try NIOSSLPrivateKey(bytes: bytes, format: .pem)
        } catch {
            throw ConfigurationError(
                setting: setting,
                reason: "\(path) is not an unencrypted PEM private key: \(error)"
            )
        }
    }

    /// The bytes of the file at `path`.
    private static func contents(of path: String, setting: String) throws(ConfigurationError) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw ConfigurationError(setting: setting, reason: "cannot read \(path): \(errorText(errno))")
        }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else {
                throw ConfigurationError(setting: setting, reason: "cannot read \(path): \(errorText(errno))")
            }
            if count == 0 { return bytes }
            bytes += chunk[..<count]
            // A certificate bundle is kilobytes; a path to something else must not fill the memory.
            guard bytes.count <= 16 << 20 else {
                throw ConfigurationError(setting: setting, reason: "\(path) is larger than 16 MiB: not a PEM file")
            }
        }
    }

    private static func errorText(_ code: Int32) -> String {
        let text = String(cString: strerror(code))
        return text.prefix(1).lowercased() + text.dropFirst()
    }
}
