import Glibc

/// Writes `s` and a newline to standard error in one `write`.
package func printError(_ s: String) {
  var line = s + "\n"
  line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
}

/// Writes `s` to standard output in one `write` (no buffering to flush at exit).
package func writeStandardOutput(_ s: String) {
  var s = s
  s.withUTF8 { _ = Glibc.write(1, $0.baseAddress, $0.count) }
}

/// A file that could not be written: the path and the reason, as one line.
package struct FileWriteError: Error, CustomStringConvertible {
  package var path: String
  package var reason: String
  package var description: String { "\(path): \(reason)" }
}

/// Writes `text` to `path` (created or truncated), or to standard output when `path` is `-`.
package func writeTextFile(_ text: String, to path: String) throws(FileWriteError) {
  if path == "-" {
    writeStandardOutput(text)
    return
  }
  let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
  guard fd >= 0 else { throw FileWriteError(path: path, reason: String(cString: strerror(errno))) }
  defer { close(fd) }
  var text = text
  let ok = text.withUTF8 { buf -> Bool in
    var done = 0
    while done < buf.count {
      let n = write(fd, buf.baseAddress! + done, buf.count - done)
      if n < 0 {
        if errno == EINTR { continue }
        return false
      }
      done += n
    }
    return true
  }
  if !ok { throw FileWriteError(path: path, reason: String(cString: strerror(errno))) }
}

/// A file that could not be read: the path and the reason, as one line.
package struct FileReadError: Error, CustomStringConvertible {
  package var path: String
  package var reason: String
  package var description: String { "\(path): \(reason)" }
}

/// The whole text of `path`, read until end of file (so /proc files, whose size reads as
/// 0, come whole too).
package func readTextFile(_ path: String) throws(FileReadError) -> String {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { throw FileReadError(path: path, reason: String(cString: strerror(errno))) }
  defer { close(fd) }
  var bytes: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 1 << 16)
  while true {
    let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    if n < 0 {
      if errno == EINTR { continue }
      throw FileReadError(path: path, reason: String(cString: strerror(errno)))
    }
    if n == 0 { break }
    bytes += chunk[0..<n]
  }
  return String(decoding: bytes, as: UTF8.self)
}
