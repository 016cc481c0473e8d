#!/usr/bin/env python3
"""Prepares a sandbox once, then forks it N times to try N variants side by side: each
copy starts with what the preparation left (files, memory) and changes only itself.

    python3 examples/fork_variants.py --variants 3
"""

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

from vessel import Sandbox

PREPARE = "mkdir -p /work && seq 1 1000 > /work/data.txt"
# The variants to try: one command each, over the prepared data.
VARIANTS = [
    "awk '{s += $1} END {print s}' /work/data.txt",
    "sort -n -r /work/data.txt | head -n 1",
    "grep -c 7 /work/data.txt",
    "wc -l < /work/data.txt",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=len(VARIANTS))
    parser.add_argument("--template", default="minimal")
    args = parser.parse_args()
    tries = [VARIANTS[i % len(VARIANTS)] for i in range(args.variants)]
    with Sandbox.create(args.template, timeout=300) as prepared:
        prepared.commands.run(PREPARE)
        copies = prepared.fork(len(tries), timeout=120)
        try:
            with ThreadPoolExecutor(len(copies)) as pool:
                outputs = list(
                    pool.map(lambda pair: pair[0].commands.run(pair[1]).stdout.strip(),
                             zip(copies, tries))
                )
        finally:
            for copy in copies:
                copy.kill()
    print(json.dumps([{"variant": t, "output": o} for t, o in zip(tries, outputs)], indent=2))


if __name__ == "__main__":
    main()
