import PageAlloc
import PageAllocStress
import PageAllocVMalloc
import Glibc
import Synchronization
import Testing
import _PageAllocUtilities

/// The tests' random numbers: the package's one generator, so a seed names the same
/// workload in a test as in the tools.
package typealias TestRNG = SeededRandom

/// The tests' allocator: one Normal zone; every page of a block checked on free and
/// allocation (`checkPages`) unless a test asks for the kernel's default.
package func makeAllocator(
  pages: Int = 1 << 16, cpus: Int = 1, section: Int = 1 << 15, backing: Backing = .none,
  holes: [Range<PFN>] = [], poison: Bool = false, checkPages: Bool = true
) throws -> PageAllocator {
  try PageAllocator(
    configuration: .init(
      zones: [ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(pages))], cpuCount: cpus,
      backing: backing, sectionPages: section, holes: holes, poisonPages: poison, checkPages: checkPages))
}

/// A memfd-backed allocator (one Normal zone, two CPUs) and a vmalloc over it.
package func makeVMalloc(
  pages: Int = 1 << 14, vmalloc config: VMalloc.Configuration = .init()
) throws -> (PageAllocator, VMalloc) {
  var c = PageAllocator.Configuration.normal(pages: pages, cpuCount: 2, backing: .memfd)
  c.checkPages = true
  let a = try PageAllocator(configuration: c)
  let v = try VMalloc(allocator: a, configuration: config)
  return (a, v)
}

/// An allocator of one Normal zone (backing `.none`) with a `TraceBuffer` as its sink.
package func makeTracedAllocator(pages: Int = 1 << 16, cpus: Int = 1) throws -> (PageAllocator, TraceBuffer) {
  let a = try makeAllocator(pages: pages, cpus: cpus)
  let t = TraceBuffer()
  a.setTraceSink(t)
  return (a, t)
}

/// The allocator the API-sequence fuzzer ran on when it found the regressions of
/// HostileInputTests (its pool is smaller now): a DMA zone ending at pfn 1000 inside a
/// pageblock shared with Normal, a Normal zone up to 8192 with a memmap hole at
/// 4096..<5120, 1024-page sections, two CPUs; every page of a block checked, or with
/// `checkPages: false` the kernel's default setting.
package func makeFuzzAllocator(checkPages: Bool = true) throws -> PageAllocator {
  try PageAllocator(
    configuration: .init(
      zones: [
        ZoneConfiguration(kind: .dma, pfns: PFN(0)..<PFN(1000)),
        ZoneConfiguration(kind: .normal, pfns: PFN(1000)..<PFN(8192)),
      ], cpuCount: 2, backing: .none, sectionPages: 1024, holes: [PFN(4096)..<PFN(5120)], checkPages: checkPages))
}

/// Allocates order-10 blocks until every page of `range` is allocated, splits them, and
/// frees (and drains) every page outside `range`: afterwards exactly `range`'s pages are
/// in use, each with refcount 1, and nothing is on a pcp list.
///
/// The pcp's recent-free count (`free_count`) is brought back near zero too (every pcp
/// allocation halves it): the thousand frees above would otherwise make the caller's next
/// high-order frees a free_high burst that drains the list at once.
package func claimExactly(_ a: PageAllocator, _ range: Range<PFN>) throws {
  var needed = Set<Int>()
  var b = range.lowerBound.value & ~1023
  while b < range.upperBound.value {
    needed.insert(b)
    b += 1024
  }
  var held: [PFN] = []
  var got = Set<Int>()
  while !needed.isSubset(of: got) {
    let p = try #require(a.allocPages(order: 10, gfp: .kernel), "zone ran out before reaching \(range)")
    held.append(p)
    got.insert(p.value)
  }
  for h in held {
    if needed.contains(h.value) {
      a.splitPage(h, order: 10)
      for i in 0..<1024 where !range.contains(h + i) { a.putPage(h + i) }
    } else {
      a.freePages(h, order: 10)
    }
  }
  a.drainAllPages()
  var quiet: [PFN] = []
  for _ in 0..<16 { quiet.append(try #require(a.allocPages(order: 0, gfp: .kernel))) }
  for p in quiet { a.putPage(p) }
  a.drainAllPages()
  #expect(a.pcpBlocks().isEmpty)
}

/// The canonical free state of a buddy allocator holding exactly the free pfns `free`:
/// every aligned block of order 10 (MAX_PAGE_ORDER) whose pages are all free and which
/// does not straddle a section or zone boundary, then the same one order lower inside each
/// block that was not whole, down to single pages (what a fully merged buddy holds).
///
/// Written top-down from the definition, independently of the allocator's own bottom-up
/// chunking (`PageAllocator.chunkOrder`), so that a mistake common to the allocator and
/// its tests cannot hide.
package func canonicalBlocks(free: [Int], sectionPages: Int, zoneBounds: [Int] = []) -> [(Int, Int)] {
  guard let lo = free.min(), let hi = free.max() else { return [] }
  let base = lo & ~1023
  let end = (hi + 1024) & ~1023
  // prefix[i]: free pages in base..<base+i.
  var isFree = [Bool](repeating: false, count: end - base)
  for p in free { isFree[p - base] = true }
  var prefix = [0]
  prefix.reserveCapacity(isFree.count + 1)
  for f in isFree { prefix.append(prefix.last! + (f ? 1 : 0)) }
  // Sections hold at least 1024 pages (the allocator refuses less), so no block of order
  // 10 or below straddles one; zone boundaries may fall anywhere.
  precondition(sectionPages >= 1024 && sectionPages & (sectionPages - 1) == 0)
  var out: [(Int, Int)] = []
  func walk(_ b: Int, _ order: Int) {
    let n = 1 << order
    let freeHere = prefix[b + n - base] - prefix[b - base]
    if freeHere == 0 { return }
    let straddles = zoneBounds.contains { $0 > b && $0 < b + n }
    if freeHere == n && !straddles {
      out.append((b, order))
      return
    }
    walk(b, order - 1)
    walk(b + n / 2, order - 1)
  }
  for b in stride(from: base, to: end, by: 1024) { walk(b, 10) }
  return out
}

/// The chunks a chunked free must hand on for a run of freeable pages `[start, end)`: the
/// fewest aligned power-of-two blocks of order 10 at most that tile it, in pfn order.
/// Computed top-down like ``canonicalBlocks(free:sectionPages:zoneBounds:)``.
package func expectedChunks(_ run: Range<Int>, sectionPages: Int = 1 << 15) -> [[Int]] {
  blocks(canonicalBlocks(free: Array(run), sectionPages: sectionPages))
}

package func blocks(_ b: [(pfn: PFN, order: Int)]) -> [[Int]] { b.map { [$0.pfn.value, $0.order] } }
package func blocks(_ b: [(Int, Int)]) -> [[Int]] { b.map { [$0.0, $0.1] } }

/// Every pfn on the buddy free lists.
package func freePFNs(_ a: PageAllocator) -> [Int] {
  var out: [Int] = []
  for b in a.freeBlocks() { for i in 0..<(1 << b.order) { out.append(b.pfn.value + i) } }
  return out
}

/// The chunks (pfn, order) the chunked free hands on while `body` runs.
package func chunksFreed(_ a: PageAllocator, _ body: () -> Void) -> [[Int]] {
  let out = LockedState<[[Int]]>([])
  a.setChunkObserver { pfn, order in out.withLock { $0.append([pfn.value, order]) } }
  body()
  a.setChunkObserver(nil)
  return out.withLock { $0 }
}

// MARK: - Movable pages

/// The pattern word a test writes into movable page `id` (first and last 8 bytes of every
/// 4 KiB page, the last one inverted): what proves a migration carried the bytes along.
package func patternWord(_ id: Int, page: Int = 0) -> UInt64 {
  UInt64(truncatingIfNeeded: id &* 0x9E37_79B9 &+ page &* 0x1000_0001) ^ 0xA5A5_5A5A_0F0F_F0F0
}

/// Writes the pattern of `handle` into its block through the pinned accessor.
package func writePattern(_ table: MovablePageTable, _ handle: MovablePageTable.Handle) {
  table.withPage(handle) { _, bytes in
    guard let bytes else { return }
    for page in 0..<(bytes.count / PageGeometry.pageSize) {
      let w = patternWord(handle.id, page: page)
      bytes.storeBytes(of: w, toByteOffset: page * PageGeometry.pageSize, as: UInt64.self)
      bytes.storeBytes(of: ~w, toByteOffset: page * PageGeometry.pageSize + PageGeometry.pageSize - 8, as: UInt64.self)
    }
  }
}

/// Whether the block of `handle` holds its pattern, read at the allocator's address of
/// the pfn the table has for it now: true only when the bytes moved and the table
/// followed.
package func checkPattern(_ a: PageAllocator, _ table: MovablePageTable, _ handle: MovablePageTable.Handle) -> Bool {
  table.withPage(handle) { pfn, bytes in
    guard let bytes, a.address(of: pfn) == bytes.baseAddress else { return false }
    for page in 0..<(bytes.count / PageGeometry.pageSize) {
      let w = patternWord(handle.id, page: page)
      if bytes.load(fromByteOffset: page * PageGeometry.pageSize, as: UInt64.self) != w { return false }
      if bytes.load(fromByteOffset: page * PageGeometry.pageSize + PageGeometry.pageSize - 8, as: UInt64.self) != ~w {
        return false
      }
    }
    return true
  } ?? false
}

/// The `fragment` workload with movable owners: every page allocated as an order-0 page,
/// in runs of 64 of which every fourth is unmovable (no owner) and the rest movable
/// through `table`, each with its pattern; then every page freed but those with
/// `pfn % 16 == 7`. Afterwards no free block is above order 3. Returns the movable handles
/// and the unmovable pages kept (each holding `patternWord(-1 - pfn)` in its first word).
package func fragmentWithMovableOwners(
  _ a: PageAllocator, _ table: MovablePageTable
) -> (movable: [MovablePageTable.Handle], unmovable: [PFN]) {
  var movable: [MovablePageTable.Handle] = []
  var unmovable: [PFN] = []
  var i = 0
  while true {
    if (i / 64) % 4 == 0 {
      guard let p = a.allocPages(order: 0, gfp: [.kernel, .noWarn]) else { break }
      unmovable.append(p)
    } else {
      guard let h = table.allocate(order: 0, gfp: [.highUserMovable, .noWarn]) else { break }
      movable.append(h)
    }
    i += 1
  }
  var keptUnmovable: [PFN] = []
  for p in unmovable {
    if p.value % 16 == 7 {
      a.address(of: p)?.storeBytes(of: patternWord(-1 - p.value), as: UInt64.self)
      keptUnmovable.append(p)
    } else {
      a.freePages(p, order: 0)
    }
  }
  var kept: [MovablePageTable.Handle] = []
  for h in movable {
    if table.pfn(of: h)!.value % 16 == 7 {
      writePattern(table, h)
      kept.append(h)
    } else {
      table.free(h)
    }
  }
  a.drainAllPages()
  return (kept, keptUnmovable)
}

/// The chunks `freePagesBulk(pfns)` must hand on when every page is freeable: the array
/// cut into stretches of consecutive ascending pfns (cut again at section boundaries),
/// each stretch tiled by ``expectedChunks(_:sectionPages:)``, in array order.
package func expectedBulkChunks(_ pfns: [Int], sectionPages: Int = 1 << 15) -> [[Int]] {
  var out: [[Int]] = []
  var i = 0
  while i < pfns.count {
    var j = i + 1
    while j < pfns.count && pfns[j] == pfns[j - 1] + 1 && pfns[j] % sectionPages != 0 { j += 1 }
    out += expectedChunks(pfns[i]..<(pfns[j - 1] + 1), sectionPages: sectionPages)
    i = j
  }
  return out
}

/// Runs `body(t)` for t in 0..<workers, each on its own thread (all started together by
/// `runOnThreads`' barrier), while one more thread calls `a.verify()` again and again
/// until every worker has returned, and at least `minimum` times. Returns the verify
/// errors and how many verifications ran (some of them while workers were running, on
/// any machine where the workers take longer than `minimum` verifications).
package func withVerifier(
  _ a: PageAllocator, workers: Int, minimum: Int = 3, _ body: @escaping @Sendable (Int) -> Void
) throws -> (errors: [String], verifications: Int) {
  let running = Atomic<Int>(workers)
  let verifications = Atomic<Int>(0)
  let errors = LockedState<[String]>([])
  try runOnThreads(workers + 1) { t in
    guard t < workers else {
      while running.load(ordering: .acquiring) > 0 || verifications.load(ordering: .relaxed) < minimum {
        do { try a.verify() } catch { errors.withLock { $0.append("\(error)") } }
        verifications.wrappingAdd(1, ordering: .relaxed)
        // verify() holds every lock while it runs: a pause between two lets the workers
        // (spinning on those locks) get on, or they would crawl.
        usleep(2000)
      }
      return
    }
    body(t)
    running.wrappingSubtract(1, ordering: .releasing)
  }
  return (errors.withLock { $0 }, verifications.load(ordering: .relaxed))
}
