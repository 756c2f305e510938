#!/usr/bin/env python3
"""Checks src/'s layout rules: no import cycles, no file over ~800 lines without a reason.

Usage: scripts/check_layout.py [SRC_DIR] [--modules]   (exit 1 on any violation; stdlib only;
       --modules also prints which top-level modules each one uses)

Import graph. Every path a file names (`use crate::a::b::{c, d}`, `crate::a::b::f(..)`,
`super::x::Y`, `self::x`, and bare `x::Y` where `x` is a child module the file declares) is
resolved to the longest prefix that is a file of src/ (`a/b.rs` or `a/b/mod.rs`). A file that
names an item of another file depends on it. Declaring a child (`mod x;`, `pub mod x;`) is not a
dependency: a parent contains its children. A re-export (`pub use x::Y`) is one, since the parent
then needs the child. Test code is left out: an in-file `#[cfg(test)] mod tests { .. }` block and
a file declared under `#[cfg(test)]` (ops/testing.rs). An op's tests run its rule through ONNX
Runtime, so they need the layers above the op; the library itself must not.

Two levels are checked:
- modules: the top-level folders and files of src/ (ops, autodiff, measure, ...), a dependency
  being any file of one naming any file of another;
- files: every .rs file; a strongly connected component of more than one file is a cycle.

Size. A file over 800 lines must say why in its first 15 lines, in a comment containing
"over 800 lines" (e.g. "//! This file is over 800 lines because ...").
"""
import os
import re
import sys
from collections import defaultdict

LIMIT = 800


def files_of(src):
    out = []
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                out.append(os.path.relpath(os.path.join(root, n), src))
    return sorted(out)


def module_path(rel):
    """'ops/relu.rs' -> ['ops', 'relu']; 'ops/mod.rs' -> ['ops']; 'lib.rs' -> []."""
    parts = rel[:-3].split("/")
    if parts[-1] == "mod" or rel in ("lib.rs", "main.rs"):
        parts = parts[:-1]
    return parts


def strip_comments_and_strings(text):
    """Blanks comments, string and char literals (one pass, so a quote inside a comment or a
    string cannot start anything)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) and re.match(r'r#*"', text[i:]):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            j = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if j < 0 else j + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_code(text):
    """Removes `#[cfg(test)]` items: inline modules (to their closing brace) and `mod x;` lines."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*([;{])", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        if m.group(1) == ";":
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def test_only_files(src, rels):
    """Files declared as `#[cfg(test)] mod x;` by their parent."""
    out = set()
    for rel in rels:
        text = strip_comments_and_strings(open(os.path.join(src, rel), encoding="utf-8").read())
        me = module_path(rel)
        for name in re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(?:r#)?(\w+)\s*;", text):
            d = "/".join(me + [name])
            out |= {f"{d}.rs", f"{d}/mod.rs"}
    return out


def expand_use(tree):
    """'a::{b, c::{d, e}}' -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = tree.strip()
    i = tree.find("{")
    if i < 0:
        return [re.sub(r"\s+as\s+\w+$", "", tree).strip()]
    prefix, body = tree[:i], tree[i + 1 : tree.rfind("}")]
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    for it in items:
        if it.strip():
            out += [prefix + p for p in expand_use(it)]
    return out


def main():
    args = [a for a in sys.argv[1:] if a != "--modules"]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    src = os.path.normpath(src)
    rels = files_of(src)
    tests = test_only_files(src, rels)
    by_path = {}
    for rel in rels:
        by_path.setdefault(tuple(module_path(rel)), rel)
    # main.rs is the binary's root: `probe::x` there is the library's `crate::x`.
    deps = defaultdict(set)
    problems = []
    for rel in rels:
        raw = open(os.path.join(src, rel), encoding="utf-8").read()
        lines = len(raw.splitlines())
        if lines > LIMIT and "over 800 lines" not in "\n".join(raw.splitlines()[:15]):
            problems.append(f"{rel}: {lines} lines, and its header does not say why it is over 800 lines")
        if rel in tests:
            continue
        text = strip_comments_and_strings(raw)
        text = drop_test_code(text)
        me = module_path(rel)
        children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(?:r#)?(\w+)\s*;", text, re.M))
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            paths += expand_use(m.group(1))
        paths += re.findall(r"\b((?:crate|super|self|probe)(?:::(?:r#)?\w+)+)", text)
        if children:
            paths += re.findall(r"(?<![:\w])((?:%s)(?:::(?:r#)?\w+)+)" % "|".join(map(re.escape, children)), text)
        for p in paths:
            segs = [s.replace("r#", "") for s in p.replace(" ", "").split("::") if s]
            if not segs:
                continue
            if segs[0] in ("crate", "probe"):
                base, segs = [], segs[1:]
            elif segs[0] == "self":
                base, segs = list(me), segs[1:]
            elif segs[0] == "super":
                base = list(me)
                while segs and segs[0] == "super":
                    base = base[:-1]
                    segs = segs[1:]
            elif segs[0] in children:
                base = list(me)
            else:
                continue
            full = base + segs
            target = None
            for k in range(len(full), -1, -1):
                if tuple(full[:k]) in by_path:
                    target = by_path[tuple(full[:k])]
                    break
            if target and target != rel:
                # A bare `x` in a `use` list that is exactly a module is a module import: still a dep.
                deps[rel].add(target)
    # The binary (main.rs, cli/) sits above the library: leave it out of the module graph's root.
    nodes = rels

    def sccs(graph, vertices):
        index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph.get(v, ()):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

        sys.setrecursionlimit(10000)
        for v in vertices:
            if v not in index:
                visit(v)
        return out

    def top(rel):
        p = module_path(rel)
        return p[0] if p else rel[:-3]

    mgraph = defaultdict(set)
    medges = defaultdict(list)
    for a, bs in deps.items():
        for b in bs:
            if top(a) != top(b) and a not in ("lib.rs",):
                mgraph[top(a)].add(top(b))
                medges[(top(a), top(b))].append(f"{a} -> {b}")
    for comp in sccs(mgraph, sorted({top(r) for r in rels})):
        detail = "; ".join(
            f"{a}->{b} ({medges[(a, b)][0]}{', ...' if len(medges[(a, b)]) > 1 else ''})"
            for a in comp
            for b in comp
            if (a, b) in medges
        )
        problems.append(f"module cycle: {' <-> '.join(comp)}: {detail}")
    for comp in sccs(deps, nodes):
        edges = [f"{a} -> {b}" for a in comp for b in sorted(deps[a]) if b in comp]
        problems.append(f"file cycle of {len(comp)}: " + ", ".join(edges[:12]) + (" ..." if len(edges) > 12 else ""))
    if "--modules" in sys.argv:
        for a in sorted(mgraph):
            print(f"{a} -> {' '.join(sorted(mgraph[a]))}")
    for p in problems:
        print(p)
    nfiles, nedges = len(rels), sum(len(v) for v in deps.values())
    if problems:
        print(f"{len(problems)} problem(s) in {nfiles} files ({nedges} file dependencies)")
        return 1
    print(f"layout ok: {nfiles} files, {nedges} file dependencies, no cycles, no file over {LIMIT} lines without a reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
