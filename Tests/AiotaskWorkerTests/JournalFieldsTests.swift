import Logging
import Systemd
import Testing

/// How log events become journal fields; journald silently drops fields with invalid names.
@Suite("Journal fields")
struct JournalFieldsTests {
    @Test(
        "metadata keys become valid field names",
        arguments: [
            ("task_id", "TASK_ID"),
            ("workerPid", "WORKERPID"),
            ("worker-pid", "WORKER_PID"),
            ("http.status.code", "HTTP_STATUS_CODE"),
            ("a b/c:d", "A_B_C_D"),
            ("TASK_ID", "TASK_ID"),
            ("slot2", "SLOT2"),
            ("_hidden", "HIDDEN"),
            ("__SYSTEMD_UNIT", "SYSTEMD_UNIT"),
            ("9lives", "LIVES"),
            ("_1_2_x", "X"),
            ("-leading-dash", "LEADING_DASH"),
            ("é", nil),
            ("", nil),
            ("___", nil),
            ("123", nil),
            ("-.-", nil),
        ] as [(String, String?)]
    )
    func fieldName(key: String, expected: String?) {
        #expect(JournalFields.fieldName(for: key) == expected)
    }

    @Test("every produced name is [A-Z0-9_], starts with a letter and has at most 64 characters")
    func namesAreValid() {
        let keys = ["x", "ünïcödé-kéy", "a.b-c d", "__9x", String(repeating: "k", count: 200), "ß"]
        for key in keys {
            guard let name = JournalFields.fieldName(for: key) else {
                Issue.record("no name for \(key)")
                continue
            }
            #expect(name.count <= 64)
            #expect(
                name.unicodeScalars.allSatisfy { ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" }
            )
            #expect(name.first.map { ("A"..."Z").contains($0) } == true, "\(name)")
        }
    }

    @Test("names are capped at 64 characters, after the leading underscores and digits are dropped")
    func lengthCap() {
        let long = String(repeating: "a", count: 100)
        #expect(JournalFields.fieldName(for: long) == String(repeating: "A", count: 64))
        #expect(JournalFields.fieldName(for: "___123" + long) == String(repeating: "A", count: 64))
        let exact = String(repeating: "b", count: 64)
        #expect(JournalFields.fieldName(for: exact) == exact.uppercased())
    }

    @Test(
        "log levels map to syslog priorities",
        arguments: [
            (Logger.Level.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2),
        ]
    )
    func priority(level: Logger.Level, expected: Int) {
        #expect(JournalFields.priority(of: level) == expected)
    }

    @Test("standard fields come first, in order, then the metadata sorted by key")
    func ordering() {
        let fields = JournalFields.fields(
            message: "task done",
            level: .notice,
            identifier: "aiotaskd",
            metadata: ["worker_pid": "42", "task-id": "7f", "duration": "0.25", "slot": "1"],
            file: "Supervisor.swift",
            function: "finish(_:)",
            line: 224
        )
        #expect(
            fields.map(\.name) == [
                "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
                "DURATION", "SLOT", "TASK_ID", "WORKER_PID",
            ]
        )
        #expect(
            fields.map(\.value) == [
                "task done", "5", "aiotaskd", "Supervisor.swift", "224", "finish(_:)", "0.25", "1", "7f", "42",
            ]
        )
    }

    @Test("metadata cannot replace a standard field, and keys without a valid name are left out")
    func reservedNames() {
        let fields = JournalFields.fields(
            message: "real message",
            level: .error,
            identifier: "aiotaskd",
            metadata: [
                "message": "forged", "priority": "0", "syslog_identifier": "other", "_message": "forged too",
                "code-file": "elsewhere", "CODE_LINE": "1", "code.func": "f", "___": "nameless", "": "empty",
                "task_id": "kept",
            ],
            file: "Daemon.swift",
            function: "run()",
            line: 10
        )
        #expect(
            fields.map(\.name) == [
                "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "TASK_ID",
            ]
        )
        #expect(fields.first { $0.name == "MESSAGE" }?.value == "real message")
        #expect(fields.first { $0.name == "PRIORITY" }?.value == "3")
        #expect(fields.first { $0.name == "SYSLOG_IDENTIFIER" }?.value == "aiotaskd")
        #expect(fields.filter { $0.name == "MESSAGE" }.count == 1)
    }

    @Test("metadata values are rendered as text, nested values included")
    func values() {
        let fields = JournalFields.fields(
            message: "m",
            level: .info,
            identifier: "aiotaskd",
            metadata: ["count": .stringConvertible(3), "list": ["a", "b"]],
            file: "f",
            function: "g",
            line: 1
        )
        #expect(fields.first { $0.name == "COUNT" }?.value == "3")
        #expect(fields.first { $0.name == "LIST" }?.value == "\(Logger.MetadataValue.array(["a", "b"]))")
    }
}
