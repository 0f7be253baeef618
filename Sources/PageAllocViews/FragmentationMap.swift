import PageAlloc
import _PageAllocUtilities

/// A picture of the allocator's free memory: the pfn space as a grid of pageblocks, each
/// coloured by its migratetype and shaded by how much of it is free (pcp pages count as
/// free), hatched when its free memory is only small blocks, plus a bar chart of free
/// pages per order. `pagealloc map --svg` and `pagealloc replay --map` write it.
public struct FragmentationMap: Sendable {
  /// One pageblock.
  public struct Cell: Sendable, Hashable {
    public var pfn: PFN
    /// nil for a pageblock in a memmap hole or outside every zone.
    public var type: MigrateType?
    public var freePages: Int
    /// The largest free block (order) inside the pageblock, -1 when none.
    public var largestFreeOrder: Int
    /// Allocated pages by the migratetype of their allocation (0...5, index 6 unknown),
    /// when known (a trace replay); nil otherwise.
    public var allocatedByType: [Int]?

    /// The type the cell is drawn in: the majority type of its allocations when they are
    /// known, else the pageblock's type.
    public var displayType: MigrateType? {
      guard let type else { return nil }
      guard let c = allocatedByType, c[0..<6].reduce(0, +) > 0 else { return type }
      let best = (0..<6).max { c[$0] < c[$1] }!
      return MigrateType(rawValue: best)
    }

    /// Allocations of more than one migratetype in the block (known types only): the
    /// kernel's "mixed" pageblock, where an unmovable page pins a movable block.
    public var isMixed: Bool {
      guard let c = allocatedByType else { return false }
      return c[0..<6].filter { $0 > 0 }.count > 1
    }

    /// Free memory here, but only in blocks of order 3 or less (PAGE_ALLOC_COSTLY_ORDER):
    /// at least 1/16 of the block free and no free block above order 3.
    public var isFragmented: Bool {
      freePages >= PageGeometry.pageblockPages / 16 && largestFreeOrder <= PageGeometry.costlyOrder
    }
  }

  public var cells: [Cell]
  /// Free pages (not blocks) at each order 0...10, buddy and pcp together.
  public var freePagesPerOrder: [Int]
  /// Free blocks at each order, buddy and pcp together.
  public var freeBlocksPerOrder: [Int]
  public var zones: [ZoneConfiguration]

  /// Whether cells carry allocation types (a replay's map).
  public var hasAllocationTypes: Bool

  /// Reads the allocator's free blocks (buddy lists and pcp lists) and pageblock types.
  /// `allocatedByType` (one entry per pageblock from the first zone's start rounded down
  /// to a pageblock, e.g. `ReplayReport.allocatedByType`) colours each cell by the
  /// migratetype of the allocations in it and marks mixed blocks.
  public init(allocator a: PageAllocator, allocatedByType: [[Int]]? = nil) {
    hasAllocationTypes = allocatedByType != nil
    zones = a.configuration.zones
    let pb = PageGeometry.pageblockPages
    let first = zones.first!.pfns.lowerBound.value & ~(pb - 1)
    let last = zones.last!.pfns.upperBound.value
    var cells: [Cell] = []
    var p = first
    while p < last {
      let inZone = a.zoneKind(of: PFN(p)) != nil || a.zoneKind(of: PFN(p + pb - 1)) != nil
      let t: MigrateType? = inZone && a.isPresent(PFN(p)) ? a.migrateType(of: PFN(p)) : nil
      let counts = allocatedByType.flatMap { cells.count < $0.count ? $0[cells.count] : nil }
      cells.append(Cell(pfn: PFN(p), type: t, freePages: 0, largestFreeOrder: -1, allocatedByType: counts))
      p += pb
    }
    var pages = [Int](repeating: 0, count: PageGeometry.orderCount)
    var blocks = [Int](repeating: 0, count: PageGeometry.orderCount)
    for (pfn, order) in a.freeBlocks() + a.pcpBlocks() {
      pages[order] += 1 << order
      blocks[order] += 1
      var q = pfn.value
      let end = q + (1 << order)
      while q < end {
        let i = (q - first) / pb
        let n = min(end - q, pb)
        cells[i].freePages += n
        cells[i].largestFreeOrder = max(cells[i].largestFreeOrder, min(order, PageGeometry.pageblockOrder))
        q += n
      }
    }
    self.cells = cells
    freePagesPerOrder = pages
    freeBlocksPerOrder = blocks
  }

  /// The share of free pages in blocks smaller than `order`: the kernel's unusable free
  /// space index (debugfs extfrag/unusable_index), to three decimals; 1 when nothing is
  /// free, as the kernel prints it.
  public func unusableFreeIndex(order: Int) -> Double {
    Double(PageAllocator.unusableFreeIndex(freeBlocks: freeBlocksPerOrder, order: order)) / 1000
  }

  static func colour(_ t: MigrateType) -> (Int, Int, Int) {
    switch t {
    case .unmovable: (0xC6, 0x28, 0x28)
    case .movable: (0x2E, 0x7D, 0x32)
    case .reclaimable: (0x15, 0x65, 0xC0)
    case .highAtomic: (0x6A, 0x1B, 0x9A)
    case .cma: (0xEF, 0x6C, 0x00)
    case .isolate: (0x61, 0x61, 0x61)
    }
  }

  static func hex(_ c: (Int, Int, Int)) -> String {
    func h(_ v: Int) -> String {
      let s = String(max(0, min(255, v)), radix: 16)
      return s.count == 1 ? "0" + s : s
    }
    return "#" + h(c.0) + h(c.1) + h(c.2)
  }

  /// The type colour blended towards white by the free fraction: a full block is the
  /// full colour, an empty one a pale tint.
  static func shade(_ t: MigrateType, free: Double) -> String {
    let c = colour(t)
    let k = 0.88 * free
    func mix(_ v: Int) -> Int { Int((Double(v) + (255 - Double(v)) * k).rounded()) }
    return hex((mix(c.0), mix(c.1), mix(c.2)))
  }

  /// The SVG document.
  public func svg(title: String) -> String {
    let pb = PageGeometry.pageblockPages
    let n = cells.count
    // Near-square grids for small zones, up to 256 columns of 4-pixel cells for big ones.
    let (cell, maxColumns) =
      n <= 256 ? (24, 16) : n <= 1024 ? (14, 64) : n <= 4096 ? (10, 96) : n <= 16384 ? (6, 160) : (4, 256)
    let columns = max(1, min(n, maxColumns))
    let rows = (n + columns - 1) / columns
    let margin = 20
    let gridTop = 74
    let gridW = columns * cell
    let gridH = rows * cell
    let chartTop = gridTop + gridH + 60
    let chartH = 180
    let width = max(gridW + 2 * margin, 1040)
    let height = chartTop + chartH + 60

    let totalFree = freePagesPerOrder.reduce(0, +)
    let present = cells.filter { $0.type != nil }.count
    let fragmented = cells.filter(\.isFragmented).count
    let fullyFree = cells.filter { $0.type != nil && $0.freePages == pb }.count
    let unusable = unusableFreeIndex(order: PageGeometry.pageblockOrder)
    let unusable4 = unusableFreeIndex(order: PageGeometry.costlyOrder + 1)
    let mixed = cells.filter(\.isMixed).count

    var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    s +=
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
    s +=
      "<defs><pattern id=\"frag\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\"><path d=\"M-1,1 l2,-2 M0,4 l4,-4 M3,5 l2,-2\" stroke=\"#000\" stroke-width=\"1\"/></pattern></defs>\n"
    s += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
    s += "<text x=\"\(margin)\" y=\"22\" font-size=\"15\" font-weight=\"bold\">\(xmlEscape(title))</text>\n"
    let zoneText = zones.map { "\($0.kind) \($0.pfns.lowerBound)-\($0.pfns.upperBound)" }.joined(separator: ", ")
    s +=
      "<text x=\"\(margin)\" y=\"40\" font-size=\"11\">\(xmlEscape(zoneText)): \(present) pageblocks of \(pb) pages; free \(totalFree) pages; \(fullyFree) pageblocks wholly free; \(fragmented) fragmented (hatched)</text>\n"
    var line2 =
      "unusable free index: order 4 \(fmt(unusable4)), order 9 \(fmt(unusable)) (share of free pages in smaller blocks)"
    if hasAllocationTypes {
      line2 +=
        "; colour: majority migratetype= of the pages allocated in the block; \(mixed) mixed blocks (black corner)"
    }
    s += "<text x=\"\(margin)\" y=\"55\" font-size=\"11\">\(xmlEscape(line2))</text>\n"
    // Legend.
    var lx = margin
    for t in MigrateType.allCases {
      s +=
        "<rect x=\"\(lx)\" y=\"60\" width=\"10\" height=\"10\" fill=\"\(FragmentationMap.hex(FragmentationMap.colour(t)))\"/>"
      s += "<text x=\"\(lx + 13)\" y=\"69\" font-size=\"10\">\(t)</text>\n"
      lx += 20 + t.description.count * 6
    }
    s +=
      "<rect x=\"\(lx)\" y=\"60\" width=\"10\" height=\"10\" fill=\"\(FragmentationMap.shade(.movable, free: 1))\" stroke=\"#999\" stroke-width=\"0.5\"/><text x=\"\(lx + 13)\" y=\"69\" font-size=\"10\">paler = more free</text>\n"
    lx += 110
    s +=
      "<rect x=\"\(lx)\" y=\"60\" width=\"10\" height=\"10\" fill=\"\(FragmentationMap.shade(.movable, free: 0.6))\"/><rect x=\"\(lx)\" y=\"60\" width=\"10\" height=\"10\" fill=\"url(#frag)\"/><text x=\"\(lx + 13)\" y=\"69\" font-size=\"10\">hatched = free only in blocks of order ≤ 3</text>\n"
    if hasAllocationTypes {
      lx += 225
      s +=
        "<rect x=\"\(lx)\" y=\"60\" width=\"10\" height=\"10\" fill=\"\(FragmentationMap.shade(.movable, free: 0.3))\"/><path d=\"M\(lx),60 h5 l-5,5 z\" fill=\"#000\"/><text x=\"\(lx + 13)\" y=\"69\" font-size=\"10\">mixed types</text>\n"
    }
    // Grid.
    s += "<g shape-rendering=\"crispEdges\">\n"
    for (i, c) in cells.enumerated() {
      let x = margin + (i % columns) * cell
      let y = gridTop + (i / columns) * cell
      guard let t = c.displayType else {
        s += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(cell)\" height=\"\(cell)\" fill=\"#eeeeee\"/>\n"
        continue
      }
      let fill = FragmentationMap.shade(t, free: Double(c.freePages) / Double(pb))
      s +=
        "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(cell)\" height=\"\(cell)\" fill=\"\(fill)\" stroke=\"#ffffff\" stroke-width=\"0.5\"><title>\(c.pfn) \(t): \(c.freePages)/\(pb) free, largest free order \(c.largestFreeOrder)</title></rect>\n"
      if c.isFragmented {
        s += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(cell)\" height=\"\(cell)\" fill=\"url(#frag)\" opacity=\"0.55\"/>\n"
      }
      if c.isMixed {
        let k = max(cell / 2, 3)
        s += "<path d=\"M\(x),\(y) h\(k) l-\(k),\(k) z\" fill=\"#000\"/>\n"
      }
    }
    s += "</g>\n"
    s +=
      "<text x=\"\(margin)\" y=\"\(gridTop + gridH + 14)\" font-size=\"10\" fill=\"#555\">one cell = one pageblock (\(pb) pages), \(columns) per row, pfn \(cells.first.map { "\($0.pfn)" } ?? "") at top left</text>\n"
    // Bar chart.
    let maxPages = max(freePagesPerOrder.max() ?? 0, 1)
    let barW = 40
    let gap = 14
    s +=
      "<text x=\"\(margin)\" y=\"\(chartTop - 20)\" font-size=\"12\" font-weight=\"bold\">Free pages per order (buddy and pcp lists; label: blocks)</text>\n"
    s +=
      "<line x1=\"\(margin)\" y1=\"\(chartTop + chartH)\" x2=\"\(margin + 11 * (barW + gap))\" y2=\"\(chartTop + chartH)\" stroke=\"#333\"/>\n"
    for o in 0...PageGeometry.maxOrder {
      let x = margin + o * (barW + gap)
      let h = Int((Double(freePagesPerOrder[o]) / Double(maxPages) * Double(chartH)).rounded())
      let colour = o <= PageGeometry.costlyOrder ? "#b71c1c" : o < PageGeometry.pageblockOrder ? "#f9a825" : "#2e7d32"
      s +=
        "<rect x=\"\(x)\" y=\"\(chartTop + chartH - h)\" width=\"\(barW)\" height=\"\(h)\" fill=\"\(colour)\"><title>order \(o): \(freeBlocksPerOrder[o]) blocks, \(freePagesPerOrder[o]) pages</title></rect>\n"
      s +=
        "<text x=\"\(x + barW / 2)\" y=\"\(chartTop + chartH - h - 4)\" font-size=\"10\" text-anchor=\"middle\">\(freeBlocksPerOrder[o])</text>\n"
      s +=
        "<text x=\"\(x + barW / 2)\" y=\"\(chartTop + chartH + 14)\" font-size=\"11\" text-anchor=\"middle\">\(o)</text>\n"
      let pct = totalFree > 0 ? Double(freePagesPerOrder[o]) * 100 / Double(totalFree) : 0
      s +=
        "<text x=\"\(x + barW / 2)\" y=\"\(chartTop + chartH + 28)\" font-size=\"9\" text-anchor=\"middle\" fill=\"#555\">\(fmt(pct, 1))%</text>\n"
    }
    s += "<text x=\"\(margin + 11 * (barW + gap) + 6)\" y=\"\(chartTop + chartH + 14)\" font-size=\"11\">order</text>\n"
    s +=
      "<text x=\"\(margin)\" y=\"\(chartTop + chartH + 46)\" font-size=\"10\" fill=\"#555\">red: orders 0-3 (pcp orders), amber: 4-8, green: pageblock order and above; % of free pages</text>\n"
    s += "</svg>\n"
    return s
  }

  private func fmt(_ v: Double, _ digits: Int = 2) -> String {
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let r = (v * p).rounded() / p
    var t = String(r)
    if let dot = t.firstIndex(of: ".") {
      let decimals = t.distance(from: dot, to: t.endIndex) - 1
      if decimals < digits { t += String(repeating: "0", count: digits - decimals) }
    }
    return t
  }

}
