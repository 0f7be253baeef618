#!/usr/bin/env python3
"""The mutation check: every mutation in Tests/Mutations/mutations.txt, applied on its own
to a scratch copy of the package, must make the tests named for it fail.

    Tests/Mutations/run.py                 # every mutation
    Tests/Mutations/run.py --ci            # the mutations marked for CI (ci: yes)
    Tests/Mutations/run.py --only ID,ID    # some of them
    Tests/Mutations/run.py --check         # only check that every pattern still matches
    Tests/Mutations/run.py --list          # list them

The scratch copy (default .build-mutations/src, or --scratch DIR) holds the files git
knows in this checkout, copied over only when they differ, so its debug build stays
incremental from one run to the next. The real tree is never written. The unmutated
scratch copy is built (`swift build --build-tests`) and the union of the mutations' test
filters must pass on it; then each mutation is applied by exact text match, the package
rebuilt (one incremental build), `swift test --skip-build --filter F` run, and the file
restored. A mutation is killed when those tests fail (or crash, or time out: --timeout); it
survives when they pass.

Exit status: 0 when every mutation was killed (`killed N of N`), 1 when one survived,
2 when the check itself could not run: a pattern no longer matches the source (a
refactor must not silently disable a mutation), a mutation does not compile, a filter
names no test, or the tests fail without any mutation.
"""

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LIST = os.path.join(HERE, "mutations.txt")


class Broken(Exception):
    """A problem with the check itself (exit status 2)."""


@dataclasses.dataclass
class Hunk:
    file: str
    find: str
    replace: str
    after: str | None = None
    line: int = 0


@dataclasses.dataclass
class Mutation:
    id: str
    line: int
    why: str = ""
    tests: str = ""
    ci: bool = True
    hunks: list = dataclasses.field(default_factory=list)


def parse(path):
    """Reads the mutation list (its format is described at the top of the file)."""
    muts = []
    cur = None
    hunk_file = None
    hunk_after = None
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0

    def block(start, stop_words):
        out = []
        j = start
        while j < len(lines) and lines[j] not in stop_words:
            out.append(lines[j])
            j += 1
        if j == len(lines):
            raise Broken(f"{path}:{start}: block not closed by {' or '.join(stop_words)}")
        return "\n".join(out), j

    while i < len(lines):
        raw = lines[i]
        n = i + 1
        s = raw.strip()
        if not s or s.startswith("#"):
            i += 1
            continue
        m = re.fullmatch(r"\[([a-z0-9-]+)\]", s)
        if m:
            cur = Mutation(id=m.group(1), line=n)
            muts.append(cur)
            hunk_file = None
            hunk_after = None
            i += 1
            continue
        if cur is None:
            raise Broken(f"{path}:{n}: text before the first [id]")
        key, _, value = raw.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "why":
            cur.why = value
        elif key == "tests":
            cur.tests = value
        elif key == "ci":
            if value not in ("yes", "no"):
                raise Broken(f"{path}:{n}: ci: yes or no")
            cur.ci = value == "yes"
        elif key == "file":
            hunk_file = value
            hunk_after = None
        elif key == "after":
            hunk_after = value
        elif key == "find":
            if hunk_file is None:
                raise Broken(f"{path}:{n}: find: before file:")
            if value:
                find = value
                j = i + 1
            else:
                find, j = block(i + 1, ["replace:"])
            if j >= len(lines) or not lines[j].startswith("replace:"):
                raise Broken(f"{path}:{n}: find: not followed by replace:")
            rvalue = lines[j][len("replace:"):]
            rvalue = rvalue[1:] if rvalue.startswith(" ") else rvalue
            if lines[j].strip() == "replace:":
                replace, k = block(j + 1, ["end"])
                i = k + 1
            else:
                replace = rvalue
                i = j + 1
            cur.hunks.append(Hunk(hunk_file, find, replace, hunk_after, n))
            continue
        else:
            raise Broken(f"{path}:{n}: unknown key '{key}'")
        i += 1
    seen = set()
    for m in muts:
        if m.id in seen:
            raise Broken(f"{path}:{m.line}: duplicate id {m.id}")
        seen.add(m.id)
        if not m.hunks or not m.tests or not m.why:
            raise Broken(f"{path}:{m.line}: {m.id} needs why:, tests: and at least one find:/replace:")
    return muts


def block_end(text, start):
    """The end of the block whose first line holds offset `start`: the next line indented no
    deeper than that line (a function's closing brace, the next `case`), so a mutation
    written against one function cannot drift into the next one. A wrapped signature's
    closing `) -> T {` line does not end it."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", start)
    anchor_line = text[line_start:line_end if line_end >= 0 else len(text)]
    depth = len(anchor_line) - len(anchor_line.lstrip(" \t"))
    # An anchor that opens a block ends at the line closing it; an anchor inside a body
    # ends where that body does.
    limit = depth if anchor_line.rstrip().endswith(("{", ":", "(")) else depth - 1
    pos = line_end
    while pos >= 0:
        nxt = text.find("\n", pos + 1)
        line = text[pos + 1:nxt if nxt >= 0 else len(text)]
        body = line.lstrip(" \t")
        if body and len(line) - len(body) <= limit and not body.startswith((")", "{", "where ")):
            return pos + 1
        pos = nxt
    return len(text)


def locate(text, h, where):
    """The offset of the hunk's `find:` text in `text`, or raises Broken."""
    if h.after is not None:
        k = text.count(h.after)
        if k != 1:
            raise Broken(f"{where}: after: text found {k} times in {h.file} (must be once): {h.after!r}")
        start = text.index(h.after) + len(h.after)
        end = block_end(text, start)
        at = text.find(h.find, start, end)
        if at < 0:
            raise Broken(
                f"{where}: find: text not in the declaration after {h.after!r} in {h.file}:\n{indent(h.find)}")
        return at
    k = text.count(h.find)
    if k != 1:
        raise Broken(f"{where}: find: text found {k} times in {h.file} (must be once, or give after:):\n{indent(h.find)}")
    return text.index(h.find)


def indent(s):
    return "\n".join("    | " + line for line in s.split("\n"))


def mutated_texts(root, m):
    """{path: (original, mutated)} for mutation `m` applied to the files under `root`."""
    out = {}
    for h in m.hunks:
        path = os.path.join(root, h.file)
        if path not in out:
            if not os.path.exists(path):
                raise Broken(f"{m.id}: no file {h.file}")
            with open(path, encoding="utf-8") as f:
                text = f.read()
            out[path] = (text, text)
        orig, text = out[path]
        at = locate(text, h, f"mutations.txt:{h.line} [{m.id}]")
        text = text[:at] + h.replace + text[at + len(h.find):]
        out[path] = (orig, text)
    for path, (orig, text) in out.items():
        if orig == text:
            raise Broken(f"{m.id}: the mutation changes nothing in {path}")
    return out


def tracked_files(root):
    r = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root, check=True,
        capture_output=True)
    return [p for p in r.stdout.decode().split("\0") if p and os.path.isfile(os.path.join(root, p))]


def sync(root, scratch):
    """Makes `scratch` a copy of the files git knows in `root` (plus Package.resolved),
    copying only what differs so the scratch build stays incremental."""
    files = tracked_files(root)
    if os.path.exists(os.path.join(root, "Package.resolved")):
        files.append("Package.resolved")
    wanted = set(files)
    copied = 0
    for rel in files:
        src = os.path.join(root, rel)
        dst = os.path.join(scratch, rel)
        with open(src, "rb") as f:
            data = f.read()
        if os.path.exists(dst):
            with open(dst, "rb") as f:
                if f.read() == data:
                    continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        shutil.copymode(src, dst)
        copied += 1
    removed = 0
    for top in ("Sources", "Tests", "Benchmarks", "Fuzz"):
        base = os.path.join(scratch, top)
        for dirpath, _, names in os.walk(base):
            for name in names:
                rel = os.path.relpath(os.path.join(dirpath, name), scratch)
                if rel not in wanted:
                    os.remove(os.path.join(scratch, rel))
                    removed += 1
    return copied, removed


def run(cmd, cwd, timeout=None, log=None):
    """Runs `cmd` in its own process group; returns (status, output, timed_out)."""
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        timed_out = True
    text = out.decode(errors="replace")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n{text}\n")
    return p.returncode, text, timed_out


def build(scratch, log):
    status, out, _ = run(["swift", "build", "--build-tests"], scratch, log=log)
    return status == 0, out


def test_names(scratch, log):
    status, out, _ = run(["swift", "test", "--skip-build", "list"], scratch, timeout=300, log=log)
    if status != 0:
        raise Broken("swift test list failed:\n" + out[-3000:])
    return [l.strip() for l in out.split("\n") if "/" in l and not l.startswith("[")]


def failing_tests(out):
    """The names of the tests that failed, from swift test's output."""
    names = []
    for line in out.split("\n"):
        m = re.match(r"\s*✘ Test (\S+?)(?:\(|\s)", line) or re.match(r"Test Case '(\S+)' failed", line)
        if m and m.group(1) not in names and not line.lstrip().startswith("✘ Test run with"):
            names.append(m.group(1))
    names = names[:4] + (["..."] if len(names) > 4 else [])
    # A crash ends the run before any test is reported failed: name the signal and the test
    # it happened in (the first test frame of the crashed thread's backtrace).
    sig = re.search(r"exited with unexpected signal code (\d+)", out)
    if sig:
        m = re.search(r" in (\w+)\.(\w+)\(\) \+ \d+ in \S+\.xctest at \S+/Tests/", out)
        names.append(f"crashed: signal {sig.group(1)}" + (f" in {m.group(1)}.{m.group(2)}" if m else ""))
    return names


def fmt(s):
    return f"{s:6.1f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ci", action="store_true", help="only the mutations marked ci: yes")
    ap.add_argument("--only", help="comma-separated mutation ids")
    ap.add_argument("--check", action="store_true", help="only check that every pattern matches the source")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--show", metavar="ID", help="print the diff of one mutation and exit")
    ap.add_argument("--scratch", default=os.path.join(ROOT, ".build-mutations", "src"), help="the scratch copy")
    ap.add_argument(
        "--timeout", type=int,
        help="seconds one mutation's tests may take (default: three times the unmutated run of all the"
        " filters, at least 180): a mutation that makes a test hang is killed when it runs out")
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        muts = parse(LIST)
        # Every pattern must match the real tree, read only: a refactor that moved the code
        # fails here, before anything is built.
        for m in muts:
            mutated_texts(ROOT, m)
        if args.list:
            for m in muts:
                print(f"{m.id:36} {'ci ' if m.ci else '   '} {m.why}\n{'':40} tests: {m.tests}")
            return 0
        if args.show:
            m = next((m for m in muts if m.id == args.show), None)
            if m is None:
                raise Broken(f"unknown mutation id {args.show}")
            import difflib
            for path, (orig, text) in mutated_texts(ROOT, m).items():
                rel = os.path.relpath(path, ROOT)
                sys.stdout.writelines(difflib.unified_diff(
                    orig.splitlines(True), text.splitlines(True), "a/" + rel, "b/" + rel, n=2))
            return 0
        if args.check:
            print(f"all {len(muts)} mutations match the source")
            return 0
        chosen = muts
        if args.only:
            ids = args.only.split(",")
            unknown = [i for i in ids if i not in {m.id for m in muts}]
            if unknown:
                raise Broken(f"unknown mutation id(s): {', '.join(unknown)}")
            chosen = [m for m in muts if m.id in ids]
        elif args.ci:
            chosen = [m for m in muts if m.ci]
        scratch = os.path.abspath(args.scratch)
        if os.path.commonpath([scratch, ROOT]) == scratch:
            raise Broken("the scratch copy cannot contain the checkout")
        os.makedirs(scratch, exist_ok=True)
        log = os.path.join(os.path.dirname(scratch), "mutations.log")
        open(log, "w").close()
        copied, removed = sync(ROOT, scratch)
        print(f"scratch copy {scratch}: {copied} file(s) updated, {removed} removed; log {log}", flush=True)

        t = time.monotonic()
        ok, out = build(scratch, log)
        if not ok:
            raise Broken("the unmutated package does not build:\n" + out[-4000:])
        print(f"baseline build        {fmt(time.monotonic() - t)}", flush=True)
        names = test_names(scratch, log)
        for m in chosen:
            if not any(re.search(m.tests, n) for n in names):
                raise Broken(f"{m.id}: tests: {m.tests!r} names no test")
        union = "|".join(f"(?:{m.tests})" for m in chosen)
        t = time.monotonic()
        status, out, timed_out = run(["swift", "test", "--skip-build", "--filter", union], scratch, 1800, log)
        if status != 0 or timed_out:
            raise Broken(
                "the tests fail without any mutation (" + ", ".join(failing_tests(out)) + "):\n" + out[-4000:])
        baseline = time.monotonic() - t
        print(f"baseline tests pass   {fmt(baseline)}", flush=True)
        timeout = args.timeout or max(180, int(3 * baseline))

        killed, survivors = [], []
        for m in chosen:
            texts = mutated_texts(scratch, m)
            try:
                for path, (_, text) in texts.items():
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(text)
                tb = time.monotonic()
                ok, out = build(scratch, log)
                if not ok:
                    errs = [l for l in out.split("\n") if "error:" in l][:5]
                    raise Broken(f"{m.id}: the mutated package does not compile:\n" + "\n".join(errs))
                tt = time.monotonic()
                status, out, timed_out = run(
                    ["swift", "test", "--skip-build", "--filter", m.tests], scratch, timeout, log)
                te = time.monotonic()
            finally:
                for path, (orig, _) in texts.items():
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(orig)
            times = f"build {fmt(tt - tb)}, tests {fmt(te - tt)}"
            if timed_out:
                killed.append(m)
                print(f"killed    {m.id:36} ({times}; timed out)", flush=True)
            elif status != 0:
                killed.append(m)
                why = ", ".join(failing_tests(out)) or f"exit status {status}"
                print(f"killed    {m.id:36} ({times}; {why})", flush=True)
            else:
                survivors.append(m)
                print(f"SURVIVED  {m.id:36} ({times})", flush=True)
        total = time.monotonic() - t0
        print(f"\nkilled {len(killed)} of {len(chosen)} in {total / 60:.1f} min")
        if survivors:
            print("survivors (the tests still pass with the mutation applied):")
            for m in survivors:
                print(f"  {m.id}: {m.why}\n    tests: {m.tests}")
            return 1
        return 0
    except Broken as e:
        print(f"mutation check broken: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
