/// A setting with a value that cannot be used.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    /// The setting's name, as in the config file.
    public var setting: String
    /// What is wrong with its value.
    public var reason: String
    /// Where it was read, such as `/etc/aiotask/aiotaskd.conf:12`, if from a file.
    public var location: String?

    public init(setting: String, reason: String, location: String? = nil) {
        self.setting = setting
        self.reason = reason
        self.location = location
    }

    public var description: String {
        let place = location.map { "\($0): " } ?? ""
        return "\(place)\(setting): \(reason)"
    }
}
