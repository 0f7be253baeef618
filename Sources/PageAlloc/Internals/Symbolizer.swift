internal import _PageAllocUtilities
import CPageAllocShim
import Glibc

/// Turns return addresses into `%pS`-style text (`symbol+0xOFFSET/0xSIZE`), the way the
/// kernel prints a stack-depot entry.
///
/// `dladdr()` sees only the dynamic symbol table, where Swift's internal functions (hidden
/// visibility) are missing, and for a hidden function it may even name the nearest exported
/// one. So the symbolizer reads each image's own ELF symbol table (`.symtab`, or `.dynsym`
/// when stripped) from its file, keeps its function symbols sorted by address, and finds
/// the one whose extent covers the address; Swift names go through the runtime's
/// `swift_demangle`. Images are found with `dl_iterate_phdr` (the main program through
/// `/proc/self/exe`). Each image is read once per process; lookups are cached.
final class Symbolizer: @unchecked Sendable {
  static let shared = Symbolizer()

  private struct State {
    var images: [String: ImageSymbols?] = [:]
    var cache: [UInt: String] = [:]
  }
  /// A pthread mutex (LockedState): ThreadSanitizer sees it.
  private let state = LockedState(State())

  /// The `%pS` text of `address`: `symbol+0xOFF/0xSIZE`, plus ` [image]` outside the main
  /// program; the raw `0x...` address when no function symbol covers it.
  func describe(_ address: UInt) -> String {
    if let hit = state.withLock({ $0.cache[address] }) { return hit }
    let text = lookup(address)
    state.withLock { $0.cache[address] = text }
    return text
  }

  private func lookup(_ address: UInt) -> String {
    var raw = "0x" + String(address, radix: 16)
    var bias: UInt = 0
    var pathBuf = [CChar](repeating: 0, count: 4096)
    // A return address points after its call: the call itself (address - 1) names the
    // caller even when the call was the function's last instruction.
    let found = pathBuf.withUnsafeMutableBufferPointer {
      cpa_image_of(address &- 1, &bias, $0.baseAddress, $0.count)
    }
    guard found == 0 else { return raw }
    let path = pathBuf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    let image = state.withLock { s -> ImageSymbols?? in s.images[path] }
    let symbols: ImageSymbols?
    if let image {
      symbols = image
    } else {
      symbols = ImageSymbols(path: path)
      state.withLock { $0.images[path] = symbols }
    }
    guard let symbols, let (name, start, size) = symbols.function(covering: address &- 1 &- bias) else {
      // No symbol (a stripped library's local function): the image and offset, which
      // addr2line or llvm-symbolizer resolve with the library's debug information.
      raw += " [\(Symbolizer.imageName(path))+0x\(String(address &- bias, radix: 16))]"
      return raw
    }
    let offset = address &- bias &- start
    var s = "\(Symbolizer.demangle(name))+0x\(String(offset, radix: 16))/0x\(String(size, radix: 16))"
    if path != "/proc/self/exe" { s += " [\(Symbolizer.imageName(path))]" }
    return s
  }

  static func imageName(_ path: String) -> String {
    path == "/proc/self/exe" ? "exe" : path.split(separator: "/").last.map(String.init) ?? path
  }

  /// A Swift name demangled by the Swift runtime, a C++ name by the C++ runtime, anything
  /// else as it is.
  static func demangle(_ name: String) -> String {
    let swift = name.hasPrefix("$s") || name.hasPrefix("$S") || name.hasPrefix("_T")
    guard swift || name.hasPrefix("_Z") else { return name }
    return name.withCString { c in
      guard let d = swift ? swift_demangle(c, strlen(c), nil, nil, 0) : cpa_cxx_demangle(c) else { return name }
      defer { free(d) }
      return String(cString: d)
    }
  }
}

/// One image's function symbols, read from its ELF file. The file stays mapped (read-only,
/// for the process's life) so names are read only when a lookup needs them.
final class ImageSymbols: @unchecked Sendable {
  private let base: UnsafeRawPointer
  private let strtab: Int
  /// (value, size, name offset) of every function symbol, by value.
  private let functions: [(value: UInt, size: UInt, name: UInt32)]

  init?(path: String) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, st.st_size > 64 else { return nil }
    let length = Int(st.st_size)
    guard let m = mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else { return nil }
    let p = UnsafeRawPointer(m)
    func u16(_ o: Int) -> Int { Int(p.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    func u32(_ o: Int) -> Int { Int(p.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    func u64(_ o: Int) -> Int { Int(truncatingIfNeeded: p.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
    // ELF64, little endian.
    guard p.load(as: UInt32.self) == 0x464c_457f, p.load(fromByteOffset: 4, as: UInt8.self) == 2 else {
      munmap(m, length)
      return nil
    }
    let shoff = u64(0x28)
    let shentsize = u16(0x3a)
    let shnum = u16(0x3c)
    guard shoff > 0, shentsize >= 64, shoff + shnum * shentsize <= length else {
      munmap(m, length)
      return nil
    }
    func section(_ i: Int) -> (type: Int, offset: Int, size: Int, link: Int, entsize: Int) {
      let h = shoff + i * shentsize
      return (u32(h + 4), u64(h + 24), u64(h + 32), u32(h + 40), u64(h + 56))
    }
    // SHT_SYMTAB (2) has every symbol; SHT_DYNSYM (11) only the exported ones.
    var symtab: (type: Int, offset: Int, size: Int, link: Int, entsize: Int)?
    for want in [2, 11] where symtab == nil {
      for i in 0..<shnum where section(i).type == want {
        symtab = section(i)
        break
      }
    }
    guard let sym = symtab, sym.entsize >= 24, sym.link < shnum, sym.offset + sym.size <= length else {
      munmap(m, length)
      return nil
    }
    let str = section(sym.link)
    var fns: [(value: UInt, size: UInt, name: UInt32)] = []
    let count = sym.size / sym.entsize
    fns.reserveCapacity(count / 2)
    for i in 0..<count {
      let e = sym.offset + i * sym.entsize
      let info = p.load(fromByteOffset: e + 4, as: UInt8.self)
      let shndx = u16(e + 6)
      // STT_FUNC, defined.
      guard info & 0xf == 2, shndx != 0 else { continue }
      let value = UInt(bitPattern: u64(e + 8))
      let size = UInt(bitPattern: u64(e + 16))
      guard value != 0 else { continue }
      fns.append((value, size, UInt32(truncatingIfNeeded: u32(e))))
    }
    fns.sort { $0.value < $1.value }
    base = p
    strtab = str.offset
    functions = fns
  }

  /// The function whose extent covers `offset` (an address less the image's load bias):
  /// its name, start and size. A symbol of size 0 covers up to the next symbol.
  func function(covering offset: UInt) -> (name: String, start: UInt, size: UInt)? {
    var lo = 0
    var hi = functions.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if functions[mid].value <= offset { lo = mid + 1 } else { hi = mid }
    }
    guard lo > 0 else { return nil }
    let f = functions[lo - 1]
    let end = f.size > 0 ? f.value + f.size : (lo < functions.count ? functions[lo].value : f.value + 1)
    guard offset < end else { return nil }
    let name = String(cString: (base + strtab + Int(f.name)).assumingMemoryBound(to: CChar.self))
    return (name, f.value, f.size)
  }
}
