#!/usr/bin/env bash
# Builds a libFuzzer target over the library sources and the C shim.
#   Fuzz/build.sh api-sequence|trace-parser   -> Fuzz/.build/<target>
# The target file and every Sources/PageAlloc/**/*.swift are compiled as one module with
# `swiftc -sanitize=fuzzer,address -parse-as-library`; the shim is compiled with clang.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# FUZZ_SOURCES: another checkout's root to build from (default: this one).
src="${FUZZ_SOURCES:-$root}"
target="${1:?usage: Fuzz/build.sh api-sequence|trace-parser}"
case "$target" in
  api-sequence) main="$here/APISequenceFuzz.swift" ;;
  trace-parser)
    main="$here/TraceParserFuzz.swift"
    if ! grep -rqs "enum KmemTraceParser" "$src/Sources/PageAlloc"; then
      echo "trace-parser: KmemTraceParser (Replay/KmemTraceParser.swift) is not in $src/Sources/PageAlloc" >&2
      echo "(it comes with the views branch); nothing to build." >&2
      exit 2
    fi ;;
  *) echo "unknown target '$target' (api-sequence, trace-parser)" >&2; exit 64 ;;
esac
out="$here/.build"
mkdir -p "$out/shim"
shim="$src/Sources/CPageAllocShim"
cat > "$out/shim/module.modulemap" <<MAP
module CPageAllocShim {
  header "$shim/include/CPageAllocShim.h"
  export *
}
MAP
sanitizers="${FUZZ_SANITIZERS:-fuzzer,address}"
objs=()
for c in "$shim"/*.c; do
  o="$out/shim/$(basename "$c" .c).o"
  clang -O1 -g -D_GNU_SOURCE -fsanitize=address -I "$shim/include" -c "$c" -o "$o"
  objs+=("$o")
done
# The shim links zlib once it reads gzip traces (views branch).
libs=()
if grep -qs "gz" "$shim"/*.c; then libs+=(-lz); fi
mapfile -t sources < <(find "$src/Sources/PageAlloc" -name '*.swift' | sort)
swiftc -O -g -parse-as-library -sanitize="$sanitizers" -module-name PageAllocFuzz \
  -Xcc -fmodule-map-file="$out/shim/module.modulemap" -I "$out/shim" \
  -use-ld=lld "${sources[@]}" "$main" "${objs[@]}" "${libs[@]}" -o "$out/$target"
echo "$out/$target"
