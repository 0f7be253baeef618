import Glibc
import Synchronization
import Testing

@testable import PageAlloc
import PageAllocTestSupport
import _PageAllocUtilities
@testable import PageAllocVMalloc

/// Every page free again, nothing mapped in the window but the reservation, both verified.
private func expectClean(_ a: PageAllocator, _ v: VMalloc, free: Int, sourceLocation: SourceLocation = #_sourceLocation)
  throws
{
  #expect(a.freePageCount == free, sourceLocation: sourceLocation)
  #expect(v.vmallocPageCount == 0, sourceLocation: sourceLocation)
  #expect(v.areaCount == 0, sourceLocation: sourceLocation)
  #expect(v.chargedMappings == 0, sourceLocation: sourceLocation)
  let maps = v.windowMappings()
  #expect(maps.count == 1, "window VMAs: \(maps)", sourceLocation: sourceLocation)
  #expect(maps.allSatisfy { $0.permissions == "---p" }, sourceLocation: sourceLocation)
  try a.verify()
  try v.verify()
}

/// The `rw-s` VMAs inside an area map exactly its pages, in order: one per contiguous run.
private func expectMappedAsPages(
  _ v: VMalloc, _ a: PageAllocator, _ p: UnsafeMutableRawPointer, sourceLocation: SourceLocation = #_sourceLocation
) throws {
  let pages = try #require(v.pages(of: p), sourceLocation: sourceLocation)
  let start = UInt(bitPattern: p)
  let end = start + UInt(pages.count * 4096)
  let maps = processMappings(in: start, end + 4096)
  var covered = 0
  for m in maps where m.end <= end {
    #expect(m.permissions == "rw-s", sourceLocation: sourceLocation)
    let first = Int(m.start - start) / 4096
    let count = Int(m.end - m.start) / 4096
    #expect(m.fileOffset == a.memfdOffset(of: pages[first]), sourceLocation: sourceLocation)
    for j in 0..<count { #expect(pages[first + j] == pages[first] + j, sourceLocation: sourceLocation) }
    covered += count
  }
  #expect(covered == pages.count, sourceLocation: sourceLocation)
  #expect(maps.count == VMalloc.runCount(pages) + 1, "runs plus the guard", sourceLocation: sourceLocation)
  // The guard page (and the rest of the reservation after it) is PROT_NONE.
  let guardVMA = maps.first { $0.start <= end && $0.end > end }
  #expect(guardVMA?.permissions == "---p", sourceLocation: sourceLocation)
}

@Suite struct VMallocTests {
  static let sizes = [1, 100, 4096, 4097, 3 * 4096 + 5, 5 * 4096, 65536, 100_003, 1 << 20, 3 << 20, 5_000_001, 8 << 20]

  @Test("bytes written through vmalloc read back through address(of:) and the other way", arguments: sizes)
  func aliasRoundTrip(size: Int) throws {
    let (a, v) = try makeVMalloc(pages: 1 << 13)
    let free = a.freePageCount
    let p = try #require(v.vmalloc(size))
    let pages = try #require(v.pages(of: p))
    #expect(pages.count == (size + 4095) / 4096)
    #expect(v.vmallocPageCount == pages.count)
    #expect(Set(pages).count == pages.count)
    try expectMappedAsPages(v, a, p)
    // vmalloc address -> page addresses.
    let bytes = p.assumingMemoryBound(to: UInt8.self)
    for i in 0..<size { bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 12) }
    for (n, pfn) in pages.enumerated() {
      let q = try #require(a.address(of: pfn)).assumingMemoryBound(to: UInt8.self)
      let len = min(4096, size - n * 4096)
      for j in stride(from: 0, to: len, by: 97) + [len - 1] {
        let i = n * 4096 + j
        #expect(q[j] == UInt8(truncatingIfNeeded: i &* 31 &+ i >> 12))
      }
    }
    // Page addresses -> vmalloc address.
    for (n, pfn) in pages.enumerated() {
      let q = try #require(a.address(of: pfn)).assumingMemoryBound(to: UInt8.self)
      q[0] = UInt8(n & 0xff) ^ 0x5a
      q[4095] = UInt8(n >> 8 & 0xff) ^ 0xa5
    }
    for n in 0..<pages.count {
      #expect(bytes[n * 4096] == UInt8(n & 0xff) ^ 0x5a)
      #expect(bytes[n * 4096 + 4095] == UInt8(n >> 8 & 0xff) ^ 0xa5)
    }
    try v.verify()
    try a.verify()
    #expect(v.vfree(p))
    try expectClean(a, v, free: free)
  }

  @Test("vm_area_alloc_pages: high orders first, each split, ascending runs")
  func allocationStrategy() throws {
    let (a, v) = try makeVMalloc()
    let n = 1000  // 512 + 256 + 128 + 64 + 32 + 8 (ilog2 each time) = 1000
    let p = try #require(v.vmalloc(n * 4096))
    let pages = try #require(v.pages(of: p))
    var i = 0
    for order in [9, 8, 7, 6, 5, 3] {
      let head = pages[i]
      #expect(head.value % (1 << order) == 0, "order-\(order) block aligned")
      for j in 0..<(1 << order) {
        #expect(pages[i + j] == head + j)
        #expect(a.refcount(of: pages[i + j]) == 1, "split_page gives every page a reference")
      }
      i += 1 << order
    }
    #expect(i == n)
    #expect(v.vfree(p))
    try expectClean(a, v, free: a.managedPageCount)
  }

  @Test(".zero zeroes memory that was dirty")
  func zeroing() throws {
    let (a, v) = try makeVMalloc()
    for _ in 0..<3 {
      let p = try #require(v.vmalloc(64 * 4096))
      memset(p, 0xee, 64 * 4096)
      v.vfree(p)
    }
    for size in [4096, 64 * 4096, 300 * 4096] {
      let z = try #require(v.vzalloc(size))
      let b = z.assumingMemoryBound(to: UInt64.self)
      #expect((0..<(size / 8)).allSatisfy { b[$0] == 0 })
      v.vfree(z)
    }
    try expectClean(a, v, free: a.managedPageCount)
  }

  @Test("alignment up to the pageblock size", arguments: [1, 4096, 8192, 32768, 1 << 16, 1 << 20, 1 << 21])
  func alignment(align: Int) throws {
    let (a, v) = try makeVMalloc()
    // An unaligned area first, so the window's free space starts unaligned.
    let pad = try #require(v.vmalloc(3 * 4096))
    var ptrs: [UnsafeMutableRawPointer] = []
    for k in 1...5 {
      let p = try #require(v.vmalloc(k * 4096 + 1, gfp: [.kernel, .zero], align: align))
      #expect(UInt(bitPattern: p) % UInt(max(align, 4096)) == 0)
      p.storeBytes(of: 0xfeed, as: UInt32.self)
      ptrs.append(p)
    }
    try v.verify()
    for p in ptrs { v.vfree(p) }
    v.vfree(pad)
    try expectClean(a, v, free: a.managedPageCount)
  }

  @Test("bad sizes and alignments return nil")
  func badArguments() throws {
    let (a, v) = try makeVMalloc()
    #expect(v.vmalloc(0) == nil)
    #expect(v.vmalloc(4096, align: 3 * 4096) == nil)
    #expect(v.vmalloc(4096, align: 1 << 22) == nil, "beyond the pageblock size")
    #expect(v.failureCount == 3)
    // vfree(NULL) is fine; a foreign or interior address is reported.
    #expect(v.vfree(nil))
    let p = try #require(v.vmalloc(2 * 4096))
    #expect(!v.vfree(p + 4096))
    var x = 0
    #expect(!v.vfree(&x))
    #expect(v.badCallCount == 2)
    #expect(!v.vunmap(p), "a vmalloc area must be vfree'd")
    #expect(v.vfree(p))
    #expect(!v.vfree(p), "double vfree")
    try expectClean(a, v, free: a.managedPageCount)
  }

  @Test("memory running out part way: nil, nothing leaked")
  func outOfMemory() throws {
    // Pinned to CPU 0: the area's shape (and how much stays on a pcp list) must not depend
    // on where the scheduler runs the test.
    try PageAllocator.withThreadCPU(0) { try outOfMemoryOnCPU0() }
  }

  func outOfMemoryOnCPU0() throws {
    let (a, v) = try makeVMalloc(pages: 4096)
    let free = a.freePageCount
    // Hold most memory in scattered order-0 pages so the request needs many runs and fails late.
    let held = try #require(v.vmalloc(3000 * 4096))
    #expect(v.vmalloc(2000 * 4096) == nil)
    #expect(v.areaCount == 1)
    try v.verify()
    try a.verify()
    #expect(v.vfree(held))
    #expect(v.vmalloc(8000 * 4096) == nil)
    try expectClean(a, v, free: free)
    // The full pool less the watermark still builds.
    let big = try #require(v.vmalloc(3500 * 4096, gfp: [.kernel, .noWarn]))
    v.vfree(big)
    try expectClean(a, v, free: free)
  }

  @Test("the map-count budget bounds live areas; nothing leaks at the limit")
  func mapBudget() throws {
    let (a, v) = try makeVMalloc(vmalloc: .init(mapLimit: 21))
    var live: [UnsafeMutableRawPointer] = []
    while let p = v.vmalloc(4096, gfp: [.kernel, .noWarn]) { live.append(p) }
    #expect(live.count == 10, "a one-page area charges one run plus its guard")
    #expect(v.chargedMappings == 20)
    #expect(v.windowMappings().count <= 21)
    try v.verify()
    #expect(a.allocatedPageCount == 10)
    for p in live { v.vfree(p) }
    try expectClean(a, v, free: a.managedPageCount)
    #expect(VMalloc.processMapBudget <= VMalloc.maxMapCount)
  }

  @Test("5000 live one-page areas: two VMAs each, one VMA again after vfree")
  func manyLiveAreas() throws {
    let (a, v) = try makeVMalloc()
    var live: [UnsafeMutableRawPointer] = []
    for _ in 0..<5000 { live.append(try #require(v.vmalloc(4096))) }
    #expect(v.chargedMappings == 10_000)
    let maps = v.windowMappings()
    // Each area and its guard; the last guard is one VMA with the rest of the reservation.
    #expect(maps.count == 10_000)
    #expect(maps.filter { $0.permissions == "rw-s" }.count == 5000)
    // Free every other area: each hole merges with the guard before it.
    for i in stride(from: 0, to: 5000, by: 2) { v.vfree(live[i]) }
    #expect(v.windowMappings().count <= v.chargedMappings + 1)
    for i in stride(from: 1, to: 5000, by: 2) { v.vfree(live[i]) }
    try expectClean(a, v, free: a.managedPageCount)
  }

  @Test("windows are reused after vfree")
  func windowReuse() throws {
    let (a, v) = try makeVMalloc(vmalloc: .init(windowBytes: 64 * 4096))
    for _ in 0..<1000 {
      let p = try #require(v.vmalloc(63 * 4096), "the only slot that fits is reused")
      v.vfree(p)
    }
    #expect(v.vmalloc(64 * 4096, gfp: .noWarn) == nil, "no room for the guard page")
    try expectClean(a, v, free: a.managedPageCount)
  }

  @Test("vmap maps caller pages in the caller's order; vunmap leaves them allocated")
  func vmapVunmap() throws {
    let (a, v) = try makeVMalloc()
    var pages: [PFN] = []
    for _ in 0..<12 { pages.append(try #require(a.allocPages(order: 0, gfp: .kernel))) }
    let block = try #require(a.allocPages(order: 2, gfp: .kernel))
    a.splitPage(block, order: 2)
    pages += (0..<4).map { block + $0 }
    pages.reverse()
    let p = try #require(v.vmap(pages))
    #expect(v.vmallocPageCount == 0, "vmap pages are not NR_VMALLOC")
    try expectMappedAsPages(v, a, p)
    for (n, pfn) in pages.enumerated() {
      (p + n * 4096).storeBytes(of: UInt64(n) &* 0x9e37_79b9, as: UInt64.self)
      #expect(try #require(a.address(of: pfn)).load(as: UInt64.self) == UInt64(n) &* 0x9e37_79b9)
    }
    #expect(v.vmallocInfo().contains(" vmap N0=16\n"))
    #expect(v.vunmap(p))
    #expect(!v.vunmap(p))
    for q in pages { #expect(a.refcount(of: q) == 1) }
    a.freePagesBulk(pages.sorted())
    #expect(v.vmap([PFN(1 << 20)]) == nil, "not a page of the allocator")
    try expectClean(a, v, free: a.managedPageCount)
  }

  @Test("vmallocInfo lists areas like /proc/vmallocinfo")
  func info() throws {
    let (a, v) = try makeVMalloc()
    let p = try #require(v.vmalloc(5 * 4096))
    let q = try #require(v.vmalloc(1))
    let lines = v.vmallocInfo().split(separator: "\n")
    #expect(lines.count == 2)
    let start = String(UInt(bitPattern: p), radix: 16)
    #expect(lines[0].hasPrefix("0x" + String(repeating: "0", count: 16 - start.count) + start + "-0x"))
    #expect(lines[0].contains("   24576 PageAllocVMallocTests/VMallocTests.swift:"))
    #expect(lines[0].hasSuffix(" pages=5 vmalloc N0=5"))
    #expect(lines[1].hasSuffix(" pages=1 vmalloc N0=1"))
    #expect(v.areas().map(\.pageCount) == [5, 1])
    v.vfree(p)
    v.vfree(q)
    #expect(v.vmallocInfo() == "")
    try expectClean(a, v, free: a.managedPageCount)
  }

  @Test("a VMalloc needs a memfd")
  func needsMemfd() throws {
    let a = try PageAllocator(configuration: .normal(pages: 4096, backing: .anonymous))
    #expect(throws: VMallocError.needsMemfdBacking) { try VMalloc(allocator: a) }
  }

  @Test("both free paths leave the same free state", arguments: VMalloc.FreePath.allCases)
  func freePaths(path: VMalloc.FreePath) throws {
    let (a, v) = try makeVMalloc()
    var ptrs: [UnsafeMutableRawPointer] = []
    for k in [1, 7, 64, 513, 100, 3] { ptrs.append(try #require(v.vmalloc(k * 4096))) }
    for p in ptrs { #expect(v.vfree(p, freePath: path)) }
    #expect(a.badPageCount == 0)
    try expectClean(a, v, free: a.managedPageCount)
  }

  /// 40 random sequences of 1...60 ops, each from its own seed (the same on every run).
  @Test("random vmalloc/vfree sequences end with every page free and every window unmapped", arguments: 0..<40)
  func randomSequences(seed: UInt64) throws {
    var rng = TestRNG(seed: seed &+ 1000)
    let ops = (0..<(1 + rng.below(60))).map { _ in rng.below(1_000_001) }
    let (a, v) = try makeVMalloc(pages: 1 << 13)
    let free = a.freePageCount
    var live: [(UnsafeMutableRawPointer, Int, UInt8)] = []
    var allocated = 0
    for op in ops {
      if op % 3 == 0 && !live.isEmpty {
        let (p, size, tag) = live.remove(at: op % live.count)
        let b = p.assumingMemoryBound(to: UInt8.self)
        #expect(b[0] == tag && b[size - 1] == tag)
        #expect(v.vfree(p, freePath: op % 2 == 0 ? .bulk : .perPage))
      } else {
        let size = 1 + op % (700 * 4096)
        let align = 1 << (op % 22)
        let tag = UInt8(truncatingIfNeeded: op)
        if let p = v.vmalloc(size, gfp: [.kernel, .noWarn], align: align) {
          #expect(UInt(bitPattern: p) % UInt(align) == 0)
          let b = p.assumingMemoryBound(to: UInt8.self)
          b[0] = tag
          b[size - 1] = tag
          live.append((p, size, tag))
          allocated += 1
        }
      }
      try a.verify()
      try v.verify()
      #expect(a.allocatedPageCount == v.vmallocPageCount)
      // The charge is an upper bound of the VMAs the areas add (the reservation is the +1).
      #expect(v.windowMappings().count <= v.chargedMappings + 1)
    }
    for (p, _, _) in live { v.vfree(p) }
    try expectClean(a, v, free: free)
    // The first op always allocates (nothing is live), at most 700 pages of 8192.
    #expect(ops.isEmpty || allocated > 0)
  }

  @Test("concurrent vmalloc/vfree from 4 threads")
  func concurrent() throws {
    let (a, v) = try makeVMalloc(pages: 1 << 14)
    let free = a.freePageCount
    let errors = Atomic<Int>(0)
    let allocated = Atomic<Int>(0)
    try runOnThreads(4) { t in
      var rng = TestRNG(seed: UInt64(t + 1))
      var live: [(UnsafeMutableRawPointer, Int)] = []
      for i in 0..<400 {
        if live.count > 6 || (!live.isEmpty && rng.below(3) == 0) {
          let (p, n) = live.removeFirst()
          let tag = UInt8(truncatingIfNeeded: UInt(bitPattern: p) >> 12)
          let b = p.assumingMemoryBound(to: UInt8.self)
          for k in 0..<n where b[k * 4096] != tag || b[k * 4096 + 4095] != tag { errors.add(1, ordering: .relaxed) }
          if !v.vfree(p, freePath: i % 2 == 0 ? .bulk : .perPage) { errors.add(1, ordering: .relaxed) }
        } else {
          let n = 1 + rng.below(64)
          guard let p = v.vmalloc(n * 4096, gfp: [.kernel, .noWarn]) else { continue }
          allocated.add(1, ordering: .relaxed)
          let tag = UInt8(truncatingIfNeeded: UInt(bitPattern: p) >> 12)
          let b = p.assumingMemoryBound(to: UInt8.self)
          for k in 0..<n {
            b[k * 4096] = tag
            b[k * 4096 + 4095] = tag
          }
          live.append((p, n))
        }
      }
      for (p, _) in live { v.vfree(p) }
    }
    #expect(errors.load(ordering: .relaxed) == 0)
    // At most 4 threads x 7 areas x 64 pages live of 16384: no vmalloc fails, and more than
    // half of the 1600 rounds allocate.
    #expect(allocated.load(ordering: .relaxed) > 800)
    try expectClean(a, v, free: free)
  }
}
