/// The version of aiotask these libraries and programs belong to.
///
/// It lives here, in the module every aiotask library and program links, so that the client CLI (which does not
/// link `AiotaskWorker`) and the daemon report the same version.
public enum AiotaskVersion {
    public static let current = "0.1.0"
}
