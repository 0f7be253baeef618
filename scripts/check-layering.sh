#!/usr/bin/env bash
# Checks the package's layering, which the targets' dependencies are meant to enforce:
# 1. every target depends only on the targets below it (the table in Package.swift);
# 2. zlib is linked only by CPageAllocGzip, which only the trace tooling reaches: the
#    allocator core (PageAlloc) links no zlib;
# 3. the public symbol graph of PageAlloc holds the allocator's API and nothing of the
#    tools (bench, stress, replay, views, vmalloc).
# Exit status 0 when all hold; each violation is printed on one line.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d /opt/swift/usr/bin ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
pkg=$(mktemp)
trap 'rm -f "$pkg"' EXIT
swift package dump-package > "$pkg"
swift package dump-symbol-graph --minimum-access-level public >/dev/null
graph=$(find .build -path '*symbolgraph/PageAlloc.symbols.json' | head -n 1)
python3 - "$pkg" "$graph" <<'PY'
import json, re, sys

pkg = json.load(open(sys.argv[1]))
allowed = {
    "CPageAllocShim": set(),
    "CPageAllocGzip": set(),
    "_PageAllocUtilities": set(),
    "PageAlloc": {"CPageAllocShim", "_PageAllocUtilities"},
    "PageAllocVMalloc": {"PageAlloc", "CPageAllocShim", "_PageAllocUtilities"},
    "PageAllocTrace": {"PageAlloc", "CPageAllocGzip", "_PageAllocUtilities"},
    "PageAllocViews": {"PageAlloc", "_PageAllocUtilities"},
    "PageAllocStress": {"PageAlloc", "PageAllocVMalloc", "_PageAllocUtilities"},
    "PageAllocBench": {"PageAlloc", "PageAllocVMalloc", "PageAllocTrace", "_PageAllocUtilities"},
}
problems = []
deps, links = {}, {}
for t in pkg["targets"]:
    names = set()
    for d in t.get("dependencies", []):
        kind = next(iter(d))
        names.add(d[kind][0])
    deps[t["name"]] = names
    links[t["name"]] = {s["kind"]["linkedLibrary"]["_0"] for s in t.get("settings", [])
                        if "linkedLibrary" in s.get("kind", {})}
for name, ok in allowed.items():
    if name not in deps:
        problems.append(f"target {name} is missing")
        continue
    extra = deps[name] - ok
    if extra:
        problems.append(f"{name} depends on {sorted(extra)}, which is not below it")
for name, libs in links.items():
    if "z" in libs and name != "CPageAllocGzip":
        problems.append(f"{name} links zlib; only CPageAllocGzip may")

def closure(name, seen=None):
    seen = set() if seen is None else seen
    for d in deps.get(name, ()):
        if d not in seen:
            seen.add(d)
            closure(d, seen)
    return seen

if "CPageAllocGzip" in closure("PageAlloc"):
    problems.append("PageAlloc reaches CPageAllocGzip (zlib)")

graph = json.load(open(sys.argv[2]))
tools = re.compile(r"bench|stress|replay|parser|kmemtrace|fragmentation|infoworkload|vmalloc|"
                   r"blackhole|procview|buddyinfo|zoneinfo|pagetypeinfo|monotonic", re.I)
top = set()
for s in graph["symbols"]:
    path = s["pathComponents"]
    if len(path) == 1:
        top.add(path[0])
    for component in path:
        if tools.search(component):
            problems.append(f"PageAlloc's public API has a tool name: {'.'.join(path)}")
            break
for p in problems:
    print("layering:", p)
print(f"layering: {len(deps)} targets checked; PageAlloc exports {len(top)} top-level names: "
      + ", ".join(sorted(top)))
sys.exit(1 if problems else 0)
PY
