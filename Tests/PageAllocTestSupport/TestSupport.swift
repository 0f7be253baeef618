import PageAlloc
import PageAllocStress
import PageAllocVMalloc
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

/// The fuzzer's allocator (`APISequence.fuzzConfiguration`), for the regressions it found;
/// `checkPages: false` gives the same allocator with the kernel's default setting.
package func makeFuzzAllocator(checkPages: Bool = true) throws -> PageAllocator {
  try PageAllocator(
    configuration: checkPages ? APISequence.fuzzConfiguration : APISequence.fuzzConfigurationWithoutPageChecks)
}

/// Allocates order-10 blocks until every page of `range` is allocated, splits them, and
/// frees (and drains) every page outside `range`: afterwards exactly `range`'s pages are
/// in use, each with refcount 1, and nothing is on a pcp list.
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
  #expect(a.pcpBlocks().isEmpty)
}

/// The canonical maximal-aligned decomposition of a set of free pfns: each maximal run,
/// cut at zone and section boundaries, decomposed greedily (what a fully merged buddy
/// holds).
package func canonicalBlocks(free: [Int], sectionPages: Int, zoneBounds: [Int] = []) -> [(Int, Int)] {
  let sorted = free.sorted()
  var out: [(Int, Int)] = []
  var i = 0
  while i < sorted.count {
    let start = sorted[i]
    var j = i + 1
    while j < sorted.count && sorted[j] == sorted[j - 1] + 1 && sorted[j] % sectionPages != 0
      && !zoneBounds.contains(sorted[j])
    {
      j += 1
    }
    for c in PageAllocator.chunks(of: PFN(start)..<PFN(start + (j - i))) { out.append((c.pfn.value, c.order)) }
    i = j
  }
  return out
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
