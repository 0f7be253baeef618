import Glibc
import Synchronization

/// The memmap: page records grouped in sections, with holes, plus the pageblock bitmap.
///
/// Models SPARSEMEM's `mem_section[]` and `pfn_to_page()`: a pfn reaches its record only
/// through its section, and each present section's records are a separate array (separated
/// by an unmapped guard page here), so walking records with `p + 1` across a section
/// boundary would be a bug, exactly the reason the kernel's free_contig_range closes a run
/// at a section boundary.
///
/// Records live in anonymous `MAP_NORESERVE` memory and start out zeroed, which is a valid
/// state for every field (refcount 0, no flags, order 0); links are only read for pages on
/// a list.
@usableFromInline
struct MemMap {
  /// First pfn covered (section aligned).
  @usableFromInline let basePFN: Int
  /// One past the last pfn covered (section aligned).
  @usableFromInline let endPFN: Int
  @usableFromInline let sectionShift: Int
  @usableFromInline let sectionMask: Int
  @usableFromInline let sectionCount: Int
  /// `sections[i]` = records of section i (pfn base + i << shift), or nil for a hole.
  @usableFromInline let sections: UnsafeMutablePointer<UnsafeMutablePointer<PageRecord>?>
  /// Pageblock migratetype bytes: the type in ``typeMask``, PB_migrate_isolate in
  /// ``isolateBit``.
  @usableFromInline let pageblocks: UnsafeMutablePointer<Atomic<UInt8>>
  let region: UnsafeMutableRawPointer?
  let regionBytes: Int

  /// The migratetype bits of a pageblock byte (MIGRATETYPE_MASK).
  @usableFromInline static let typeMask: UInt8 = 0b111
  /// PB_migrate_isolate: the pageblock is isolated; its free blocks are on the Isolate lists.
  @usableFromInline static let isolateBit: UInt8 = 1 << 3

  init(basePFN: Int, endPFN: Int, sectionShift: Int, present: (Int) -> Bool) throws(ConfigurationError) {
    self.basePFN = basePFN
    self.endPFN = endPFN
    self.sectionShift = sectionShift
    self.sectionMask = (1 << sectionShift) - 1
    let count = (endPFN - basePFN) >> sectionShift
    self.sectionCount = count
    sections = .allocate(capacity: max(count, 1))
    var presentIdx: [Int] = []
    for s in 0..<count where present(basePFN + (s << sectionShift)) { presentIdx.append(s) }
    let sectionBytes = (1 << sectionShift) * MemoryLayout<PageRecord>.stride
    let stride = sectionBytes + PageGeometry.pageSize  // a guard page between sections
    let bytes = presentIdx.count * stride
    regionBytes = bytes
    if bytes > 0 {
      let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
      guard let p, p != MAP_FAILED else {
        sections.deallocate()
        throw ConfigurationError.mapFailed("mmap of the memmap", errno: errno)
      }
      region = p
    } else {
      region = nil
    }
    for s in 0..<count { sections[s] = nil }
    for (i, s) in presentIdx.enumerated() {
      let raw = region! + i * stride
      // Guard page after the records of this section.
      mprotect(raw + sectionBytes, PageGeometry.pageSize, PROT_NONE)
      sections[s] = raw.bindMemory(to: PageRecord.self, capacity: 1 << sectionShift)
    }
    let blocks = max((endPFN - basePFN) >> PageGeometry.pageblockOrder, 1)
    let pb = UnsafeMutableRawPointer.allocate(byteCount: blocks, alignment: 8)
    pb.initializeMemory(as: UInt8.self, repeating: UInt8(MigrateType.movable.rawValue), count: blocks)
    pageblocks = pb.bindMemory(to: Atomic<UInt8>.self, capacity: blocks)
  }

  /// Every record back to zero and every pageblock Movable, as `init` leaves them.
  func clear() {
    let sectionBytes = (1 << sectionShift) * MemoryLayout<PageRecord>.stride
    for s in 0..<sectionCount {
      if let r = sections[s] { memset(r, 0, sectionBytes) }
    }
    for b in 0..<max((endPFN - basePFN) >> PageGeometry.pageblockOrder, 1) {
      pageblocks[b].store(UInt8(MigrateType.movable.rawValue), ordering: .relaxed)
    }
  }

  func deallocate() {
    if let region { munmap(region, regionBytes) }
    sections.deallocate()
    UnsafeMutableRawPointer(pageblocks).deallocate()
  }

  /// `pfn_to_page()`: the record of `pfn`, or nil outside the memmap or in a hole.
  @inlinable @inline(__always)
  func record(_ pfn: Int) -> UnsafeMutablePointer<PageRecord>? {
    let off = pfn &- basePFN
    if _slowPath(off < 0 || pfn >= endPFN) { return nil }
    guard let base = sections[off &>> sectionShift] else { return nil }
    return base + (off & sectionMask)
  }

  /// The record of a pfn known to be present.
  @inlinable @inline(__always)
  func presentRecord(_ pfn: Int) -> UnsafeMutablePointer<PageRecord> {
    let off = pfn &- basePFN
    return sections[off &>> sectionShift].unsafelyUnwrapped + (off & sectionMask)
  }

  /// The first pfn of the section holding `pfn`, and one past its last.
  @inlinable @inline(__always)
  func sectionEnd(_ pfn: Int) -> Int {
    ((pfn &- basePFN) | sectionMask) &+ 1 &+ basePFN
  }

  @inlinable @inline(__always)
  func isPresent(_ pfn: Int) -> Bool { record(pfn) != nil }

  // MARK: Pageblocks

  @inlinable @inline(__always)
  func pageblockIndex(_ pfn: Int) -> Int { (pfn &- basePFN) &>> PageGeometry.pageblockOrder }

  /// The pageblock's migratetype, ignoring isolation (`get_pageblock_migratetype`).
  @inlinable @inline(__always)
  func storedMigrateType(_ pfn: Int) -> MigrateType {
    MigrateType(rawValue: Int(pageblocks[pageblockIndex(pfn)].load(ordering: .relaxed) & MemMap.typeMask))!
  }

  /// The free-list type of the pageblock: ``MigrateType/isolate`` when isolated.
  @inlinable @inline(__always)
  func freeListType(_ pfn: Int) -> MigrateType {
    let v = pageblocks[pageblockIndex(pfn)].load(ordering: .relaxed)
    if v & MemMap.isolateBit != 0 { return .isolate }
    return MigrateType(rawValue: Int(v & MemMap.typeMask)).unsafelyUnwrapped
  }

  @inlinable @inline(__always)
  func freeListTypeRaw(_ pfn: Int) -> Int {
    let v = pageblocks[pageblockIndex(pfn)].load(ordering: .relaxed)
    return v & MemMap.isolateBit != 0 ? MigrateType.isolate.rawValue : Int(v & MemMap.typeMask)
  }

  @usableFromInline
  func setMigrateType(_ pfn: Int, _ mt: MigrateType) {
    precondition(mt != .isolate)
    let a = pageblocks + pageblockIndex(pfn)
    let old = a.pointee.load(ordering: .relaxed)
    a.pointee.store((old & ~MemMap.typeMask) | UInt8(mt.rawValue), ordering: .relaxed)
  }

  @usableFromInline
  func setIsolated(_ pfn: Int, _ on: Bool) {
    let a = pageblocks + pageblockIndex(pfn)
    let old = a.pointee.load(ordering: .relaxed)
    a.pointee.store(on ? (old | MemMap.isolateBit) : (old & ~MemMap.isolateBit), ordering: .relaxed)
  }

  @usableFromInline
  func isIsolated(_ pfn: Int) -> Bool {
    pageblocks[pageblockIndex(pfn)].load(ordering: .relaxed) & MemMap.isolateBit != 0
  }
}
