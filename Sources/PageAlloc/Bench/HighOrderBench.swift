import Glibc

/// Placeholder kernel of the high-order benchmark (replaced by the bench harness).
public enum HighOrderBench {
  public static func run(order: Int, iterations: Int) throws -> String {
    let a = try PageAllocator(configuration: .normal(pages: 1 << 16, cpuCount: 2, backing: .none))
    func now() -> UInt64 {
      var ts = timespec()
      clock_gettime(CLOCK_MONOTONIC, &ts)
      return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
    var t0 = now()
    for _ in 0..<iterations {
      let p = a.allocPages(order: order, gfp: .kernel)!
      a.splitPage(p, order: order)
      for i in 0..<(1 << order) { a.putPage(p + i) }
    }
    let before = now() - t0
    t0 = now()
    for _ in 0..<iterations {
      let p = a.allocPages(order: order, gfp: .kernel)!
      a.splitPage(p, order: order)
      a.freeContigRange(p, count: 1 << order)
    }
    let after = now() - t0
    try a.verify()
    return "Execution time before: \(before / 1000) usec\nExecution time after: \(after / 1000) usec\nspeedup \(Double(before) / Double(after))"
  }
}
