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
