"""How fast `rld --help` answers, against the floor of `python -c "import click"`.

    python bench/bench_help.py [--rounds 15]

Both run as fresh processes, alternately, so a busy machine slows both alike; the ratio of
their medians is the figure (the target: at most 3x). Every stage imports the library (and
torch, ~2 s) inside its command, so help needs little more than click itself.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import click": [sys.executable, "-c", "import click"],
    "rld --help": [sys.executable, "-m", "stages.cli", "--help"],
    "rld student train --help": [sys.executable, "-m", "stages.cli", "student", "train", "--help"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, cwd=REPO, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    floor = statistics.median(times["import click"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:<26} median {median * 1000:6.0f} ms  ({median / floor:.1f}x import click)")


if __name__ == "__main__":
    main()
