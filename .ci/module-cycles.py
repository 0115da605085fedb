#!/usr/bin/env python3
"""Fails if, in any crate of the workspace, a module imports a module that imports it back.

A module is a source file. An edge A -> B is any path in A that names B: `use crate::b`,
`crate::b::f()`, `super::b`, `self::b` (grouped `use` trees included), and a child module
named by a relative path (`b::f()` after `mod b;`). Declaring a child with `mod` is not an
edge by itself; using it is, and so is a child reaching its parent (`super::x`). What follows
a file's first `#[cfg(test)]` (its unit tests) is left out. Prints every
circle (a strongly connected set of two or more files) and exits 1 if there is one.

    python3 .ci/module-cycles.py            # the whole workspace
    python3 .ci/module-cycles.py --self-test
"""

import os
import re
import sys

CRATES = ["domain", "eventlog", "projections", "workers", "app", "api", "cli", "bench"]


def strip_comments_and_strings(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+as\s+[A-Za-z_][A-Za-z0-9_]*", "", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, t):
        if "{" not in t:
            for part in split_top(t):
                out.append(prefix + part)
            return
        i = t.index("{")
        head, inner = t[:i], t[i + 1 : t.rindex("}")]
        for part in split_top(inner):
            walk(prefix + head, part)

    walk("", tree)
    return [p.replace("::self", "") for p in out]


def split_top(t):
    parts, depth, cur = [], 0, ""
    for ch in t:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return [p for p in parts if p]


def module_of(root, path):
    rel = os.path.relpath(path, root)[: -len(".rs")]
    parts = rel.split(os.sep)
    if parts[-1] in ("lib", "main"):
        parts = parts[:-1]
    elif parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def references(text, module):
    """Absolute module paths (tuples) this file's text names."""
    text = strip_comments_and_strings(text)
    # Unit tests (an inline `mod tests` at the end of a file, where `super` is the file's own
    # module) are not part of the structure.
    text = text.split("#[cfg(test)]")[0]
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths.extend(expand_use(m.group(1)))
    for m in re.finditer(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        paths.append(m.group(1))
    # The module `super` and `self` are relative to: a file `a/b.rs` is module a::b, its
    # `super` is a; `a/b/mod.rs` is also a::b.
    # A child module named by a relative path (`agents::router()` in `routes/mod.rs`).
    for child in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", text, re.M):
        if re.search(r"(?<![:\w])" + child + r"::", text):
            paths.append("self::" + child)
    result = []
    for p in paths:
        segs = p.split("::")
        if segs[0] == "crate":
            base, rest = (), segs[1:]
        elif segs[0] in ("super", "self"):
            base = module
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
            rest = segs
        else:
            continue
        result.append(base + tuple(rest))
    return result


def graph_of(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                files[module_of(root, path)] = path
    edges = {m: set() for m in files}
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for target in references(text, module):
            # The longest prefix that is a file.
            for n in range(len(target), 0, -1):
                if target[:n] in files:
                    t = target[:n]
                    if t != module:
                        edges[module].add(t)
                    break
    return files, edges


def circles(edges):
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            connect(v)
    return out


def name(module):
    return "::".join(module) or "(crate root)"


def self_test():
    assert expand_use("crate::{a, b::{c, d as e}}") == ["crate::a", "crate::b::c", "crate::b::d"]
    assert expand_use("crate::a::{self, B}") == ["crate::a", "crate::a::B"]
    refs = references("use super::x; fn f() { crate::y::z(); } // crate::nope", ("a", "b"))
    assert set(refs) == {("a", "x"), ("y", "z")}, refs
    refs = references("mod child;\nfn f() { child::g(); }", ("a",))
    assert ("a", "child") in set(refs), refs
    refs = references("fn f() {}\n#[cfg(test)]\nmod tests { use super::g; }", ("a", "b"))
    assert refs == [], refs
    refs = references("pub mod quiet;\nfn f() {}", ("a",))
    assert ("a", "quiet") not in set(refs), refs
    edges = {("a",): {("b",)}, ("b",): {("a",)}, ("c",): {("a",)}}
    assert circles(edges) == [[("a",), ("b",)]]
    assert circles({("a",): {("b",)}, ("b",): set()}) == []
    print("module-cycles self-test passed")


def main():
    if "--self-test" in sys.argv:
        self_test()
        return 0
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    failed = False
    for crate in CRATES:
        root = os.path.join(repo, crate, "src")
        if not os.path.isdir(root):
            continue
        _, edges = graph_of(root)
        for circle in circles(edges):
            failed = True
            print(f"{crate}: module circle: {', '.join(name(m) for m in circle)}")
    if not failed:
        print("no module circles")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
