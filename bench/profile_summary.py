"""Summarize a py-spy raw profile (collapsed stacks): where the samples went.

    python bench/profile_summary.py profile.txt [--top 25]

py-spy writes one line per distinct stack, ``frame;frame;...;leaf COUNT``, each frame as
``function (file:line)``. Printed: the functions with the most samples of their own
(leaf, all lines of a function together), the hottest single lines, and the share of the
samples that passed through each function (inclusive).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for raw in path.read_text().splitlines():
        m = _LINE.match(raw.strip())
        if m:
            stacks.append((m.group(1).split(";"), int(m.group(2))))
    return stacks


def function_of(frame: str) -> str:
    m = _FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def summarize(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(n for _, n in stacks) or 1
    own_fn: Counter[str] = Counter()
    own_line: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        own_fn[function_of(frames[-1])] += n
        own_line[frames[-1]] += n
        for fn in {function_of(f) for f in frames}:
            inclusive[fn] += n
    out = [f"{total} samples", "", "own time, by function:"]
    out += [f"  {100 * n / total:5.1f}%  {fn}" for fn, n in own_fn.most_common(top)]
    out += ["", "own time, by line:"]
    out += [f"  {100 * n / total:5.1f}%  {fr}" for fr, n in own_line.most_common(top)]
    out += ["", "inclusive (samples with the function on the stack):"]
    out += [f"  {100 * n / total:5.1f}%  {fn}" for fn, n in inclusive.most_common(top * 2)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarize(parse(args.profile), args.top))


if __name__ == "__main__":
    main()
