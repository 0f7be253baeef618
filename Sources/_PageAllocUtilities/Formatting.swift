// Number and column formatting for the text the package prints (no Foundation): one
// definition each, used by the allocator's trace text, the /proc views, the bench report,
// the replay report and the stress summary.

/// `x` with exactly `decimals` decimals (`%.Nf`).
package func fixed(_ x: Double, _ decimals: Int) -> String {
  guard x.isFinite else { return x.isNaN ? "nan" : (x < 0 ? "-inf" : "inf") }
  var m = 1.0
  for _ in 0..<decimals { m *= 10 }
  let scaled = (abs(x) * m).rounded()
  guard scaled < 9e18 else { return String(x) }
  let v = UInt64(scaled)
  let ip = v / UInt64(m)
  var s = (x < 0 && v != 0 ? "-" : "") + String(ip)
  if decimals > 0 {
    let frac = String(v % UInt64(m))
    s += "." + String(repeating: "0", count: decimals - frac.count) + frac
  }
  return s
}

/// A short human form: integers as such, values of 100 or more with one decimal, smaller
/// ones with three.
package func formatNumber(_ x: Double) -> String {
  if x == x.rounded() && abs(x) < 1e15 { return String(Int64(x)) }
  if abs(x) >= 100 { return fixed(x, 1) }
  return fixed(x, 3)
}

/// A JSON number: integers as such, others with 3 or 4 decimals, `null` when not finite.
package func jsonNumber(_ x: Double) -> String {
  guard x.isFinite else { return "null" }
  if x == x.rounded() && abs(x) < 1e15 { return String(Int64(x)) }
  return fixed(x, abs(x) < 10 ? 4 : 3)
}

/// `%Ns`: `s` right-aligned in `width` columns (never truncated).
package func pad(_ s: String, _ width: Int) -> String {
  s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}

/// `%-Ns`: `s` left-aligned in `width` columns (never truncated).
package func padRight(_ s: String, _ width: Int) -> String {
  s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}
