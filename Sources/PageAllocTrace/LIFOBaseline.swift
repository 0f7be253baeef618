import PageAlloc

/// The comparison figure for `pagealloc replay --predict`: the simplest model of the pcp
/// lists that a trace suggests, not PageAlloc's.
///
/// One stack per (CPU, order, migratetype): an `mm_page_free` of a pcp order pushes the
/// page on the stack of its last allocation's migratetype (Movable when the trace never
/// allocated it); a burst of `mm_page_alloc_zone_locked ... percpu_refill=1` empties the
/// stack (the kernel refills only an empty list) and fills it from the bottom in order;
/// an `mm_page_alloc` of a pcp order is predicted when its stack is not empty, a hit when
/// the page is on top; a page allocated or drained leaves whichever stack holds it. No
/// pageblock types, no batched-free timing, no learning.
struct LIFOBaseline {
  struct Key: Hashable {
    var cpu: Int
    var order: Int
    var mt: Int
  }
  var stacks: [Key: [Int]] = [:]
  var whereIs: [Int: Key] = [:]
  var allocType: [Int: Int] = [:]
  var lastRefill: [Int: Key] = [:]
  var score = PredictionReport.Score()

  mutating func remove(_ pfn: Int) {
    guard let k = whereIs.removeValue(forKey: pfn), let i = stacks[k]?.lastIndex(of: pfn) else { return }
    stacks[k]!.remove(at: i)
  }

  mutating func observe(_ e: ReplayEvent, cpu: Int) {
    let order = Int(e.order)
    let pcpOrder = PageAllocator.isPcpOrder(order)
    if e.kind != .zoneLocked { lastRefill[cpu] = nil }
    switch e.kind {
    case .alloc:
      let mt = Int(e.migrateType)
      if pcpOrder && mt < MigrateType.pcpTypes, let top = stacks[Key(cpu: cpu, order: order, mt: mt)]?.last {
        score.predicted += 1
        if top == e.pfn { score.hits += 1 }
      }
      remove(e.pfn)
      allocType[e.pfn] = Int(e.migrateType)
    case .zoneLocked where e.percpuRefill && pcpOrder:
      let k = Key(cpu: cpu, order: order, mt: Int(e.migrateType))
      remove(e.pfn)
      if lastRefill[cpu] != k {
        for p in stacks[k] ?? [] { whereIs[p] = nil }
        stacks[k] = []
      }
      stacks[k, default: []].insert(e.pfn, at: 0)
      whereIs[e.pfn] = k
      lastRefill[cpu] = k
    case .free where pcpOrder:
      let t = allocType[e.pfn] ?? MigrateType.movable.rawValue
      let k = Key(cpu: cpu, order: order, mt: t < MigrateType.pcpTypes ? t : MigrateType.movable.rawValue)
      remove(e.pfn)
      stacks[k, default: []].append(e.pfn)
      whereIs[e.pfn] = k
    case .drain:
      remove(e.pfn)
    default:
      break
    }
  }
}
