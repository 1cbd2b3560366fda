import AiotaskClient

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Connects to the aiotask server given as argument, submits a few tasks at once on one connection and
/// prints each result, or the reason the task failed, as it comes back.
///
///     swift run ClientExample unix:/run/aiotask/aiotask.sock
///     swift run ClientExample tcp://127.0.0.1:4242 "first task" "second task"
@main
struct ClientExample {
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let address = arguments.first else {
            print("usage: ClientExample ADDRESS [TASK…]   (ADDRESS: unix:/path or tcp://host:port)")
            exit(2)
        }
        let tasks =
            arguments.count > 1 ? Array(arguments.dropFirst()) : ["alpha", "bravo", "charlie", "delta", "foxtrot"]

        let client: AiotaskClient
        do {
            client = try await AiotaskClient.connect(to: address, connectTimeout: .seconds(5))
        } catch {
            print("cannot connect to \(address): \(error)")
            exit(2)
        }

        // Every task is in flight at once, pipelined on the one connection; results arrive in the order the
        // tasks finish and are matched to their task by id.
        let failures = await withTaskGroup(of: (String, Result<String, any Error>).self) { group in
            for task in tasks {
                group.addTask {
                    do {
                        let result = try await client.submit(task, timeout: .seconds(30))
                        return (task, .success(String(decoding: result, as: UTF8.self)))
                    } catch {
                        return (task, .failure(error))
                    }
                }
            }
            var failures = 0
            for await (task, outcome) in group {
                switch outcome {
                case .success(let result):
                    print("\(task) -> \(result)")
                case .failure(let failure as TaskFailure):
                    failures += 1
                    print("\(task) failed: \(failure.reason): \(failure.message)")
                case .failure(let error):
                    failures += 1
                    print("\(task): \(error)")
                }
            }
            return failures
        }

        try? await client.close()
        exit(failures == 0 ? 0 : 1)
    }
}
