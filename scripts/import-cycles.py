#!/usr/bin/env python3
"""Report import circles among guard's `src/` modules.

A module is a file (`src/x.rs`, `src/a/b.rs`) or a folder (`src/a/` = `src/a/mod.rs` and
everything under it). Edges come from `crate::…` paths (in `use` trees, including nested
`{…}` groups, and inline paths such as `crate::clock::now()`) and `super::…` paths, resolved to the
longest module prefix that exists. A `#[macro_export]` macro lives at the crate root, so
`crate::errln!(…)` is an edge to the module whose `macro_rules! errln` defines it, not to lib.rs.
Comments and `#[cfg(test)]` modules are skipped.

Two levels are checked:
  - top level: `src/x.rs` and `src/x/` are the nodes (edges inside one folder are ignored);
  - inside each folder: its files and sub-folders are the nodes, edges to the folder's own
    `mod.rs` (the parent: trait, registry) are reported separately because a child using its
    parent's contract while the parent's registry names the child is the usual Rust shape.
    (A parent reaches its children by relative paths, `postgres::PostgresTarget`, which are
    not `crate::`/`super::` paths and so are not edges here.)

    scripts/import-cycles.py          # prints the circles, exit 1 when any
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def modules():
    """Map module path tuples (('targets','postgres','dump')) to file paths."""
    out = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), SRC)
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            out[tuple(parts)] = os.path.join(root, f)
    return out


def strip(text):
    """Comments out, string and char literals emptied (one pass, so `"//"` stays a string)."""
    tok = re.compile(r"""//[^\n]*|/\*.*?\*/|r(#*)"(?:.|\n)*?"\1|"(?:\\.|[^"\\])*"|'(?:\\.[^']*|[^\\'])'""", re.S)
    text = tok.sub(lambda m: "" if m.group(0).startswith("/") else '""', text)
    # drop `#[cfg(test)] mod tests { … }` (brace matched)
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", text)
        if not m:
            break
        i, depth = m.end(), 1
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[: m.start()] + text[i:]
    return text


def expand_tree(s):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    s = s.replace(" ", "").replace("\n", "")
    if "{" not in s:
        return [s]
    i = s.index("{")
    prefix, body = s[:i], s[i + 1 : s.rindex("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    return [p for part in parts if part for p in expand_tree(prefix + part)]


def paths(text):
    out = []
    for m in re.finditer(r"\buse\s+((?:crate|super)::[^;]*);", text, flags=re.S):
        out += expand_tree(m.group(1))
    text = re.sub(r"\buse\s+(?:crate|super)::[^;]*;", "", text, flags=re.S)
    out += re.findall(r"\b(?:crate|super)(?:::(?:super|\w+))+!?", text)
    return out


def exported_macros(mods):
    """Macro name -> the module that defines it with `#[macro_export]`."""
    out = {}
    for m, f in mods.items():
        for name in re.findall(r"#\[macro_export\]\s*macro_rules!\s*(\w+)", open(f).read()):
            out[name] = m
    return out


def resolve(path, here, mods, macros):
    if path.endswith("!"):
        segs = path[:-1].split("::")
        if segs[0] == "crate" and len(segs) == 2 and segs[1] in macros:
            return macros[segs[1]]
        path = path[:-1]
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    else:
        # `super` is the parent module (for `a/b.rs` and `a/b/mod.rs` alike: `a`)
        base = list(here)[:-1]
        segs = segs[1:]
        while segs and segs[0] == "super":
            base = base[:-1]
            segs = segs[1:]
    full = base + [s for s in segs if s not in ("self", "*")]
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return ()


def cycles(nodes, edges):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "/".join(m) or "lib"


def main():
    mods = modules()
    macros = exported_macros(mods)
    raw = {}  # module -> set of modules it names
    for m, f in mods.items():
        text = strip(open(f).read())
        raw[m] = {resolve(p, m, mods, macros) for p in paths(text)} - {m}
    bad = 0

    # Top level.
    top = lambda m: m[:1]
    tnodes = {top(m) for m in mods}
    tedges = {}
    for a, bs in raw.items():
        for b in bs:
            if top(a) != top(b) and a != () and b != ():
                tedges.setdefault(top(a), set()).add(top(b))
    lib_users = sorted(name(a) for a, bs in raw.items() if () in bs and a != ())
    for c in cycles(tnodes, tedges):
        bad += 1
        print("top-level circle:", " ".join(name(x) for x in c))
    if lib_users:
        bad += 1
        print("modules importing from lib.rs:", " ".join(lib_users))

    # Inside each folder.
    folders = {m for m in mods if any(len(o) > len(m) and o[: len(m)] == m for o in mods)}
    for fo in sorted(folders):
        if fo == ():
            continue
        d = len(fo) + 1
        kids = {m[:d] for m in mods if len(m) >= d and m[: len(fo)] == fo}
        edges, parent_uses = {}, set()
        for a, bs in raw.items():
            if len(a) < d or a[: len(fo)] != fo:
                continue
            for b in bs:
                if b == fo:
                    parent_uses.add(name(a[:d]))
                elif len(b) >= d and b[: len(fo)] == fo and a[:d] != b[:d]:
                    edges.setdefault(a[:d], set()).add(b[:d])
        for c in cycles(kids, edges):
            bad += 1
            print(f"circle inside {name(fo)}/:", " ".join(name(x) for x in c))
        if parent_uses:
            print(f"note: {name(fo)}/ children using {name(fo)}/mod.rs:", " ".join(sorted(parent_uses)))
    if not bad:
        print("no import circle among src/ modules")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
