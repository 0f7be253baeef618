// libFuzzer target (a): API call sequences decoded from bytes.
//
// Each input builds a small allocator (APISequence.fuzzConfiguration: a DMA zone ending
// inside a pageblock, a Normal zone with a memmap hole, 1024-page sections, backing .none)
// and decodes its bytes into the API-sequence driver's ops: well-formed calls on what the
// sequence holds (movable blocks with owners and compaction among them: compactZone,
// compactAll, proactive compaction, kcompactd's round, contiguous ranges that migrate),
// and hostile ones on arbitrary pfns and orders (double frees, wrong
// orders, foreign pfns, compound heads, flags set on pages in use, split/get/put of free
// pages). After the sequence the allocator must verify(); then everything held is freed,
// and after a drain every managed page must be free or quarantined, but for pages of
// allocations a hostile call reached (the driver's damagedPages: a hostile getPage's
// reference, a block head freed as one page, are the caller's own doing). A trap, a
// verification failure or a lost page is a crash. Built by Fuzz/build.sh against the
// package's modules.

import PageAlloc
import PageAllocStress

/// The managed pages neither on a free list nor quarantined (after a drain).
func lostPages(_ a: PageAllocator) -> [PFN] {
  var free = Set<PFN>()
  for b in a.freeBlocks() { for i in 0..<(1 << b.order) { free.insert(b.pfn + i) } }
  var out: [PFN] = []
  for z in a.configuration.zones {
    for p in z.pfns where a.isPresent(p) && !free.contains(p) && !a.isQuarantined(p) { out.append(p) }
  }
  return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func apiSequenceFuzzTest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  let bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
  // Pinned to a CPU (per thread, not per allocator), so that an input's pcp lists do not
  // depend on where the scheduler runs the fuzzer: a crash reproduces.
  PageAllocator.setThreadCPU(0)
  defer { PageAllocator.setThreadCPU(nil) }
  let a: PageAllocator
  do { a = try PageAllocator(configuration: APISequence.fuzzConfiguration) } catch { fatalError("init: \(error)") }
  var d = APISequence(a)
  var r = ByteReader(bytes)
  var ops: [APISequence.Op] = []
  while !r.atEnd && ops.count < 4096 {
    let op = d.decode(&r, hostile: true)
    ops.append(op)
    d.step(op)
  }
  func fail(_ what: String) -> Never {
    fatalError("\(what); the last ops: \(ops.suffix(12).map { "\($0)" }.joined(separator: "; "))")
  }
  do { try a.verify() } catch { fail("verify after the sequence: \(error)") }
  // Free what is still held (well-formed or not), then the allocator must verify again.
  d.releaseAll()
  a.drainAllPages()
  do { try a.verify() } catch { fail("verify after cleanup: \(error)") }
  if a.freePageCount + a.quarantinedPageCount != a.managedPageCount {
    // Only pages of allocations the sequence broke itself may stay allocated.
    let lost = lostPages(a)
    let unexplained = lost.filter { !d.damagedPages.contains($0) }
    if !unexplained.isEmpty || lost.count != a.managedPageCount - a.freePageCount - a.quarantinedPageCount {
      fail(
        "pages lost: \(lost.count) (free \(a.freePageCount), quarantined \(a.quarantinedPageCount) of"
          + " \(a.managedPageCount)), not damaged by a hostile call: \(unexplained.prefix(16))")
    }
  }
  return 0
}
