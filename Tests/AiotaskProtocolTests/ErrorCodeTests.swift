import AiotaskProtocol
import Testing

/// The public errors of the wire format are structs around a code, as `AiotaskClientError` is: a caller switches on
/// the code, and the old case names still make the errors.
@Suite("Codes of the protocol's errors")
struct ErrorCodeTests {
    @Test("a protocol error carries its code and what the code has, and switches on the code")
    func protocolErrorCode() {
        let error = ProtocolError.frameTooLarge(.submit, length: 70_000, limit: 65_536)
        #expect(error.code == .frameTooLarge)
        #expect(error.frameType == .submit)
        #expect(error.length == 70_000)
        #expect(error.limit == 65_536)
        #expect(error != ProtocolError.frameTooLarge(.submit, length: 70_001, limit: 65_536))
        let kind: String =
            switch ProtocolError.truncatedStream(bytesLeft: 3).code {
            case .truncatedStream: "truncated"
            default: "other"
            }
        #expect(kind == "truncated")
        #expect(ProtocolError.unknownFrameType(9).typeByte == 9)
        #expect(ProtocolError.malformedFrame(.update, reason: "short").reason == "short")
        #expect(ProtocolError.payloadExceedsLegacyFrame(.done, length: 70_000).code == .payloadExceedsLegacyFrame)
        #expect("\(ProtocolError.Code.malformedFrame)" == "malformed frame")
    }

    @Test("a handler framing error carries its code and what the code has")
    func handlerFramingErrorCode() {
        let error = HandlerFramingError.replyTooLarge(length: 10, limit: 4)
        #expect(error.code == .replyTooLarge)
        #expect(error.length == 10 && error.limit == 4)
        #expect(HandlerFramingError.unknownReplyKind(7).kind == 7)
        #expect(HandlerFramingError.truncated(bytesLeft: 2).bytesLeft == 2)
        #expect(HandlerFramingError.requestTooLarge(length: 5, limit: 4).code == .requestTooLarge)
        #expect(HandlerFramingError.requestTooLarge(length: 5, limit: 4) != .replyTooLarge(length: 5, limit: 4))
    }

    @Test(
        "an address error's code names the part of the address that is wrong",
        arguments: [
            ("http://x:1", AddressError.Code.unknownScheme),
            ("unix:", .invalidSocketPath),
            ("unix:/" + String(repeating: "p", count: 107), .invalidSocketPath),
            ("tcp://:80", .invalidHost),
            ("tcp://[::1:80", .invalidHost),
            ("tcp://::1:80", .invalidHost),
            ("tcp://localhost", .invalidPort),
            ("tcp://[::1]", .invalidPort),
            ("tcp://localhost:70000", .invalidPort),
        ]
    )
    func addressErrorCode(_ text: String, _ code: AddressError.Code) {
        do {
            _ = try ServerAddress(parsing: text)
            Issue.record("\(text) parsed")
        } catch {
            #expect(error.code == code)
        }
    }
}
