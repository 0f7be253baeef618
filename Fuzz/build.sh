#!/usr/bin/env bash
# Builds a libFuzzer target against the package's modules.
#   Fuzz/build.sh api-sequence|trace-parser   -> Fuzz/.build/<target>
#
# Each module the target needs is compiled on its own, in dependency order, as SwiftPM
# would: `swiftc -parse-as-library -wmo -emit-module -package-name PageAlloc -c`, with
# `-sanitize=fuzzer,address` so libFuzzer sees the coverage of the library code too. The C
# targets are compiled with clang and given a module map. The target's file is then
# compiled and linked with the objects (and zlib when the trace module is in).
# -package-name gives the target the package-level API: the API-sequence driver and the
# trace parser. A module is recompiled only when one of its sources or dependencies is
# newer than its object.
#
# FUZZ_SOURCES: another checkout's root to build the modules from (default: this one).
# FUZZ_SANITIZERS: the -sanitize list (default fuzzer,address).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
src="$(cd "${FUZZ_SOURCES:-$root}" && pwd)"
target="${1:?usage: Fuzz/build.sh api-sequence|trace-parser}"
# The modules of each target, dependencies first (as in Package.swift).
case "$target" in
  api-sequence)
    main="$here/APISequenceFuzz.swift"
    cmods=(CPageAllocShim)
    mods=(_PageAllocUtilities PageAlloc PageAllocVMalloc PageAllocStress) ;;
  trace-parser)
    main="$here/TraceParserFuzz.swift"
    cmods=(CPageAllocShim CPageAllocGzip)
    mods=(_PageAllocUtilities PageAlloc PageAllocTrace) ;;
  *) echo "unknown target '$target' (api-sequence, trace-parser)" >&2; exit 64 ;;
esac
sanitizers="${FUZZ_SANITIZERS:-fuzzer,address}"
out="$here/.build"
obj="$out/modules"
# Objects built from another checkout or with other sanitizers are not reused.
stamp="$src $sanitizers core-coverage-2"
if [ "$(cat "$obj/.stamp" 2>/dev/null)" != "$stamp" ]; then rm -rf "$obj"; fi
mkdir -p "$obj"
echo "$stamp" > "$obj/.stamp"

# newer OUTPUT INPUT...: whether any input is newer than OUTPUT (or OUTPUT is missing).
newer() {
  local o="$1"; shift
  [ -e "$o" ] || return 0
  [ -n "$(find "$@" -newer "$o" -print -quit)" ]
}

objs=()
cflags=()
for m in "${cmods[@]}"; do
  dir="$src/Sources/$m"
  cat > "$obj/$m.modulemap" <<MAP
module $m {
  header "$dir/include/$m.h"
  export *
}
MAP
  cflags+=(-Xcc "-fmodule-map-file=$obj/$m.modulemap" -I "$dir/include")
  for c in "$dir"/*.c; do
    o="$obj/$m-$(basename "$c" .c).o"
    if newer "$o" "$c" "$dir/include"; then
      clang -O1 -g -D_GNU_SOURCE -fsanitize=address -I "$dir/include" -c "$c" -o "$o"
    fi
    objs+=("$o")
  done
done

swiftflags=(-O -g -parse-as-library -sanitize="$sanitizers" -package-name PageAlloc -I "$obj" "${cflags[@]}")
# The allocator core gets edge coverage and 8-bit counters but no comparison tracing:
# its comparisons are of allocator state, not of input bytes (verify() alone compares
# every page record, twice per input), and tracing them cost most of each execution.
# The decoder and the target keep -sanitize=fuzzer's comparison tracing.
coreflags=()
if [[ ",$sanitizers," == *",fuzzer,"* ]]; then coreflags=(-sanitize-coverage=edge,inline-8bit-counters,pc-table); fi
built=()
for m in "${mods[@]}"; do
  mapfile -t sources < <(find "$src/Sources/$m" -name '*.swift' | sort)
  o="$obj/$m.o"
  deps=("${sources[@]}")
  for b in "${built[@]}"; do deps+=("$obj/$b.swiftmodule"); done
  if newer "$o" "${deps[@]}"; then
    echo "compiling $m" >&2
    extra=()
    if [ "$m" = PageAlloc ]; then extra=("${coreflags[@]}"); fi
    swiftc "${swiftflags[@]}" "${extra[@]}" -wmo -module-name "$m" -emit-module \
      -emit-module-path "$obj/$m.swiftmodule" -c "${sources[@]}" -o "$o"
  fi
  built+=("$m")
  objs+=("$o")
done

libs=()
for m in "${cmods[@]}"; do if [ "$m" = CPageAllocGzip ]; then libs+=(-lz); fi; done
swiftc "${swiftflags[@]}" -module-name "${target//-/_}_fuzz" -use-ld=lld "$main" "${objs[@]}" "${libs[@]}" \
  -o "$out/$target"
echo "$out/$target"
