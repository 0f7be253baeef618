internal import _PageAllocUtilities
import Glibc
import Synchronization

// Movable pages: a block whose owner can follow it when it moves, the kernel's
// `struct movable_operations` (include/linux/migrate.h). An owner registers an allocated
// block; compaction and contiguous-range allocation may then isolate it, copy its bytes to
// a new block, and ask the owner to repoint its references (PageAllocator+Migrate.swift).
// Every other page in use stays where it is.

/// How hard a migration may try: the kernel's `enum migrate_mode`.
public enum MigrationMode: Int, Sendable, Hashable, Comparable, CustomStringConvertible {
  /// MIGRATE_ASYNC: the first direct compaction attempt; never waits.
  case async = 0
  /// MIGRATE_SYNC_LIGHT: later direct compaction, kcompactd, proactive compaction.
  case syncLight = 1
  /// MIGRATE_SYNC: `compactAll()` and contiguous-range allocation.
  case sync = 2

  public static func < (a: MigrationMode, b: MigrationMode) -> Bool { a.rawValue < b.rawValue }

  /// The name the `mm_migrate_pages` trace prints.
  public var description: String {
    switch self {
    case .async: "MIGRATE_ASYNC"
    case .syncLight: "MIGRATE_SYNC_LIGHT"
    case .sync: "MIGRATE_SYNC"
    }
  }
}

/// What an owner's ``MovablePageOwner/migratePage(from:to:order:mode:)`` answers.
public enum MigrationResult: Sendable, Hashable {
  /// MIGRATEPAGE_SUCCESS: the owner uses the new block from now on.
  case success
  /// -EAGAIN: not now; the migration is tried again (up to 10 passes for asynchronous
  /// migration, 3 + 7 for synchronous), then given up and the page put back.
  case again
  /// Any other error: given up at once, the page put back.
  case failure
}

/// The owner of movable blocks: the kernel's `movable_operations` (isolate_page,
/// migrate_page, putback_page).
///
/// An owner registers a block it allocated with ``PageAllocator/allocPages(order:gfp:owner:)``
/// or ``PageAllocator/setMovable(_:order:owner:)``. From then on compaction and
/// ``PageAllocator/allocContigRange(_:gfp:)`` may move it:
///
/// 1. ``isolatePage(_:order:mode:)``: may the block move now? Answer `false` while you
///    are using its bytes (the kernel's pinned page): it stays where it is. After `true`,
///    do not write to the block until one of the two calls below ends the isolation.
/// 2. The allocator copies the block's bytes (`4096 << order`) to a new block, then calls
///    ``migratePage(from:to:order:mode:)``: repoint every reference from the old pfn to the
///    new one and answer ``MigrationResult/success``; the old block is then freed and the
///    registration follows the new one. ``MigrationResult/again`` asks for a later retry;
///    ``MigrationResult/failure`` gives up.
/// 3. ``putBackPage(_:order:)``: the migration was given up; the block is yours again,
///    where it was.
///
/// References: the owner holds the block's one reference (refcount 1) and frees it with
/// ``PageAllocator/freePages(_:order:)`` as usual, which also ends the registration. A
/// block with more references (``PageAllocator/getPage(_:)``) counts as pinned and is not
/// isolated. Isolation takes a second reference, so an owner may free an isolated block
/// at any time: the allocator frees it when the migration ends, and answers the
/// migration itself without calling ``migratePage(from:to:order:mode:)`` when it sees the
/// owner's reference gone. An owner that frees a block concurrently with a migration must
/// answer ``MigrationResult/failure`` for a block it no longer knows.
///
/// The callbacks run on the thread that compacts, with no allocator lock held; they may
/// allocate and free pages (no compaction starts from inside them). They must not wait for
/// anything that itself waits for an isolated block to come back.
public protocol MovablePageOwner: AnyObject, Sendable {
  /// `isolate_page()`: whether the block at `pfn` may be migrated now.
  func isolatePage(_ pfn: PFN, order: Int, mode: MigrationMode) -> Bool
  /// `migrate_page()`: the block's bytes are already at `destination`; repoint the owner's
  /// references from `source` to `destination`.
  func migratePage(from source: PFN, to destination: PFN, order: Int, mode: MigrationMode) -> MigrationResult
  /// `putback_page()`: the isolation of `pfn` ended without a migration.
  func putBackPage(_ pfn: PFN, order: Int)
}

/// A ``MovablePageOwner`` made of three closures.
public final class MovableOperations: MovablePageOwner {
  let isolate: @Sendable (PFN, Int, MigrationMode) -> Bool
  let migrate: @Sendable (PFN, PFN, Int, MigrationMode) -> MigrationResult
  let putBack: @Sendable (PFN, Int) -> Void

  /// - Parameters:
  ///   - isolate: ``MovablePageOwner/isolatePage(_:order:mode:)``.
  ///   - migrate: ``MovablePageOwner/migratePage(from:to:order:mode:)``.
  ///   - putBack: ``MovablePageOwner/putBackPage(_:order:)``.
  public init(
    isolate: @escaping @Sendable (PFN, Int, MigrationMode) -> Bool,
    migrate: @escaping @Sendable (PFN, PFN, Int, MigrationMode) -> MigrationResult,
    putBack: @escaping @Sendable (PFN, Int) -> Void
  ) {
    self.isolate = isolate
    self.migrate = migrate
    self.putBack = putBack
  }

  public func isolatePage(_ pfn: PFN, order: Int, mode: MigrationMode) -> Bool { isolate(pfn, order, mode) }

  public func migratePage(from source: PFN, to destination: PFN, order: Int, mode: MigrationMode) -> MigrationResult {
    migrate(source, destination, order, mode)
  }

  public func putBackPage(_ pfn: PFN, order: Int) { putBack(pfn, order) }
}

extension PageAllocator {
  /// Allocates a movable block owned by `owner` (``MovablePageOwner``): `alloc_pages()`
  /// followed by the registration of ``setMovable(_:order:owner:)``.
  ///
  /// `gfp` must contain `.movable` (a movable allocation, placed in Movable pageblocks);
  /// without it the call returns nil. A block of order above 0 is always a compound page
  /// (`.comp` is added): the kernel migrates folios whole, and a folio is compound.
  public func allocPages(order: Int, gfp: GFP, owner: any MovablePageOwner) -> PFN? {
    guard gfp.contains(.movable) else {
      reportAllocFailure(order, gfp)
      return nil
    }
    let g = order > 0 ? gfp.union(.comp) : gfp
    guard let p = allocPages(order: order, gfp: g) else { return nil }
    let ok = setMovable(p, order: order, owner: owner)
    assert(ok, "a block just allocated must register")
    return p
  }

  /// Registers an allocated block as movable, owned by `owner` (the kernel's
  /// `set_movable_ops()` / `__SetPageMovable()`). Returns false, changing nothing, when
  /// `pfn` is not the head of an allocated block of `order` with a reference, when an
  /// order above 0 is not a compound page (migration moves compound pages whole), or when
  /// the block is movable already.
  ///
  /// The registration ends when the block's last reference goes (the free clears it), or
  /// with ``clearMovable(_:)``.
  @discardableResult
  public func setMovable(_ pfn: PFN, order: Int, owner: any MovablePageOwner) -> Bool {
    guard (0...PageGeometry.maxOrder).contains(order), let (r, _) = resolve(pfn.value, "setMovable") else {
      return false
    }
    let w = r.pointee.flags.load(ordering: .relaxed)
    guard w & (PG.freeMask | PG.tail | PG.quarantined | PG.movableMask | PG.reserved) == 0, PG.order(w) == order,
      order == 0 || w & PG.head != 0, r.pointee.refcount.load(ordering: .relaxed) >= 1,
      freeBlockContaining(pfn.value) == nil
    else { return false }
    // The entry first, the flag second: a scanner that sees the flag finds the owner.
    compaction.owners.register(pfn.value, owner)
    r.pointee.flags.bitwiseOr(PG.movable, ordering: .releasing)
    return true
  }

  /// Ends the registration of a movable block (`__ClearPageMovable()`); the block stays
  /// allocated and becomes an ordinary page in use. Returns false when `pfn` is not a
  /// registered block, or while it is isolated for a migration (its owner gets the
  /// ``MovablePageOwner/migratePage(from:to:order:mode:)`` or
  /// ``MovablePageOwner/putBackPage(_:order:)`` call first; try again after it).
  @discardableResult
  public func clearMovable(_ pfn: PFN) -> Bool {
    guard let r = memMap.record(pfn.value) else { return false }
    // Clear the flag only when it is set and the block is not isolated, atomically.
    var w = r.pointee.flags.load(ordering: .relaxed)
    while true {
      guard w & PG.movableMask == PG.movable else { return false }
      let (done, now) = r.pointee.flags.compareExchange(
        expected: w, desired: w & ~PG.movable, ordering: .acquiringAndReleasing)
      if done { break }
      w = now
    }
    compaction.owners.remove(pfn.value)
    return true
  }

  /// Whether `pfn` is the head of a registered movable block.
  public func isMovable(_ pfn: PFN) -> Bool {
    guard let r = memMap.record(pfn.value) else { return false }
    return r.pointee.flags.load(ordering: .relaxed) & PG.movable != 0
  }

  /// Whether the movable block at `pfn` is isolated for a migration now.
  public func isIsolatedForMigration(_ pfn: PFN) -> Bool {
    guard let r = memMap.record(pfn.value) else { return false }
    return r.pointee.flags.load(ordering: .relaxed) & PG.movableIsolated != 0
  }

  /// Movable blocks registered now.
  public var movableBlockCount: Int { compaction.owners.registered }

  /// The free of a movable block's last reference: its registration ends.
  @usableFromInline @inline(never)
  func dropMovable(_ pfn: Int) {
    compaction.owners.remove(pfn)
  }
}

/// A ready-made ``MovablePageOwner``: a table of handles to movable blocks that follows
/// their migrations, with a scoped accessor that pins a block while its bytes are in use
/// (the kernel's FOLL_PIN: a pinned page is never migrated).
///
/// ```swift
/// let table = MovablePageTable(allocator: a)
/// let h = table.allocate(order: 0)!
/// table.withPage(h) { pfn, bytes in bytes?.storeBytes(of: 42, as: UInt64.self) }
/// a.compactAll()                      // the block may move; `h` follows it
/// table.free(h)
/// ```
///
/// Outside ``withPage(_:_:)`` a handle's pfn (``pfn(of:)``) may change at any moment, and
/// its bytes may be copied elsewhere: write to a block only inside the scope, and use the
/// pfn and pointer it gives only there. Thread safety: every method may be called from any
/// thread. The allocator must outlive the table.
public final class MovablePageTable: MovablePageOwner, @unchecked Sendable {
  /// A block of the table: stable across migrations.
  public struct Handle: Hashable, Sendable, Comparable {
    public let id: Int
    /// The handle numbered `id` (``allocate(order:gfp:)`` numbers them from 0, and gives a
    /// freed handle's number to a later block); an id the table does not hold names no
    /// block.
    public init(id: Int) { self.id = id }
    public static func < (a: Handle, b: Handle) -> Bool { a.id < b.id }
  }

  struct Entry {
    var pfn: Int
    var order: Int
    var pins = 0
    /// Threads waiting to pin: isolation refuses while any waits, so a waiter is not
    /// starved by a stream of migrations.
    var pinWaiters = 0
    var isolated = false
  }

  /// The handle numbered by each pfn: a flat array over the memmap's pfns (id + 1, 0 for
  /// none), as the allocator keeps its owners, since a table may hold a page for every pfn.
  struct PFNIndex {
    let base: Int
    let count: Int
    let ids: UnsafeMutablePointer<UInt32>

    subscript(pfn: Int) -> Int? {
      get {
        let i = pfn &- base
        guard i >= 0 && i < count, ids[i] != 0 else { return nil }
        return Int(ids[i]) &- 1
      }
      nonmutating set {
        let i = pfn &- base
        guard i >= 0 && i < count else { return }
        ids[i] = newValue.map { UInt32(truncatingIfNeeded: $0 &+ 1) } ?? 0
      }
    }
  }

  struct State {
    /// By handle id; a freed id is reused.
    var entries: [Entry?] = []
    var freeIDs: [Int] = []
    var live = 0
    var byPFN: PFNIndex
    var migrations = 0
    var refusals = 0

    func entry(_ id: Int) -> Entry? { id >= 0 && id < entries.count ? entries[id] : nil }

    mutating func insert(_ e: Entry) -> Int {
      let id: Int
      if let f = freeIDs.popLast() {
        id = f
        entries[id] = e
      } else {
        id = entries.count
        entries.append(e)
      }
      byPFN[e.pfn] = id
      live += 1
      return id
    }

    mutating func remove(_ id: Int) -> Entry? {
      guard let e = entry(id) else { return nil }
      entries[id] = nil
      freeIDs.append(id)
      if byPFN[e.pfn] == id { byPFN[e.pfn] = nil }
      live -= 1
      return e
    }
  }

  unowned let allocator: PageAllocator
  let state: LockedState<State>
  let indexBytes: Int

  public init(allocator: PageAllocator) {
    self.allocator = allocator
    let span = allocator.pfnSpan
    let count = max(span.count, 1)
    indexBytes = count * MemoryLayout<UInt32>.stride
    let p = mmap(nil, indexBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    guard let p, p != MAP_FAILED else { fatalError("MovablePageTable: cannot reserve \(indexBytes) bytes") }
    let index = PFNIndex(base: span.lowerBound.value, count: count, ids: p.bindMemory(to: UInt32.self, capacity: count))
    state = LockedState(State(byPFN: index))
  }

  deinit {
    let p = state.withLock { $0.byPFN.ids }
    munmap(p, indexBytes)
  }

  /// Allocates a movable block of `order` (``PageAllocator/allocPages(order:gfp:owner:)``)
  /// and returns its handle, or nil. `gfp` must contain `.movable`.
  public func allocate(order: Int, gfp: GFP = .highUserMovable) -> Handle? {
    guard let p = allocator.allocPages(order: order, gfp: gfp, owner: self) else { return nil }
    return state.withLock { s in Handle(id: s.insert(Entry(pfn: p.value, order: order))) }
  }

  /// Takes a block the caller allocated (the head of `order` with the caller's one
  /// reference, compound above order 0) into the table: it is registered movable and
  /// freed by ``free(_:)`` from then on. Returns nil, changing nothing, when the block
  /// cannot be registered (see ``PageAllocator/setMovable(_:order:owner:)``).
  public func adopt(_ pfn: PFN, order: Int) -> Handle? {
    let id = state.withLock { s in s.insert(Entry(pfn: pfn.value, order: order)) }
    guard allocator.setMovable(pfn, order: order, owner: self) else {
      state.withLock { s in _ = s.remove(id) }
      return nil
    }
    return Handle(id: id)
  }

  /// Frees the block of `handle` (wherever it is now). Returns false for an unknown handle.
  @discardableResult
  public func free(_ handle: Handle) -> Bool {
    let e = state.withLock { s in s.remove(handle.id) }
    guard let e else { return false }
    // Outside the table's lock: the free may end the registration in the allocator. An
    // isolated block stays allocated (the isolation holds a reference) until the
    // migration, which no longer finds it here, ends.
    allocator.freePages(PFN(e.pfn), order: e.order)
    return true
  }

  /// Where the block of `handle` is now (it may move right after this returns), or nil.
  public func pfn(of handle: Handle) -> PFN? {
    state.withLock { s in s.entry(handle.id).map { PFN($0.pfn) } }
  }

  /// The handles, in allocation order.
  public var handles: [Handle] {
    state.withLock { s in s.entries.indices.filter { s.entries[$0] != nil }.map { Handle(id: $0) } }
  }

  /// Blocks held.
  public var count: Int { state.withLock { $0.live } }

  /// Migrations the table followed so far.
  public var migrationCount: Int { state.withLock { $0.migrations } }

  /// Calls `body` with the block's pfn and bytes (`4096 << order`; nil with backing
  /// `.none`) while the block is pinned: it does not move until `body` returns. When the
  /// block is being migrated right now, the call waits for the migration to end first.
  /// Returns nil for an unknown handle.
  public func withPage<R>(_ handle: Handle, _ body: (PFN, UnsafeMutableRawBufferPointer?) throws -> R) rethrows -> R? {
    var waiting = false
    var entry: Entry?
    while true {
      let (e, busy) = state.withLock { s -> (Entry?, Bool) in
        guard var e = s.entry(handle.id) else { return (nil, false) }
        if e.isolated {
          if !waiting { e.pinWaiters += 1 }
          s.entries[handle.id] = e
          return (e, true)
        }
        if waiting { e.pinWaiters -= 1 }
        e.pins += 1
        s.entries[handle.id] = e
        return (e, false)
      }
      guard let e else { return nil }
      if !busy {
        entry = e
        break
      }
      waiting = true
      sched_yield()
    }
    let e = entry!
    defer {
      state.withLock { s in
        if var x = s.entry(handle.id) {
          x.pins -= 1
          s.entries[handle.id] = x
        }
      }
    }
    let bytes = allocator.address(of: PFN(e.pfn)).map {
      UnsafeMutableRawBufferPointer(start: $0, count: PageGeometry.pageSize << e.order)
    }
    return try body(PFN(e.pfn), bytes)
  }

  // MARK: MovablePageOwner

  public func isolatePage(_ pfn: PFN, order: Int, mode: MigrationMode) -> Bool {
    state.withLock { s in
      guard let id = s.byPFN[pfn.value], var e = s.entry(id), !e.isolated else { return false }
      if e.pins > 0 || e.pinWaiters > 0 {
        s.refusals += 1
        return false
      }
      e.isolated = true
      s.entries[id] = e
      return true
    }
  }

  public func migratePage(from source: PFN, to destination: PFN, order: Int, mode: MigrationMode) -> MigrationResult {
    state.withLock { s in
      guard let id = s.byPFN[source.value], var e = s.entry(id), e.isolated else { return .failure }
      s.byPFN[source.value] = nil
      s.byPFN[destination.value] = id
      e.pfn = destination.value
      e.isolated = false
      s.entries[id] = e
      s.migrations += 1
      return .success
    }
  }

  public func putBackPage(_ pfn: PFN, order: Int) {
    state.withLock { s in
      guard let id = s.byPFN[pfn.value], var e = s.entry(id) else { return }
      e.isolated = false
      s.entries[id] = e
    }
  }
}
