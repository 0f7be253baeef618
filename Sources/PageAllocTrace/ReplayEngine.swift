import PageAlloc
import CPageAllocGzip
import _PageAllocUtilities
import CPageAllocShim
import Glibc

/// The state of one replay.
final class ReplayEngine {
  let parsed: ParsedTrace
  let name: String
  let strict: Bool
  let allocator: PageAllocator
  let zoneStart: Int
  let zoneEnd: Int
  let cpuCount: Int
  /// One byte per pfn of the zone: 0 free, else allocated, as 1 + the allocation's
  /// migratetype from the trace (8: unknown, e.g. allocated before the trace).
  let state: UnsafeMutablePointer<UInt8>
  var allocs = 0
  var frees = 0
  var preallocated = 0
  var eventsParsed = 0
  /// The ``state`` of a page a prediction's first pass found on a pcp list when the trace
  /// began (held out of the buddy, free for an allocation or a drain).
  static let pcpHeld: UInt8 = 9
  /// Pages a detailed first pass found on pcp lists when the trace began.
  var pretracePcpPages = 0
  /// Pages of the zone no event names (held allocated in a prediction).
  var unnamed = 0
  /// Whether the trace has `mm_page_alloc_zone_locked` events (without them a first
  /// allocation says nothing about where the page came from).
  let hasZoneLocked: Bool
  /// Whether the first pass holds the pre-trace pcp pages (a prediction) or leaves them
  /// free (a replay, which claims pages wherever they are free).
  let holdPcpResidents: Bool
  /// Whether a prediction leaves the pages no event names free.
  let unnamedFree: Bool
  /// The timeline being sampled (`--timeline`), and the event being applied.
  var sampler: TimelineSampler?
  var currentIndex = 0
  var anomalyCounts = [Int](repeating: 0, count: ReplayAnomaly.allCases.count)
  var anomalyLines = [[Int]](repeating: [], count: ReplayAnomaly.allCases.count)

  init(parsed: ParsedTrace, name: String, options: TraceReplay.Options, holdPcpResidents: Bool = false)
    throws(ReplayError)
  {
    self.holdPcpResidents = holdPcpResidents
    unnamedFree = options.unnamedFree
    self.parsed = parsed
    self.name = name
    strict = options.strict
    hasZoneLocked = parsed.events.contains { $0.kind == .zoneLocked }
    // The zone.
    var lo = Int.max
    var hi = Int.min
    var loLine = 0
    var hiLine = 0
    var nEvents = 0
    for e in parsed.events where e.kind != .malformed {
      nEvents += 1
      if e.pfn < lo {
        lo = e.pfn
        loLine = Int(e.line)
      }
      let end = e.pfn &+ (1 &<< Int(e.order))
      if end > hi {
        hi = end
        hiLine = Int(e.line)
      }
    }
    eventsParsed = nEvents
    if let z = options.zone {
      zoneStart = z.lowerBound.value
      zoneEnd = z.upperBound.value
    } else {
      guard lo <= hi else {
        throw ReplayError(
          file: name, line: nil,
          reason: "no mm_page_alloc or mm_page_free event to replay (\(parsed.linesRead) lines read)")
      }
      zoneStart = lo & ~1023
      zoneEnd = (hi &+ 1023) & ~1023
      if zoneEnd - zoneStart > TraceReplay.maxDerivedZonePages {
        throw ReplayError(
          file: name, line: hiLine,
          reason:
            "pfns span \(PFN(zoneStart))-\(PFN(zoneEnd)) (lowest on line \(loLine)), more than 2^27 pages; give --zone START-END"
        )
      }
    }
    // The CPUs of the ftrace header's #P:, or the highest CPU seen.
    cpuCount = min(max(parsed.headerCPUs ?? 0, parsed.maxCPU + 1), 256)
    do {
      allocator = try PageAllocator(
        configuration: .init(
          zones: [ZoneConfiguration(kind: .normal, pfns: PFN(zoneStart)..<PFN(zoneEnd))], cpuCount: cpuCount,
          backing: .none))
    } catch {
      throw ReplayError(
        file: name, line: nil, reason: "cannot build the zone \(PFN(zoneStart))-\(PFN(zoneEnd)): \(error)")
    }
    state = .allocate(capacity: zoneEnd - zoneStart)
    state.initialize(repeating: 0, count: zoneEnd - zoneStart)
    firstPass()
  }

  deinit { state.deallocate() }

  /// Marks the pages whose first event is a free as allocated before the trace, and
  /// claims them. In a prediction, a page whose first event is a pcp drain, or an
  /// allocation of a pcp order that no `mm_page_alloc_zone_locked` or
  /// `mm_page_alloc_extfrag` took from the buddy first, sat on a pcp list when the trace
  /// began: it is held out of the buddy the same way (counted in ``pretracePcpPages``);
  /// and so are the pages no event names (``unnamed``).
  func firstPass() {
    let zs = zoneStart
    let ze = zoneEnd
    let n = ze - zs
    let seen = UnsafeMutablePointer<UInt8>.allocate(capacity: n)
    seen.initialize(repeating: 0, count: n)
    defer { seen.deallocate() }
    let st = state
    let detailed = holdPcpResidents && parsed.detailed && hasZoneLocked
    var pcpHeld = 0
    parsed.events.withUnsafeBufferPointer { events in
      for e in events where e.kind != .malformed {
        let c = 1 &<< Int(e.order)
        if e.pfn < zs || e.pfn &+ c > ze { continue }
        var held = e.kind == .free || e.kind == .freeBatched
        var pcpResident = false
        if detailed {
          if e.kind == .drain {
            pcpResident = true
          } else if e.kind == .alloc && PageAllocator.isPcpOrder(Int(e.order))
            && e.migrateType < UInt8(MigrateType.pcpTypes)
          {
            pcpResident = true
          }
          held = held || pcpResident
        }
        var p = e.pfn &- zs
        let end = p &+ c
        while p < end {
          if seen[p] == 0 {
            seen[p] = 1
            if held {
              st[p] = pcpResident ? ReplayEngine.pcpHeld : 1 &+ ReplayEvent.unknownType
              if pcpResident { pcpHeld &+= 1 }
            }
          }
          p &+= 1
        }
      }
    }
    pretracePcpPages = pcpHeld
    if holdPcpResidents && !unnamedFree {
      // A prediction holds the pages the trace never names as allocated: they take part
      // only as merge partners, and assumed free they put blocks at the heads of the
      // model's free lists that the kernel's did not have.
      for p in 0..<n where seen[p] == 0 {
        st[p] = 1 &+ ReplayEvent.unknownType
        unnamed &+= 1
      }
    }
    // Claim each run of pre-trace pages (not counted as allocations).
    var i = 0
    while i < n {
      if st[i] == 0 {
        i += 1
        continue
      }
      var j = i
      while j < n && st[j] != 0 { j += 1 }
      let r = allocator.claimFreeRange(zs + i, count: j - i, account: false)
      precondition(r == .claimed, "pre-trace claim failed")
      preallocated += j - i
      i = j
    }
    // The report's pre-trace pages are those freed before any allocation.
    preallocated -= unnamed + pcpHeld
  }

  @inline(never)
  func anomaly(_ k: ReplayAnomaly, _ line: Int32, _ reason: String) throws(ReplayError) {
    if strict { throw ReplayError(file: name, line: Int(line), reason: k.rawValue + ": " + reason) }
    sampler?.anomaly(k, line: Int(line), index: currentIndex, reason: reason)
    let i = ReplayAnomaly.allCases.firstIndex(of: k)!
    anomalyCounts[i] += 1
    if anomalyLines[i].count < 5 { anomalyLines[i].append(Int(line)) }
  }

  /// Applies every event (the caller then drains the pcp lists).
  func apply() throws(ReplayError) {
    let a = allocator
    let zs = zoneStart
    let ze = zoneEnd
    let st = state
    var curCPU = -1
    defer { PageAllocator.setThreadCPU(nil) }
    let events = parsed.events
    let sampler = sampler
    try events.withUnsafeBufferPointer { (events) throws(ReplayError) in
      for i in events.indices {
        let e = events[i]
        if let sampler {
          currentIndex = i
          sampler.observe(i)
        }
        if _slowPath(e.kind == .malformed) {
          try anomaly(.malformed, e.line, parsed.malformedReasons[e.pfn])
          continue
        }
        if _slowPath(e.kind != .alloc && e.kind != .free) { continue }
        let order = Int(e.order)
        let n = 1 &<< order
        if _slowPath(e.pfn < zs || e.pfn &+ n > ze) {
          try anomaly(.outOfRange, e.line, "pfn \(PFN(e.pfn)) order \(order) is outside the zone \(PFN(zs))-\(PFN(ze))")
          continue
        }
        let off = e.pfn &- zs
        let end = off &+ n
        if e.kind == .alloc {
          var p = off
          while p < end && st[p] == 0 { p &+= 1 }
          if _slowPath(p < end) {
            try anomaly(.allocBusy, e.line, "pfn \(PFN(e.pfn)) order \(order): page \(PFN(zs &+ p)) is not free")
            continue
          }
          let r = a.claimFreeRange(e.pfn, count: n)
          precondition(r == .claimed, "replay state and allocator disagree at \(PFN(e.pfn))")
          p = off
          let v = 1 &+ e.migrateType
          while p < end {
            st[p] = v
            p &+= 1
          }
          allocs &+= 1
        } else {
          var p = off
          while p < end && st[p] != 0 { p &+= 1 }
          if _slowPath(p < end) {
            try anomaly(.doubleFree, e.line, "pfn \(PFN(e.pfn)) order \(order): page \(PFN(zs &+ p)) is already free")
            continue
          }
          let cpu = Int(e.cpu) % cpuCount
          if cpu != curCPU {
            PageAllocator.setThreadCPU(cpu)
            curCPU = cpu
          }
          p = off
          while p < end {
            st[p] = 0
            p &+= 1
          }
          if order == 0 {
            a.freePages(PFN(e.pfn), order: 0)
          } else {
            a.freeContigRange(PFN(e.pfn), count: n)
          }
          frees &+= 1
        }
      }
    }
  }

  /// Per pageblock (from the zone start rounded down to a pageblock, as
  /// ``FragmentationMap`` lays its cells out): allocated pages by the migratetype their
  /// mm_page_alloc line gave, 0...5, and at index 6 the pages of unknown type.
  func allocatedByType() -> [[Int]] {
    let pb = PageGeometry.pageblockPages
    let first = zoneStart & ~(pb - 1)
    var out = [[Int]](repeating: [Int](repeating: 0, count: 7), count: (zoneEnd - first + pb - 1) / pb)
    for i in 0..<(zoneEnd - zoneStart) where state[i] != 0 {
      out[(zoneStart + i - first) / pb][min(Int(state[i]) - 1, 6)] += 1
    }
    return out
  }

  /// The replay's own record of the free pages: pfns free at the end.
  func freePFNs() -> [Int] {
    var out: [Int] = []
    for i in 0..<(zoneEnd - zoneStart) where state[i] == 0 { out.append(zoneStart + i) }
    return out
  }
}
