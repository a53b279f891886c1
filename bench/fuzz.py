"""The fuzz soak of issue 13: thousands of mutated detections through intake, and hundreds through
the CLI (`stanch run FILE --dry-run`). Prints the outcome counts; any BUG line is a defect.

    python bench/fuzz.py --intake 5000 --cli 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzzing import fuzz_cli, fuzz_intake


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intake", type=int, default=5000)
    parser.add_argument("--cli", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    intake = fuzz_intake(args.intake, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        cli = fuzz_cli(args.cli, Path(tmp), args.seed + 1)
    bugs = 0
    for name, counts in (("intake", intake), ("cli", cli)):
        print(f"{name}: {sum(counts.values())} cases")
        for outcome, n in counts.most_common():
            print(f"  {n:>6}  {outcome}")
            bugs += n if outcome.startswith("BUG") else 0
    print(f"bugs: {bugs}")
    return 1 if bugs else 0


if __name__ == "__main__":
    raise SystemExit(main())
