#!/usr/bin/env python3
"""Writes the functions a callgrind profile saw run in BINARY, one mangled
symbol per line in address order, for lld's --symbol-ordering-file.

Usage: callgrind_order.py BINARY CALLGRIND_OUT... > agent.order
BINARY must be the unstripped build the profile ran (its symbols name the
functions). Prints how much code ran, and over how many pages, to stderr.
"""
import re
import subprocess
import sys

NAMED = re.compile(r"^(c?ob|c?fn)=\((\d+)\)(?: (.*))?$")


def executed_functions(binary, path):
    """Names of the functions with a cost of their own in BINARY's object."""
    names, objects, current, out = {}, {}, None, set()
    with open(path, errors="replace") as f:
        for line in f:
            m = NAMED.match(line.rstrip("\n"))
            if not m:
                continue
            kind, ident, name = m.groups()
            if kind in ("ob", "cob"):
                if name:
                    objects[ident] = name
                if kind == "ob":
                    current = objects.get(ident)
                continue
            if name:
                names[ident] = name
            if kind == "fn" and current == binary and ident in names:
                # callgrind marks recursion levels as NAME'2.
                out.add(re.sub(r"'\d+$", "", names[ident]))
    return out


def main():
    binary, profiles = sys.argv[1], sys.argv[2:]
    executed = set()
    for p in profiles:
        executed |= executed_functions(binary, p)
    symbols = {}
    nm = subprocess.run(["nm", "-S", binary], capture_output=True, text=True, check=True).stdout
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            symbols.setdefault(parts[3], (int(parts[0], 16), int(parts[1], 16)))
    found = sorted((symbols[n][0], symbols[n][1], n) for n in executed if n in symbols)
    pages = {p for a, s, _ in found for p in range(a >> 12, ((a + max(s, 1) - 1) >> 12) + 1)}
    code = sum(s for _, s, _ in found)
    text = sum(s for _, s in symbols.values())
    print(
        f"{len(found)} functions ran: {code / 1024:.0f} KiB of {text / 1024:.0f} KiB of code, "
        f"spread over {len(pages)} pages ({len(pages) * 4 / 1024:.1f} MiB)",
        file=sys.stderr,
    )
    for _, _, name in found:
        print(name)


if __name__ == "__main__":
    main()
