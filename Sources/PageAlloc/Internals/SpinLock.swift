import CPageAllocShim
import Glibc
import Synchronization

/// A lock word in raw memory: the zone lock and the per-CPU page lock.
///
/// Models the kernel's `spinlock_t` as used by `zone->lock` and `pcp->lock`: a test-and-set
/// word with `tryLock` (the kernel's `pcp_spin_trylock`). User space cannot disable
/// preemption, so a waiter spins briefly and then yields the CPU instead of burning it
/// while a preempted holder sleeps.
@usableFromInline
struct SpinLock: ~Copyable {
  @usableFromInline let word: Atomic<UInt32>

  @inlinable @inline(__always)
  func tryLock() -> Bool {
    word.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged
  }

  @inlinable @inline(__always)
  func lock() {
    if _fastPath(tryLock()) { return }
    lockSlow()
  }

  @usableFromInline @inline(never)
  func lockSlow() {
    var spins = 0
    while true {
      if word.load(ordering: .relaxed) == 0 && tryLock() { return }
      spins &+= 1
      if spins < 64 {
        // A short busy wait, since the holder is usually running on another CPU. No pause
        // hint (the kernel's cpu_relax()): measured on a 2-vCPU AMD VM, with it a waiter
        // notices the release too late and loses the lock again to a holder that frees
        // and retakes it at once; two threads of zone-locked order-0 pairs ran at
        // 184-270 ns a pair with the hint against 76-93 ns without (`bench order0`,
        // bypass-threads-2), with nothing else changed.
      } else {
        sched_yield()
      }
    }
  }

  @inlinable @inline(__always)
  func unlock() {
    word.store(0, ordering: .releasing)
  }

  /// Whether the lock is held by anyone (for assertions).
  var isLocked: Bool { word.load(ordering: .relaxed) != 0 }
}
