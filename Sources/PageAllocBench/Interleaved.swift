/// Runs each of `variants` over `total` iterations split into up to `passes` passes, the
/// variants interleaved within each pass and the order rotated from pass to pass (A B C,
/// B C A, C A B, ...), and returns for each variant its fastest pass's time per iteration
/// scaled to `total`.
///
/// A burst of noise on a shared machine then lands on one pass of every variant rather
/// than on one variant's whole run, no variant always runs first or last, and the ratios
/// between variants stay honest. `measure`
/// gets the variant, the iterations of this pass, and the index of this step among all
/// `variants.count * passes` steps (for progress).
func interleavedBest<V: Hashable>(
  _ variants: [V], total: Int, passes: Int, _ measure: (V, _ count: Int, _ step: Int) throws -> UInt64
) rethrows -> [V: UInt64] {
  var bestPerIteration: [V: Double] = [:]
  var step = 0
  for pass in 0..<passes {
    let count = total * (pass + 1) / passes - total * pass / passes
    for k in 0..<variants.count {
      let v = variants[(k + pass) % variants.count]
      defer { step += 1 }
      if count == 0 { continue }
      let ns = try measure(v, count, step)
      let per = Double(ns) / Double(count)
      if let b = bestPerIteration[v], b <= per { continue }
      bestPerIteration[v] = per
    }
  }
  return bestPerIteration.mapValues { UInt64(($0 * Double(total)).rounded()) }
}
