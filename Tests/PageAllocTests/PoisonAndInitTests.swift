import Glibc
@testable import PageAlloc
import PageAllocTestSupport
import Testing

/// Frees one page: the free stack a poison report must name.
@inline(never)
func freeForPoisonTest(_ a: PageAllocator, _ p: PFN) {
  a.freePages(p, order: 0)
}

/// The same deterministic mix of every allocation and free path, returning what it saw.
func debugWorkload(_ a: PageAllocator) throws -> [Int] {
  var seen: [Int] = []
  var rng = TestRNG(seed: 11)
  var held: [(PFN, Int)] = []
  for i in 0..<600 {
    switch rng.next() % 6 {
    case 0, 1:
      let o = Int(rng.next() % 4)
      if let p = a.allocPages(order: o, gfp: i % 3 == 0 ? .highUserMovable : .kernel) {
        held.append((p, o))
        seen.append(p.value)
      }
    case 2:
      if !held.isEmpty {
        let (p, o) = held.remove(at: Int(rng.next() % UInt64(held.count)))
        a.freePages(p, order: o)
      }
    case 3:
      if let p = a.allocPages(order: 5, gfp: .kernel) {
        a.splitPage(p, order: 5)
        a.freeContigRange(p + 1, count: 31)
        held.append((p, 0))
        seen.append(p.value)
      }
    case 4:
      let bulk = a.allocPagesBulk(count: 9, gfp: .kernel)
      seen += bulk.map(\.value)
      a.freePagesBulk(bulk)
    default:
      if let p = a.allocContigPages(count: 24, gfp: .kernel) {
        seen.append(p.value)
        a.freeContigRange(p, count: 24)
      }
    }
  }
  for (p, o) in held { a.freePages(p, order: o) }
  a.drainAllPages()
  try a.verify()
  return seen
}

@Suite struct PoisonAndInitTests {
  /// check_poison_mem(): a page written after its free is reported when next allocated,
  /// with its pfn, the changed bytes and the free stack.
  @Test func aWriteAfterFreeIsReportedOnTheNextAllocation() throws {
    let a = try debugAllocator(backing: .anonymous, debugPageAlloc: false, poison: true)
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    #expect(a.badPageCount == 0)  // fresh memory holds no poison and is not checked
    let addr = try #require(a.address(of: p))
    freeForPoisonTest(a, p)
    #expect(addr.load(as: UInt8.self) == 0xaa)
    (addr + 0x123).storeBytes(of: 0x41, as: UInt8.self)  // use after free
    (addr + 0x130).storeBytes(of: 0x42, as: UInt8.self)
    let q = try #require(a.allocPages(order: 0, gfp: .kernel))  // LIFO pcp: the same page
    #expect(q == p)
    let r = try #require(a.badPageReports.first)
    #expect(a.badPageCount == 1)
    #expect(r.kind == .poisonCorrupted && r.pfn == p && r.reason == "pagealloc: memory corruption")
    #expect(!r.quarantined)
    let c = try #require(r.corruption)
    #expect(c.firstOffset == 0x123 && c.lastOffset == 0x130 && !c.singleBitError)
    #expect(c.hexDump.count == 1)
    let row = #/^[0-9a-f]{16}: 41 aa aa aa aa aa aa aa aa aa aa aa aa 42 {8}A\.{12}B$/#
    #expect(c.hexDump[0].wholeMatch(of: row) != nil, "\(c.hexDump[0])")
    let text = r.fullText
    #expect(text.hasPrefix("pagealloc: memory corruption\n" + c.hexDump[0] + "\n"))
    #expect(
      text.contains("page dumped because: pagealloc: corrupted page details\npage_owner tracks the page as freed\n"))
    #expect(text.contains("freeForPoisonTest"))
    a.freePages(q, order: 0)
    try a.verify()
  }

  @Test func oneFlippedBitIsASingleBitError() throws {
    let a = try makeAllocator(pages: 4096, backing: .anonymous, poison: true)
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    let addr = try #require(a.address(of: p))
    a.freePages(p, order: 0)
    (addr + 9).storeBytes(of: 0xab, as: UInt8.self)
    let q = try #require(a.allocPages(order: 0, gfp: .kernel))
    let r = try #require(a.badPageReports.first)
    #expect(r.reason == "pagealloc: single bit error" && r.corruption?.singleBitError == true)
    #expect(r.owner == nil)  // page_owner off
    a.freePages(q, order: 0)
    // A clean free and reallocation reports nothing more.
    _ = try #require(a.allocPages(order: 0, gfp: .kernel)).value
    #expect(a.badPageCount == 1)
  }

  @Test func initOnFreeZeroesAtFreeAndSkipsTheAllocationZeroing() throws {
    let a = try debugAllocator(backing: .anonymous, pageOwner: false, debugPageAlloc: false, initOnFree: true)
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    let addr = try #require(a.address(of: p))
    addr.storeBytes(of: 0x1122_3344, as: UInt32.self)
    a.freePages(p, order: 0)
    #expect(addr.load(as: UInt32.self) == 0)  // zeroed at free
    addr.storeBytes(of: 5, as: UInt32.self)  // a write after free survives...
    let q = try #require(a.allocPages(order: 0, gfp: [.kernel, .zero]))
    #expect(q == p)
    #expect(addr.load(as: UInt32.self) == 5)  // ...even a __GFP_ZERO allocation, as in the kernel
    a.freePages(q, order: 0)
  }

  @Test func initOnAllocZeroesEveryAllocation() throws {
    let a = try debugAllocator(backing: .anonymous, pageOwner: false, debugPageAlloc: false, initOnAlloc: true)
    let p = try #require(a.allocPages(order: 1, gfp: .kernel))
    let addr = try #require(a.address(of: p + 1))
    addr.storeBytes(of: 0xfeed, as: UInt32.self)
    a.freePages(p, order: 1)
    #expect(addr.load(as: UInt32.self) == 0xfeed)  // not zeroed at free
    let q = try #require(a.allocPages(order: 1, gfp: .kernel))
    #expect(q == p)
    #expect(addr.load(as: UInt32.self) == 0)
    a.freePages(q, order: 1)
  }

  /// Poisoning takes precedence: both init options are off while it is on.
  @Test func poisoningWinsOverInitOnFree() throws {
    let a = try debugAllocator(
      backing: .anonymous, pageOwner: false, debugPageAlloc: false, poison: true, initOnFree: true)
    let p = try #require(a.allocPages(order: 0, gfp: .kernel))
    let addr = try #require(a.address(of: p))
    a.freePages(p, order: 0)
    #expect(addr.load(as: UInt8.self) == 0xaa)
    let q = try #require(a.allocPages(order: 0, gfp: [.kernel, .zero]))
    #expect(addr.load(as: UInt8.self) == 0)  // __GFP_ZERO after the poison check
    #expect(a.badPageCount == 0)
    a.freePages(q, order: 0)
  }

  /// With every option off nothing is recorded, protected or changed; with them on, the
  /// allocator hands out the same pages and ends in the same state.
  @Test func theOptionsChangeNoAllocationDecision() throws {
    let off = try debugAllocator(pages: 1 << 13, pageOwner: false, debugPageAlloc: false)
    let on = try debugAllocator(pages: 1 << 13, poison: true, initOnAlloc: true)
    let plain = try makeAllocator(pages: 1 << 13)
    let s1 = try debugWorkload(off)
    let s2 = try debugWorkload(on)
    let s3 = try debugWorkload(plain)
    #expect(s1 == s2 && s1 == s3)
    #expect(off.zoneStatistics() == on.zoneStatistics())
    #expect(off.freeBlocks().map(\.pfn) == on.freeBlocks().map(\.pfn))
    #expect(off.badPageCount == 0 && on.badPageCount == 0)
    // Off: no record, no text, no protection.
    #expect(!off.isPageOwnerEnabled && !off.isProtectingFreePages)
    #expect(off.pageOwner(of: PFN(s1[0])) == nil)
    #expect(off.pageOwnerText().isEmpty && off.leakReport().isEmpty && off.pageOwnerStacks().isEmpty)
    #expect(off.protectionChanges.load(ordering: .relaxed) == 0)
    #expect(mappingPermissions(try #require(off.address(of: PFN(s1[0]))))?.hasPrefix("rw") == true)
    #expect(!off.debugging && !plain.debugging && on.debugging)
    // On: every page back, nothing leaked, free pages protected.
    #expect(on.leakReport().isEmpty)
    #expect(on.pageOwner(of: PFN(s1[0]))?.isAllocated == false)
    #expect(mappingPermissions(try #require(on.address(of: PFN(s1[0]))))?.hasPrefix("---") == true)
  }
}
