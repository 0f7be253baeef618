import Glibc
import Testing
import _PageAllocUtilities

@Suite struct FormattingTests {
  @Test func jsonEscapesAndNumbers() {
    #expect(jsonString("a\"b\\c\n") == "\"a\\\"b\\\\c\\n\"")
    #expect(jsonNumber(.nan) == "null")
    #expect(jsonNumber(3) == "3")
    #expect(jsonNumber(1.23456) == "1.2346")
    #expect(fixed(2.5, 2) == "2.50")
    #expect(fixed(-0.125, 1) == "-0.1")
  }

  @Test func columns() {
    #expect(pad("ab", 4) == "  ab")
    #expect(padRight("ab", 4) == "ab  ")
    #expect(pad("abcde", 4) == "abcde")
    #expect(buddyInfoLine(zone: "Normal", counts: [1, 22]) == "Node 0, zone   Normal      1     22 \n")
    #expect(formatNumber(3) == "3")
    #expect(formatNumber(123.456) == "123.5")
    #expect(formatNumber(1.23456) == "1.235")
  }

  @Test func threadsStartTogetherAndAllRun() throws {
    let seen = LockedState<[Int]>([])
    try runOnThreads(4) { i in seen.withLock { $0.append(i) } }
    #expect(seen.withLock { $0.sorted() } == [0, 1, 2, 3])
  }

  @Test func writesFilesAndReportsFailures() throws {
    let path = "/tmp/pagealloc-formatting-test-\(getpid()).txt"
    defer { unlink(path) }
    try writeTextFile("hello\n", to: path)
    #expect(throws: FileWriteError.self) { try writeTextFile("x", to: "/nonexistent-dir/x") }
  }
}
