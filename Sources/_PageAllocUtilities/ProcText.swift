/// One zone's line of `/proc/buddyinfo` (`frag_show_print()`): the node, the zone name
/// right-aligned in 8 columns, then the free block count of every order in 6 columns.
package func buddyInfoLine(node: Int = 0, zone: String, counts: [Int]) -> String {
  var s = "Node \(node), zone " + pad(zone, 8) + " "
  for c in counts { s += pad(String(c), 6) + " " }
  return s + "\n"
}
