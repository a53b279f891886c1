"""Fault soak: N containment runs against a private moto server through the fault proxy, then the
account itself is checked (not stanch's word for it). Prints the table of issue 13.

    python bench/soak.py --runs 20            # 20 runs per profile
    python bench/soak.py --runs 4 --profile 50%-throttle
    python bench/soak.py --kill-every-boundary   # kill -9 before and after each write, then resume

Each run gets its own account (the moto server is reset), other names than the reference, its own
state directory, and `stanch run --approve-all` in a separate process through the proxy. A run that
ends anything but contained is resumed once (`stanch resume`), as a responder would; the table shows
both. Never reaches AWS: the proxy only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402 - after the path setup above

from runner.drill import attack_trail, seed  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

PROFILES: dict[str, dict[str, Any]] = {
    "20%-throttle+5%-5xx": {"throttle": 0.20, "error5xx": 0.05, "latency_ms": 30},
    "50%-throttle": {"throttle": 0.50},
    "resets+timeouts": {"throttle": 0.10, "reset": 0.05, "timeout": 0.02, "latency_ms": 10},
}
NAMES = [
    {"user": "svc-deploy", "group": "release-eng", "cluster": "payments", "service": "ledger-sync",
     "image": "xmrig/xmrig:6.21"},
    {"user": "ci-bot", "group": "builders", "cluster": "batch", "service": "nightly", "image": "xmrig/xmrig"},
]
CONFIG = """[aws]
read_timeout = 3
connect_timeout = 2
# the all-region search has its own tests; two regions keep a soak run about containment under faults
regions = ["us-east-1", "eu-west-1"]
"""


@dataclass
class Tally:
    runs: int = 0
    contained: int = 0
    contained_after_resume: int = 0
    keys_inactive: int = 0
    miners_stopped: int = 0
    tracebacks: int = 0
    double_applies: int = 0
    wall_s: list[float] = field(default_factory=list)
    exits: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("moto server did not start")


def stanch(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=900, check=False, cwd=ROOT)


def double_applies(state: Path) -> int:
    """Changes journaled as applied more than once, per run (from the audit log)."""
    log = state / "audit.jsonl"
    if not log.exists():
        return 0
    applied: Counter[tuple[str, str]] = Counter()
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "change.applied":
            applied[(rec.get("run_id"), rec.get("digest"))] += 1
    return sum(1 for n in applied.values() if n > 1)


def account_checks(moto_url: str, data: dict[str, Any]) -> tuple[bool, bool]:
    """(every attacker key inactive, every miner task stopped and service at 0), read from moto directly."""
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    iam, ecs = session.client("iam", endpoint_url=moto_url), session.client("ecs", endpoint_url=moto_url)
    names = data["names"]
    keys = iam.list_access_keys(UserName=names["user"])["AccessKeyMetadata"]
    keys_ok = bool(keys) and all(k["Status"] == "Inactive" for k in keys)
    svc = ecs.describe_services(cluster=names["cluster"], services=[names["service"]])["services"][0]
    running = ecs.list_tasks(cluster=names["cluster"], desiredStatus="RUNNING")["taskArns"]
    return keys_ok, svc["desiredCount"] == 0 and not running


def one_run(i: int, moto_url: str, profile: dict[str, Any], seed_value: int, tally: Tally) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10).read()
    names = NAMES[i % len(NAMES)]
    os.environ["AWS_ENDPOINT_URL"] = moto_url  # seeding talks to moto directly
    data = seed(boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name="us-east-1"), names)
    with tempfile.TemporaryDirectory() as tmp, FaultProxy(moto_url, seed=seed_value + i, hang_s=10,
                                                          **profile) as proxy:
        state = Path(tmp) / "state"
        incident = Path(tmp) / "incident.json"
        incident.write_text(json.dumps(data["incident"]))
        config = Path(tmp) / "stanch.toml"
        config.write_text(CONFIG)
        trail = Path(tmp) / "trail.json"  # the attack's CloudTrail: attribution has a source, as in an account
        trail.write_text(json.dumps(attack_trail(data).document()))
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "STANCH_STATE_DIR": str(state),
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        env.pop("AWS_PROFILE", None)
        t0 = time.perf_counter()
        proc = stanch(["run", str(incident), "--approve-all", "--config", str(config), "--output", "json",
                       "--cloudtrail", str(trail)], env)
        outputs = [proc]
        contained = proc.returncode in (0, 5)
        if not contained:
            try:
                run_id = json.loads(proc.stdout)["run_id"]
            except (ValueError, KeyError):
                run_id = None
            if run_id:
                again = stanch(["resume", run_id, "--approve-all", "--output", "json"], env)
                outputs.append(again)
                tally.contained_after_resume += again.returncode in (0, 5)
        tally.wall_s.append(time.perf_counter() - t0)
        tally.runs += 1
        tally.contained += contained
        tally.exits[proc.returncode] += 1
        tally.tracebacks += sum("Traceback (most recent call last)" in p.stderr for p in outputs)
        tally.double_applies += double_applies(state)
        tally.faults.update(proxy.counts)
        keys_ok, miners_ok = account_checks(moto_url, data)
        tally.keys_inactive += keys_ok
        tally.miners_stopped += miners_ok
        if not contained:
            tail = proc.stderr.strip().splitlines()[-3:]
            print(f"  run {i}: exit {proc.returncode}: {' | '.join(tail)[:300]}", file=sys.stderr)


def kill_run(i: int, moto_url: str, nth: int, phase: str, tally: Tally) -> int:
    """One run killed (SIGKILL) exactly when its nth write is about to reach AWS ("before") or has
    reached it ("after"), then resumed; returns how many writes the run made."""
    import signal

    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10).read()
    os.environ["AWS_ENDPOINT_URL"] = moto_url
    data = seed(boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name="us-east-1"), NAMES[i % len(NAMES)])
    procs: list[subprocess.Popen[str]] = []

    def kill(operation: str, number: int, when: str) -> None:
        if number == nth and when == phase and procs and procs[0].poll() is None:
            os.kill(procs[0].pid, signal.SIGKILL)
            if when == "before":
                raise ConnectionAbortedError("killed before the write was sent")

    with tempfile.TemporaryDirectory() as tmp, FaultProxy(moto_url, on_write=kill) as proxy:
        state = Path(tmp) / "state"
        incident = Path(tmp) / "incident.json"
        incident.write_text(json.dumps(data["incident"]))
        trail = Path(tmp) / "trail.json"
        trail.write_text(json.dumps(attack_trail(data).document()))
        config = Path(tmp) / "stanch.toml"
        config.write_text(CONFIG)
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "STANCH_STATE_DIR": str(state),
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        t0 = time.perf_counter()
        procs.append(subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(incident), "--approve-all",
                                       "--config", str(config), "--cloudtrail", str(trail)],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL))
        _, err = procs[0].communicate(timeout=900)
        outputs = [err]
        contained = procs[0].returncode in (0, 5)
        if procs[0].returncode == -signal.SIGKILL:
            run_id = json.loads((state / "audit.jsonl").read_text().splitlines()[0])["run_id"]
            again = stanch(["resume", run_id, "--approve-all"], env)
            outputs.append(again.stderr)
            contained = again.returncode in (0, 5)
        tally.wall_s.append(time.perf_counter() - t0)
        tally.runs += 1
        tally.contained += contained
        tally.tracebacks += sum("Traceback (most recent call last)" in e for e in outputs)
        tally.double_applies += double_applies(state)
        keys_ok, miners_ok = account_checks(moto_url, data)
        tally.keys_inactive += keys_ok
        tally.miners_stopped += miners_ok
        return proxy.writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--profile", choices=sorted(PROFILES), action="append")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--kill-every-boundary", action="store_true",
                        help="instead of the fault profiles: kill -9 before and after every write, then resume")
    args = parser.parse_args()
    moto, url = start_moto()
    rows = []
    try:
        if args.kill_every_boundary:
            tally = Tally()
            writes = kill_run(0, url, 10_000, "never", Tally())  # a clean run counts the writes
            for nth in range(1, writes + 1):
                for phase in ("before", "after"):
                    kill_run(nth, url, nth, phase, tally)
            rows.append((f"kill -9 x{2 * writes}", tally))
        for name in [] if args.kill_every_boundary else args.profile or ["20%-throttle+5%-5xx", "50%-throttle"]:
            tally = Tally()
            for i in range(args.runs):
                one_run(i, url, PROFILES[name], args.seed, tally)
            rows.append((name, tally))
    finally:
        moto.terminate()
        moto.wait(10)
    print(f"{'profile':<22} {'runs':>4} {'contained':>9} {'+resume':>7} {'keys inactive':>13} "
          f"{'miners stopped':>14} {'tracebacks':>10} {'double applies':>14} {'mean s':>7}  faults injected")
    for name, t in rows:
        mean = sum(t.wall_s) / len(t.wall_s) if t.wall_s else 0
        faults = ", ".join(f"{k} {v}" for k, v in sorted(t.faults.items()) if v)
        print(f"{name:<22} {t.runs:>4} {t.contained:>9} {t.contained_after_resume:>7} {t.keys_inactive:>13} "
              f"{t.miners_stopped:>14} {t.tracebacks:>10} {t.double_applies:>14} {mean:>7.1f}  {faults}")


if __name__ == "__main__":
    main()
