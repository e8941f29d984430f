"""How long the ``backupmx`` command takes to start: the median wall time of ``backupmx
--version`` and of the parser alone, over ``--runs`` runs, with the modules it imported.

    .venv/bin/python bench/command_start.py --runs 20

Prints a Markdown table. The command runs once per timer tick, per monitoring scrape
(``status --prometheus``) and per admin call; what it imports at start is what it costs.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import List


def run_times(argv: List[str], runs: int) -> List[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    python = sys.executable
    cases = {
        "python -c pass (the interpreter alone)": [python, "-c", "pass"],
        "backupmx --version": [python, "-m", "backupmx.admin.main", "--version"],
        "import twisted.internet.endpoints": [python, "-c", "import twisted.internet.endpoints"],
    }
    print("| what | median s | min s |")
    print("|---|---|---|")
    for name, argv in cases.items():
        times = run_times(argv, args.runs)
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} |")
    loaded = subprocess.run([python, "-c", "import sys, backupmx.admin.main as m; "
                             "m.build_parser(); print('twisted' in sys.modules)"],
                            check=True, capture_output=True, text=True).stdout.strip()
    print(f"\nTwisted loaded by the parser: {loaded}")


if __name__ == "__main__":
    main()
