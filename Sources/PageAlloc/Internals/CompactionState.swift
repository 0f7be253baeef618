internal import _PageAllocUtilities
import CPageAllocShim
import Glibc
import Synchronization

// The state compaction and migration keep beside the allocator: struct zone's compact_*
// fields, the vm events they count, the sysctls, the movable-page owners, and kcompactd's
// wait queue. Kept out of `Zone` and `PageAllocator` so that the allocator's own records
// stay as they are.

/// A zone's compaction fields (`struct zone`'s `compact_cached_*`, `compact_init_*`,
/// `compact_considered`, `compact_defer_shift`, `compact_order_failed`,
/// `compact_blockskip_flush`).
///
/// The kernel reads and writes them without a lock: they are hints, and two compactions of
/// one zone may race on them harmlessly. Here they are relaxed atomics, which keeps that
/// behaviour and keeps ThreadSanitizer quiet.
@usableFromInline
struct ZoneCompaction: ~Copyable {
  /// compact_cached_migrate_pfn[0] (ASYNC) and [1] (SYNC_LIGHT and SYNC).
  let cachedMigrate0: Atomic<Int>
  let cachedMigrate1: Atomic<Int>
  /// compact_cached_free_pfn: always a pageblock start.
  let cachedFree: Atomic<Int>
  /// compact_init_migrate_pfn / compact_init_free_pfn: set by the skip-bit reset.
  let initMigrate: Atomic<Int>
  let initFree: Atomic<Int>
  let considered: Atomic<Int>
  let deferShift: Atomic<Int>
  let orderFailed: Atomic<Int>
  let blockskipFlush: Atomic<Bool>

  /// The zone's fields as `reset_cached_positions()` leaves them. The kernel zero-fills
  /// `struct zone` and lets `compact_zone()` notice out-of-range cached pfns; setting them up
  /// explicitly avoids the corner where a zone starting at pfn 0 reads a cached 0 as valid.
  init(start: Int, end: Int) {
    let free = (end - 1) & ~(PageGeometry.pageblockPages - 1)
    cachedMigrate0 = Atomic(start)
    cachedMigrate1 = Atomic(start)
    cachedFree = Atomic(free)
    initMigrate = Atomic(start)
    initFree = Atomic(free)
    considered = Atomic(0)
    deferShift = Atomic(0)
    orderFailed = Atomic(0)
    blockskipFlush = Atomic(false)
  }
}

/// The capture control of a direct compaction (`struct capture_control`), published
/// through the calling thread's `cpa_capture` while the compaction runs: a block that a
/// free by this thread merges up to `order` in `zone` is taken for the caller instead of
/// going on a free list.
struct CaptureControl {
  /// The allocator the capture is for (a thread may use several).
  var allocator: UnsafeMutableRawPointer
  /// The zone index being compacted, -1 between zones.
  var zone: Int
  var migratetype: Int
  var order: Int
  /// The captured block's head, -1 until one is captured.
  var page: Int
}

/// The vm events of compaction and migration (`enum vm_event_item`), in /proc/vmstat order.
final class CompactionCounters: Sendable {
  let pgmigrateSuccess = Atomic<Int>(0)
  let pgmigrateFail = Atomic<Int>(0)
  let thpMigrationSuccess = Atomic<Int>(0)
  let thpMigrationFail = Atomic<Int>(0)
  let thpMigrationSplit = Atomic<Int>(0)
  let compactMigrateScanned = Atomic<Int>(0)
  let compactFreeScanned = Atomic<Int>(0)
  let compactIsolated = Atomic<Int>(0)
  let compactStall = Atomic<Int>(0)
  let compactFail = Atomic<Int>(0)
  let compactSuccess = Atomic<Int>(0)
  let kcompactdWake = Atomic<Int>(0)
  let kcompactdMigrateScanned = Atomic<Int>(0)
  let kcompactdFreeScanned = Atomic<Int>(0)

  /// Every counter back to zero.
  func reset() {
    pgmigrateSuccess.store(0, ordering: .relaxed)
    pgmigrateFail.store(0, ordering: .relaxed)
    thpMigrationSuccess.store(0, ordering: .relaxed)
    thpMigrationFail.store(0, ordering: .relaxed)
    thpMigrationSplit.store(0, ordering: .relaxed)
    compactMigrateScanned.store(0, ordering: .relaxed)
    compactFreeScanned.store(0, ordering: .relaxed)
    compactIsolated.store(0, ordering: .relaxed)
    compactStall.store(0, ordering: .relaxed)
    compactFail.store(0, ordering: .relaxed)
    compactSuccess.store(0, ordering: .relaxed)
    kcompactdWake.store(0, ordering: .relaxed)
    kcompactdMigrateScanned.store(0, ordering: .relaxed)
    kcompactdFreeScanned.store(0, ordering: .relaxed)
  }
}

/// The owners of movable blocks (MovablePages.swift): for each pfn of the memmap the slot
/// of the owner of the block whose head it is (0: none), and the owners by slot, each with
/// the number of blocks it has registered (a slot is reused once that falls to zero, so an
/// owner no longer holding pages is not kept alive).
///
/// A flat array per pfn rather than a dictionary: compaction looks an owner up for every
/// movable page it isolates and moves the registration for every page it migrates, and a
/// hashed lookup into hundreds of thousands of entries misses the cache every time. The
/// array is reserved `MAP_NORESERVE`: only the parts holding registrations cost memory.
/// Everything is read and written under one mutex.
final class MovableRegistry: @unchecked Sendable {
  struct Owners {
    var list: [(owner: (any MovablePageOwner)?, blocks: Int)] = []
    var freeSlots: [Int] = []
    var slotOf: [ObjectIdentifier: Int] = [:]
    var registered = 0
  }

  let basePFN: Int
  let count: Int
  let slots: UnsafeMutablePointer<UInt32>
  let owners = LockedState(Owners())

  init(basePFN: Int, endPFN: Int) {
    self.basePFN = basePFN
    count = max(endPFN - basePFN, 1)
    let bytes = count * MemoryLayout<UInt32>.stride
    let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    guard let p, p != MAP_FAILED else { fatalError("cannot reserve the movable-page registry (\(bytes) bytes)") }
    slots = p.bindMemory(to: UInt32.self, capacity: count)
  }

  deinit { munmap(slots, count * MemoryLayout<UInt32>.stride) }

  /// Registers `owner` for the block at `pfn` (no registration there yet).
  func register(_ pfn: Int, _ owner: any MovablePageOwner) {
    owners.withLock { o in
      let id = ObjectIdentifier(owner)
      let slot: Int
      if let s = o.slotOf[id] {
        slot = s
        o.list[s].blocks += 1
      } else if let s = o.freeSlots.popLast() {
        slot = s
        o.list[s] = (owner, 1)
        o.slotOf[id] = s
      } else {
        slot = o.list.count
        o.list.append((owner, 1))
        o.slotOf[id] = slot
      }
      slots[pfn &- basePFN] = UInt32(slot &+ 1)
      o.registered += 1
    }
  }

  /// Ends the registration at `pfn`, if any.
  func remove(_ pfn: Int) {
    owners.withLock { o in Self.release(&o, pfn, slots, basePFN) }
  }

  private static func release(_ o: inout Owners, _ pfn: Int, _ slots: UnsafeMutablePointer<UInt32>, _ base: Int) {
    let v = Int(slots[pfn &- base])
    guard v != 0 else { return }
    slots[pfn &- base] = 0
    o.registered -= 1
    let s = v &- 1
    o.list[s].blocks -= 1
    if o.list[s].blocks == 0 {
      if let owner = o.list[s].owner { o.slotOf.removeValue(forKey: ObjectIdentifier(owner)) }
      o.list[s] = (nil, 0)
      o.freeSlots.append(s)
    }
  }

  /// The owner of the block at `pfn`, or nil.
  func owner(_ pfn: Int) -> (any MovablePageOwner)? {
    owners.withLock { o in
      let v = Int(slots[pfn &- basePFN])
      return v == 0 ? nil : o.list[v &- 1].owner
    }
  }

  /// A migration: the registration at `src` moves to `dst`.
  func move(_ src: Int, to dst: Int) {
    owners.withLock { _ in
      slots[dst &- basePFN] = slots[src &- basePFN]
      slots[src &- basePFN] = 0
    }
  }

  var registered: Int { owners.withLock { $0.registered } }

  /// No registration left: the owners dropped and the per-pfn slots zeroed (MADV_DONTNEED
  /// gives the private pages back, so a registry that was written costs nothing again).
  func reset() {
    owners.withLock { o in
      o = Owners()
      if madvise(slots, count * MemoryLayout<UInt32>.stride, MADV_DONTNEED) != 0 {
        memset(slots, 0, count * MemoryLayout<UInt32>.stride)
      }
    }
  }
}

/// kcompactd's node state (`pgdat->kcompactd_*`, `proactive_compact_trigger`) and its wait
/// queue: a pthread mutex and condition, so that the background thread can sleep with a
/// timeout and be woken by `wakeup_kcompactd()`.
final class KcompactdState: @unchecked Sendable {
  let mutex: UnsafeMutablePointer<pthread_mutex_t>
  let cond: UnsafeMutablePointer<pthread_cond_t>
  /// Guarded by `mutex`.
  var maxOrder = 0
  var highestZoneIdx: Int
  var proactiveTrigger = false
  var stop = false
  /// Whether the thread is waiting (`waitqueue_active()`).
  var waiting = false
  /// Woken with something to do (`kcompactd_work_requested()`).
  var woken = false
  var thread: pthread_t?

  init(highestZoneIdx: Int) {
    self.highestZoneIdx = highestZoneIdx
    mutex = .allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    pthread_mutex_init(mutex, nil)
    cond = .allocate(capacity: 1)
    cond.initialize(to: pthread_cond_t())
    var attr = pthread_condattr_t()
    pthread_condattr_init(&attr)
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
    pthread_cond_init(cond, &attr)
    pthread_condattr_destroy(&attr)
  }

  deinit {
    pthread_cond_destroy(cond)
    pthread_mutex_destroy(mutex)
    cond.deallocate()
    mutex.deallocate()
  }

  func withLock<R>(_ body: () -> R) -> R {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    return body()
  }
}

/// Everything compaction keeps per allocator.
final class CompactionState: @unchecked Sendable {
  let zones: UnsafeMutablePointer<ZoneCompaction>
  let zoneCount: Int
  let counters = CompactionCounters()
  /// CONFIG_COMPACTION for the allocation slow path: direct compaction on or off.
  let directEnabled: Atomic<Bool>
  /// vm.compaction_proactiveness (0...100).
  let proactiveness: Atomic<Int>
  /// vm.extfrag_threshold (0...1000).
  let extfragThreshold: Atomic<Int>
  /// The owners of the movable blocks.
  let owners: MovableRegistry
  let kcompactd: KcompactdState
  /// kcompactd's timeout, in milliseconds (HPAGE_FRAG_CHECK_INTERVAL_MSEC).
  let kcompactdIntervalMs: Int

  init(
    zones z: UnsafeMutablePointer<Zone>, count: Int, configuration: CompactionConfiguration, basePFN: Int,
    endPFN: Int
  ) {
    owners = MovableRegistry(basePFN: basePFN, endPFN: endPFN)
    zoneCount = count
    zones = .allocate(capacity: count)
    for i in 0..<count { (zones + i).initialize(to: ZoneCompaction(start: z[i].start, end: z[i].end)) }
    directEnabled = Atomic(configuration.directCompaction)
    proactiveness = Atomic(min(max(configuration.proactiveness, 0), 100))
    extfragThreshold = Atomic(min(max(configuration.extfragThreshold, 0), 1000))
    kcompactd = KcompactdState(highestZoneIdx: count - 1)
    kcompactdIntervalMs = max(configuration.kcompactdIntervalMilliseconds, 1)
  }

  deinit {
    zones.deinitialize(count: zoneCount)
    zones.deallocate()
  }

  /// The state of a new allocator again, for `PageAllocator.resetToBoot()`: no movable
  /// owner registered, the scanners' cached positions at the zone edges, no deferral, the
  /// counters at zero and kcompactd with nothing asked of it. (The skip bits live in the
  /// pageblock bytes, which the memmap's reset clears.)
  func resetToBoot(zones z: UnsafeMutablePointer<Zone>) {
    for i in 0..<zoneCount {
      (zones + i).deinitialize(count: 1)
      (zones + i).initialize(to: ZoneCompaction(start: z[i].start, end: z[i].end))
    }
    counters.reset()
    owners.reset()
    let k = kcompactd
    k.withLock {
      k.maxOrder = 0
      k.highestZoneIdx = zoneCount - 1
      k.proactiveTrigger = false
      k.woken = false
    }
  }
}
