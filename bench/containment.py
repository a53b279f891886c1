"""Benchmark: time to first change, time to contained and API calls as the attacker's footprint
grows, on an in-process simulated account. Speed is measured here, never asserted in tests.

    python bench/containment.py [--users 1 10 50]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.aws import AwsSession
from runner.drill import REGION, seed, simulated_account
from runner.engine import RunOptions
from runner.incident import validate_incident
from runner.service import AwsOptions, start_run


def one(users: int) -> dict[str, object]:
    with simulated_account() as session, tempfile.TemporaryDirectory() as tmp:
        data = seed(session)
        iam = session.client("iam")
        for i in range(users - 1):
            iam.create_user(UserName=f"extra-{i}")
            iam.create_access_key(UserName=f"extra-{i}")
            iam.add_user_to_group(GroupName="ecs_dev", UserName=f"extra-{i}")
        incident = validate_incident("bench", data["incident"])
        t0 = time.perf_counter()
        out = start_run(incident, playbook_ref=None, config_path=None,
                        options=RunOptions(approve_all=True, by="bench", max_changes=10_000),
                        aws_opts=AwsOptions(region=REGION), state=Path(tmp), stream=io.StringIO(),
                        session=AwsSession(region=REGION, boto_session=session))
        wall = time.perf_counter() - t0
        m = out.result["metrics"]
        return {"users": users, "status": out.result["status"], "wall_s": round(wall, 3),
                "first_change_s": m["time_to_first_change_s"], "contained_s": m["time_to_contained_s"],
                "api_calls": m["api_calls_total"],
                "changes": sum(len(s["changes"]) for s in out.result["steps"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, nargs="+", default=[1, 10, 50])
    args = parser.parse_args()
    header = f"{'users':>5} {'changes':>7} {'api_calls':>9} {'first_change_s':>14} {'contained_s':>11} {'wall_s':>7}"
    print(header + "  status")
    for n in args.users:
        r = one(n)
        print(f"{r['users']:>5} {r['changes']:>7} {r['api_calls']:>9} {r['first_change_s']!s:>14} "
              f"{r['contained_s']!s:>11} {r['wall_s']:>7}  {r['status']}")


if __name__ == "__main__":
    main()
