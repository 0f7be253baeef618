import Glibc

/// The text of the file at `path`, read to its end whatever its size claims (the files of
/// /proc and tracefs report size 0), or nil when it cannot be opened or read, or holds
/// more than `limit` bytes.
package func readTextFile(_ path: String, limit: Int = 64 << 20) -> String? {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { return nil }
  defer { close(fd) }
  var bytes: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 65536)
  while true {
    let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    if n < 0 {
      if errno == EINTR { continue }
      return nil
    }
    if n == 0 { break }
    bytes.append(contentsOf: chunk[0..<n])
    if bytes.count > limit { return nil }
  }
  return String(decoding: bytes, as: UTF8.self)
}
