import Glibc

/// A value guarded by a `pthread_mutex_t`.
///
/// PageAlloc uses this instead of `Synchronization.Mutex` for its side tables (reports,
/// the trace sink, fault injection, VMalloc's areas) because ThreadSanitizer intercepts
/// `pthread_mutex_lock`, but does not see the stdlib Mutex's futex fast path, and so
/// reports every access under a `Mutex` as a race (`swift test --sanitize=thread`).
/// The lock is taken for short table updates only (no syscalls inside).
package final class LockedState<State> {
  @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
  @usableFromInline var value: State

  package init(_ value: State) {
    mutex = .allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    pthread_mutex_init(mutex, nil)
    self.value = value
  }

  deinit {
    pthread_mutex_destroy(mutex)
    mutex.deallocate()
  }

  @inlinable @inline(__always)
  package func withLock<R: ~Copyable, E: Error>(_ body: (inout State) throws(E) -> R) throws(E) -> R {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    return try body(&value)
  }
}

// The state is only reached under the mutex, so the box may cross threads whenever the
// state itself may.
extension LockedState: @unchecked Sendable where State: Sendable {}
