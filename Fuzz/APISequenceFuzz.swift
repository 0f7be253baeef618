// libFuzzer target (a): API call sequences decoded from bytes.
//
// One allocator for the whole process (APISequence.fuzzConfiguration: a DMA zone ending
// inside a pageblock, a Normal zone with a memmap hole, 1024-page sections, backing .none,
// 3072 pages), reset to its boot state before each input: building a new one maps and
// faults in its memmap every time. APISequence.checkFuzzInput decodes the bytes into the
// API-sequence driver's ops (well-formed calls on what the sequence holds, movable blocks
// with owners and compactions among them, and hostile ones on arbitrary pfns and orders:
// double frees, wrong orders, foreign pfns, compound heads, flags set on pages in use, split/get/put of free pages), applies them, then checks that
// the allocator verifies, that everything held can be freed, and that no page is lost
// (but those of allocations a hostile call reached). A trap, a verification failure or a
// lost page is a crash. Built by Fuzz/build.sh against the package's modules; the seeds
// in Fuzz/seeds/api-sequence are replayed by the tests (FuzzSeedTests).

import PageAlloc
import PageAllocStress

nonisolated(unsafe) let allocator: PageAllocator = {
  do { return try PageAllocator(configuration: APISequence.fuzzConfiguration) } catch { fatalError("init: \(error)") }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func apiSequenceFuzzTest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  let bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
  if let failure = APISequence.checkFuzzInput(bytes, on: allocator) { fatalError(failure) }
  return 0
}
