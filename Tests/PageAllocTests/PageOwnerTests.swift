import Foundation
@testable import PageAlloc
import PageAllocTestSupport
import Testing

/// Allocates `count` order-`order` blocks and keeps them: the leak the report must name.
/// `@inline(never)` so that an optimized build keeps it a frame of its own (an internal
/// function: the symbolizer reads the test binary's own symbol table).
@inline(never)
func leakPagesForPageOwnerTest(_ a: PageAllocator, count: Int, order: Int) -> [PFN] {
  var out: [PFN] = []
  for _ in 0..<count {
    if let p = a.allocPages(order: order, gfp: .kernel) { out.append(p) }
  }
  return out
}

/// Allocates one order-0 page with `.highUserMovable`: a second stack for the grouping.
@inline(never)
func allocateMovablePageForPageOwnerTest(_ a: PageAllocator) -> PFN? {
  a.allocPages(order: 0, gfp: .highUserMovable)
}

/// Frees an order-0 page: the free stack a double-free report must name.
@inline(never)
func freeOncePageOwnerTest(_ a: PageAllocator, _ p: PFN) {
  a.freePages(p, order: 0)
}

func ownerAllocator(pages: Int = 1 << 14, backing: Backing = .none, poison: Bool = false) throws -> PageAllocator {
  try PageAllocator(
    configuration: .init(
      zones: [ZoneConfiguration(kind: .normal, pfns: PFN(0)..<PFN(pages))], cpuCount: 1, backing: backing,
      poisonPages: poison, pageOwner: true))
}

@Suite struct PageOwnerTests {
  @Test func aLeakReportNamesTheFunctionThatAllocated() throws {
    let a = try ownerAllocator()
    #expect(a.isPageOwnerEnabled)
    #expect(a.leakReport().isEmpty)
    let leaked = leakPagesForPageOwnerTest(a, count: 3, order: 2)
    let movable = try #require(allocateMovablePageForPageOwnerTest(a))
    let report = a.leakReport()
    #expect(report.pages == 13)
    #expect(report.allocations == 4)
    // Most pages first: the three order-2 blocks, then the movable page.
    #expect(report.groups.map(\.pages) == [12, 1])
    #expect(report.groups[0].heads == leaked.sorted())
    #expect(report.groups[1].heads == [movable])
    let frames = try #require(report.groups[0].stack).frames
    #expect(frames.contains { $0.contains("leakPagesForPageOwnerTest") })
    #expect(!frames.contains { $0.contains("allocateMovablePageForPageOwnerTest") })
    #expect(report.groups[1].stack?.frames.contains { $0.contains("allocateMovablePageForPageOwnerTest") } == true)
    // Every frame is `symbol+0xOFF/0xSIZE` or a raw address.
    let pS = #/^(.+\+0x[0-9a-f]+/0x[0-9a-f]+( \[.+\])?|0x[0-9a-f]+( \[.+\+0x[0-9a-f]+\])?)$/#
    for f in frames { #expect(f.wholeMatch(of: pS) != nil, "\(f)") }
    let text = report.description
    #expect(text.hasPrefix("pagealloc: 13 pages in 4 allocations still held, from 2 stacks\n"))
    #expect(text.contains("12 pages in 3 allocations (pfn "))
    #expect(text.contains("leakPagesForPageOwnerTest"))
    for p in leaked { a.freePages(p, order: 2) }
    a.freePages(movable, order: 0)
    #expect(a.leakReport().isEmpty)
    #expect(a.leakReport().description == "pagealloc: no page is held\n")
    try a.verify()
  }

  /// The dump parses back with page_owner_sort's own expressions, and holds one record per
  /// live allocation, at its head.
  @Test func thePageOwnerTextHasTheKernelLayout() throws {
    let a = try ownerAllocator()
    let blocks = leakPagesForPageOwnerTest(a, count: 2, order: 3)
    let freed = try #require(a.allocPages(order: 0, gfp: .kernel))
    a.freePages(freed, order: 0)
    let split = try #require(a.allocPages(order: 1, gfp: [.kernel, .zero]))
    a.splitPage(split, order: 1)
    let movable = try #require(allocateMovablePageForPageOwnerTest(a))
    let text = a.pageOwnerText()
    let blocksText = text.components(separatedBy: "\n\n").filter { !$0.isEmpty }
    // 2 order-3 blocks, 2 pages of the split block, the movable page; not the freed page.
    #expect(blocksText.count == 5)
    #expect(text.hasSuffix("\n\n"))
    let first =
      #/^Page allocated via order (\d+), mask (0x[0-9a-f]+|0)\(([A-Z_|a-z0-9]+)\), pid (-?\d+), tgid (-?\d+) \((.*)\), ts (\d+) ns$/#
    let second =
      #/^PFN 0x([0-9a-f]+) type (Unmovable|Movable|Reclaimable) Block (\d+) type (Unmovable|Movable|Reclaimable|HighAtomic|CMA|Isolate) Flags 0x[0-9a-f]+\((.*)\)$/#
    var seen: [(pfn: Int, order: Int)] = []
    for b in blocksText {
      let lines = b.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
      let m1 = try #require(lines[0].wholeMatch(of: first), "\(lines[0])")
      let m2 = try #require(lines[1].wholeMatch(of: second), "\(lines[1])")
      let pfn = Int(m2.1, radix: 16)!
      let order = Int(m1.1)!
      seen.append((pfn, order))
      #expect(Int(m2.3)! == pfn >> 9)
      #expect(Int32(m1.4)! == getpid() || Int32(m1.4)! > 0)
      #expect(Int32(m1.5)! == getpid())
      // page_owner_sort: "pid" digits before ",", comm between the tgid and ", ts".
      #expect(m1.7.count > 0)
      #expect(lines.count > 2)
      for l in lines.dropFirst(2) { #expect(l.hasPrefix(" ") && !l.hasPrefix("  "), "\(l)") }
      if pfn == movable.value {
        #expect(m1.2 == "0x\(String(GFP.highUserMovable.rawValue, radix: 16))")
        #expect(m1.3 == "GFP_HIGHUSER_MOVABLE")
        #expect(m2.2 == "Movable")
      } else {
        #expect(m2.2 == "Unmovable")
      }
    }
    let expected =
      blocks.map { ($0.value, 3) } + [(split.value, 0), (split.value + 1, 0), (movable.value, 0)]
    #expect(seen.map(\.pfn) == expected.map(\.0).sorted())
    for (p, o) in expected { #expect(seen.contains { $0.pfn == p && $0.order == o }) }
    // The summary of page_owner_sort --cull=stacktrace.
    let summary = a.pageOwnerSummary()
    #expect(summary.hasPrefix("2 times, 16 pages:\n "))
    #expect(summary.contains("\n\n1 times, 1 pages:\n "))
    let groups = a.pageOwnerStacks()
    #expect(groups.map(\.allocations) == [2, 2, 1])
    for b in blocks { a.freePages(b, order: 3) }
    a.freePages(split, order: 0)
    a.freePages(split + 1, order: 0)
    a.freePages(movable, order: 0)
    #expect(a.pageOwnerText().isEmpty)
    try a.verify()
  }

  @Test func aPageRecordsItsAllocationAndItsLastFree() throws {
    let a = try ownerAllocator()
    let before = a.pageOwner(of: PFN(0))
    #expect(before == nil)
    let p = try #require(a.allocPages(order: 2, gfp: .kernel))
    let r = try #require(a.pageOwner(of: p + 3))  // a tail page has its own record
    #expect(r.isAllocated && r.order == 2 && r.gfp == .kernel && r.freeStack == nil && r.freeTask == nil)
    #expect(r.task.tgid == getpid())
    a.freePages(p, order: 2)
    let f = try #require(a.pageOwner(of: p + 3))
    #expect(!f.isAllocated)
    #expect(f.timestamp == r.timestamp)
    #expect(try #require(f.freeTimestamp) >= r.timestamp)
    #expect(f.freeStack != nil)
    #expect(f.dumpLines[0] == "page_owner tracks the page as freed")
    #expect(
      f.dumpLines[1].hasPrefix(
        "page last allocated via order 2, migratetype Unmovable, gfp_mask 0xcc0(GFP_KERNEL), pid "))
    #expect(f.dumpLines.contains { $0.hasPrefix("page last free pid ") && $0.hasSuffix(" stack trace:") })
  }

  /// A double free names the allocation and, from the page's last free, who freed it first.
  @Test func aDoubleFreeReportNamesTheFirstFree() throws {
    let a = try ownerAllocator()
    let p = try #require(leakPagesForPageOwnerTest(a, count: 1, order: 0).first)
    freeOncePageOwnerTest(a, p)
    a.freePages(p, order: 0)
    let report = try #require(a.badPageReports.first)
    #expect(report.kind == .doubleFree)
    let owner = try #require(report.owner)
    #expect(!owner.isAllocated)
    #expect(owner.allocationStack?.frames.contains { $0.contains("leakPagesForPageOwnerTest") } == true)
    #expect(owner.freeStack?.frames.contains { $0.contains("freeOncePageOwnerTest") } == true)
    let text = report.fullText
    #expect(
      text.hasPrefix(
        report.description + "\npage dumped because: nonzero mapcount\npage_owner tracks the page as freed\n"))
    #expect(text.contains("freeOncePageOwnerTest"))
    // Without page_owner a report has no owner.
    let plain = try makeAllocator(pages: 4096)
    let q = try #require(plain.allocPages(order: 0, gfp: .kernel))
    plain.freePages(q, order: 0)
    plain.freePages(q, order: 0)
    #expect(plain.badPageReports.first?.owner == nil)
  }

  @Test func migrationCopiesTheRecordAndKeepsTheReason() throws {
    let a = try ownerAllocator()
    let old = try #require(leakPagesForPageOwnerTest(a, count: 1, order: 1).first)
    let new = try #require(a.allocPages(order: 1, gfp: .highUserMovable))
    a.ownerMigrate(from: old.value, to: new.value, order: 1, reason: .compaction)
    let r = try #require(a.pageOwner(of: new))
    #expect(r.lastMigrateReason == .compaction)
    #expect(r.allocationStack == a.pageOwner(of: old)?.allocationStack)
    #expect(r.debugfsText.contains("\nPage has been migrated, last migrate reason: compaction\n"))
    // A new allocation clears the reason.
    a.freePages(new, order: 1)
    let again = try #require(a.allocPages(order: 1, gfp: .highUserMovable))
    #expect(again == new)
    #expect(a.pageOwner(of: again)?.lastMigrateReason == nil)
  }
}
