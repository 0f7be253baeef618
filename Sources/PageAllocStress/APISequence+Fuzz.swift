import PageAlloc

extension APISequence {
  /// The most ops one input decodes to (longer inputs are cut there).
  package static let fuzzMaxOps = 4096

  /// One input of the API-sequence fuzzer (Fuzz/APISequenceFuzz.swift), and of the tests
  /// that replay its seed corpus: `a` (any allocator with ``fuzzConfiguration``) is reset
  /// to its boot state, the bytes are decoded into ops (hostile ones included) and
  /// applied, the allocator must verify(); then everything held is freed, the pcp lists
  /// drained, and it must verify again with every managed page free or quarantined, but
  /// for pages of allocations a hostile call reached (``damagedPages``: a hostile
  /// getPage's reference, a block head freed as one page, are the caller's own doing).
  ///
  /// Runs on CPU 0 (a thread override, restored after), so that an input's pcp lists do
  /// not depend on where the scheduler runs it. Returns nil, or what went wrong with the
  /// last ops.
  package static func checkFuzzInput(_ bytes: UnsafeRawBufferPointer, on a: PageAllocator) -> String? {
    a.resetToBoot()
    return PageAllocator.withThreadCPU(0) {
      var d = APISequence(a)
      var r = ByteReader(bytes)
      var ops: [Op] = []
      while !r.atEnd && ops.count < fuzzMaxOps {
        let op = d.decode(&r, hostile: true)
        ops.append(op)
        d.step(op)
      }
      func failure(_ what: String) -> String {
        "\(what); \(ops.count) ops, the last: \(ops.suffix(12).map { "\($0)" }.joined(separator: "; "))"
      }
      do { try a.verify() } catch { return failure("verify after the sequence: \(error)") }
      // Free what is still held (well-formed or not), then the allocator must verify again.
      d.releaseAll()
      a.drainAllPages()
      do { try a.verify() } catch { return failure("verify after cleanup: \(error)") }
      let missing = a.managedPageCount - a.freePageCount - a.quarantinedPageCount
      if missing != 0 {
        // Only pages of allocations the sequence broke itself may stay allocated.
        let lost = lostPages(a)
        let unexplained = lost.filter { !d.damagedPages.contains($0) }
        if !unexplained.isEmpty || lost.count != missing {
          return failure(
            "pages lost: \(lost.count) (free \(a.freePageCount), quarantined \(a.quarantinedPageCount) of"
              + " \(a.managedPageCount)), not damaged by a hostile call: \(unexplained.prefix(16))")
        }
      }
      return nil
    }
  }

  /// The managed pages neither on a free list nor quarantined (after a drain).
  static func lostPages(_ a: PageAllocator) -> [PFN] {
    var free = Set<PFN>()
    for b in a.freeBlocks() { for i in 0..<(1 << b.order) { free.insert(b.pfn + i) } }
    var out: [PFN] = []
    for z in a.configuration.zones {
      for p in z.pfns where a.isPresent(p) && !free.contains(p) && !a.isQuarantined(p) { out.append(p) }
    }
    return out
  }
}
