#!/usr/bin/env python3
"""Lists the longest functions in src/ (outside #[cfg(test)] modules), longest first.

Why: issue [2/9] asks for no function over ~80 lines; this keeps the figure checkable.
Usage: scripts/fn-lengths.py [N]   (default: the 15 longest)
Counts lines from the `fn` line to its closing brace, by brace depth (strings and comments
are skipped roughly: good enough for a ranking, not a parser).
"""
import os
import re
import sys

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def strip(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//", 1)[0]


def has_body(lines, i):
    """A trait method without a body ends in `;` before any `{`."""
    for line in lines[i : i + 40]:
        line = strip(line)
        b, s = line.find("{"), line.find(";")
        if b >= 0 and (s < 0 or b < s):
            return True
        if s >= 0:
            return False
    return False


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    out = []
    test_depth = None
    depth = 0
    stack = []  # (name, start line, depth at start)
    pending_test = False
    for i, raw in enumerate(lines):
        line = strip(raw)
        if "#[cfg(test)]" in line:
            pending_test = True
        m = FN.match(line)
        if m and test_depth is None and has_body(lines, i):
            stack.append((m.group(7), i, depth))
        if pending_test and re.match(r"^\s*(pub\s+)?mod\s+\w+\s*\{", line):
            test_depth = depth
            pending_test = False
        for ch in line:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if test_depth is not None and depth == test_depth:
                    test_depth = None
                while stack and depth == stack[-1][2] and ch == "}":
                    name, start, _ = stack.pop()
                    out.append((i - start + 1, name, start + 1))
                    break
    return out


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    found = []
    for root, _, files in os.walk("src"):
        for f in files:
            if f.endswith(".rs"):
                p = os.path.join(root, f)
                for length, name, line in functions(p):
                    found.append((length, f"{p}:{line}", name))
    found.sort(reverse=True)
    for length, where, name in found[:n]:
        print(f"{length:5}  {name:28} {where}")
    over = sum(1 for f in found if f[0] > 80)
    print(f"functions over 80 lines: {over}")


main()
