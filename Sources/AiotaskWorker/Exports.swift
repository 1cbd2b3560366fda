// A handler author imports AiotaskWorker alone; the server's types it names (`AiotaskServer`,
// `ServerConfiguration`, `ProcessCommand`, …) come with it, as they did before the server had a module of its own.
@_exported import AiotaskServer
