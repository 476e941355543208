#!/usr/bin/env python3
"""List Rust functions longer than a limit (issue 18: "no function over ~120 lines outside flat
`match`es").

How it counts: comments are removed and string/char literals emptied (line breaks kept, so line
numbers stay true), then every `fn name(…) … {` is brace-matched to its closing `}`; the length
is the number of source lines from the `fn` line to the closing brace, inclusive (the same way
as the aesthetics review: rustfmt'd source, brace matching). Functions inside
`#[cfg(test)]` modules and `#[test]` functions are left out unless `--tests`.

A function is "flat" when one `match` at the top level of its body covers at least 80% of its
lines and no arm of that match is itself longer than the limit: one arm per case, as in a
dispatch table. Flat functions are listed separately (with `--all`) and do not count.

    scripts/fn-lengths.py                 # src/, limit 120; exit 1 when any non-flat function is over
    scripts/fn-lengths.py --limit 80 src/policy
    scripts/fn-lengths.py --all --tests src tests
"""
import argparse
import os
import re
import sys


def strip(text):
    """Comments removed and literals emptied, newlines kept."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i : i + 40])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            # char literal ('a', '\n', '\u{..}') vs lifetime ('a)
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i : i + 12])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def drop_tests(text):
    """Blank out `#[cfg(test)] mod … { … }` and `#[test] fn … { … }` (newlines kept)."""
    pat = re.compile(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{|#\[(tokio::)?test\][^{]*\{")
    while True:
        m = pat.search(text)
        if not m:
            return text
        i, depth = m.end(), 1
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        blank = re.sub(r"[^\n]", " ", text[m.start() : i])
        text = text[: m.start()] + blank + text[i:]


FN = re.compile(r"\bfn\s+(\w+)")


def close(text, i):
    """Index just past the brace matching the `{` at i."""
    depth = 0
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def body_start(text, i):
    """From just after `fn name`, the index of the body's `{`, or None for a declaration."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c in "(<[":
            depth += 1
        elif c in ")>]":
            # `->` is not a closing angle bracket
            if not (c == ">" and text[i - 1] == "-"):
                depth -= 1
        elif c == ";" and depth <= 0:
            return None
        elif c == "{" and depth <= 0:
            return i
        i += 1
    return None


def line_of(text, i):
    return text.count("\n", 0, i) + 1


def flat_match(text, b, e, limit):
    """True when one top-level `match` in the body text[b:e] covers ≥ 80% of its lines and
    none of its arms is over the limit."""
    total = line_of(text, e) - line_of(text, b) + 1
    i, depth = b + 1, 0
    while i < e - 1:
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and text.startswith("match", i) and not (text[i - 1].isalnum() or text[i - 1] == "_"):
            j = text.find("{", i)
            # the scrutinee may itself contain braces (struct literals are rare): take the first
            if j < 0 or j > e:
                break
            k = close(text, j)
            span = line_of(text, k) - line_of(text, i) + 1
            if span >= 0.8 * total:
                return longest_arm(text, j, k) <= limit
            i = k
            continue
        i += 1
    return False


def longest_arm(text, j, k):
    """Lines of the longest arm of the match block text[j:k] (arms split at depth-0 `=>`)."""
    starts, depth, i = [], 0, j + 1
    while i < k - 1:
        c = text[i]
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        elif depth == 0 and text.startswith("=>", i):
            starts.append(i)
        i += 1
    starts.append(k)
    return max(line_of(text, b) - line_of(text, a) + 1 for a, b in zip(starts, starts[1:])) if len(starts) > 1 else 0


def functions(path, tests):
    raw = open(path, encoding="utf-8").read()
    text = strip(raw)
    if not tests:
        text = drop_tests(text)
    for m in FN.finditer(text):
        b = body_start(text, m.end())
        if b is None:
            continue
        e = close(text, b)
        yield m.group(1), line_of(text, m.start()), line_of(text, e - 1), text, b, e


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", default=["src"])
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--all", action="store_true", help="also list the flat functions over the limit")
    ap.add_argument("--tests", action="store_true", help="include #[test] functions and #[cfg(test)] modules")
    a = ap.parse_args()
    files = []
    for p in a.paths:
        if os.path.isfile(p):
            files.append(p)
        for root, _, names in os.walk(p):
            files += [os.path.join(root, f) for f in names if f.endswith(".rs")]
    over, flat, count = [], [], 0
    for f in sorted(files):
        for name, start, end, text, b, e in functions(f, a.tests):
            count += 1
            n = end - start + 1
            if n <= a.limit:
                continue
            (flat if flat_match(text, b, e, a.limit) else over).append((n, f"{f}:{start}", name))
    for n, where, name in sorted(over, reverse=True):
        print(f"{n:5} {where} {name}")
    if a.all:
        for n, where, name in sorted(flat, reverse=True):
            print(f"{n:5} {where} {name} (flat match)")
    print(f"{len(over)} of {count} functions over {a.limit} lines" + (f" ({len(flat)} flat matches not counted)" if flat else ""))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
