import Glibc
import Synchronization

/// `pthread_create` failed: the threads created before the failure ran their bodies and
/// were joined; the others never started.
package struct ThreadSpawnError: Error, CustomStringConvertible {
  package var code: Int32
  package var description: String { "pthread_create failed (\(code))" }
}

/// Runs `body(i)` for i in 0..<count, each on a new POSIX thread, and waits for all of them.
///
/// The threads start together: each one waits at a barrier until all `count` exist, so
/// the bodies really overlap instead of running one after the other while the rest are
/// still being created. POSIX threads rather than tasks: the allocator's per-CPU state is
/// chosen per thread, and the cooperative pool would serialize the workers.
package func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) throws(ThreadSpawnError) {
  final class Start: @unchecked Sendable {
    let body: @Sendable (Int) -> Void
    let index: Int
    let gate: Gate
    init(_ body: @escaping @Sendable (Int) -> Void, _ index: Int, _ gate: Gate) {
      self.body = body
      self.index = index
      self.gate = gate
    }
  }
  final class Gate: Sendable {
    let waiting: Atomic<Int>
    let open = Atomic<Bool>(false)
    init(_ n: Int) { waiting = Atomic(n) }
  }
  let gate = Gate(count)
  var threads: [pthread_t] = []
  for i in 0..<count {
    let arg = Unmanaged.passRetained(Start(body, i, gate)).toOpaque()
    var t = pthread_t()
    let rc = pthread_create(
      &t, nil,
      { raw in
        let s = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
        if s.gate.waiting.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
          s.gate.open.store(true, ordering: .releasing)
        }
        while !s.gate.open.load(ordering: .acquiring) { sched_yield() }
        s.body(s.index)
        return nil
      }, arg)
    if rc != 0 {
      Unmanaged<Start>.fromOpaque(arg).release()
      // Let the threads already created run, then report.
      gate.open.store(true, ordering: .releasing)
      for t in threads { pthread_join(t, nil) }
      throw ThreadSpawnError(code: rc)
    }
    threads.append(t)
  }
  for t in threads { pthread_join(t, nil) }
}
