"""Side by side: stanch and Cloud Custodian containing the same seeded attack on a moto server.

    python bench/compare_custodian.py                  # everything, medians of 5
    python bench/compare_custodian.py --reps 2 --rows basic scale --scale 1 10 50

Cloud Custodian (c7n) is installed by this script into its own virtualenv under the cache
directory (default ~/.cache/stanch-bench/c7n-VERSION); it is never a stanch dependency.

Every measurement gets its own moto server (127.0.0.1, a port the kernel picks), seeded with the
reference attack under other names next to legitimate look-alikes, then warmed with one call per
service, so neither tool pays for moto's first-use costs. Both tools run as processes against
the same endpoint (AWS_ENDPOINT_URL); after each run the account is checked: every attacker key
inactive, every miner service at 0, every miner task stopped. A run that did not contain is an
error, not a number. The two tools alternate (stanch first on even repetitions) and each row
shows medians. Custodian runs contain-only policies that do what stanch's containment does for
these resources (disable the attacker users' keys, scale the miner services to 0, stop their
tasks), given the names; stanch runs its whole reference playbook (discovery, evidence,
quarantine, group and policy removal, verification) from the incident alone.

Rows: no added latency; +50 ms per call; fan-out (2 users x 2 keys, 50 services, 200 tasks)
+50 ms, and without added latency; the scale curve for stanch alone (attacker users: wall, API calls, calls per change,
peak RSS); `--help` and `--version` wall for both. Latency comes from the fault proxy in
tests/faultproxy.py; without it those rows say "skipped: no proxy".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from runner.drill import attack_trail, seed  # noqa: E402
from tests.motoserver import start as start_moto  # noqa: E402
from tests.motoserver import stop as stop_moto  # noqa: E402

REGION = "us-east-1"
C7N_VERSION = "0.9.53"
NAMES = {"user": "svc-backup", "group": "k8s-ops", "cluster": "billing", "service": "report-gen",
         "image": "xmrig/xmrig:6.21"}
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
       "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
HIDDEN = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "STANCH_CONFIG")


# ------------------------------------------------------------------ the tools
def custodian_path(cache: Path, version: str) -> Path:
    """Cloud Custodian in its own virtualenv under `cache`, installed on first use."""
    venv = cache / f"c7n-{version}"
    exe = venv / "bin" / "custodian"
    if not exe.exists():
        print(f"installing c7n=={version} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"c7n=={version}"], check=True)
    return exe


def stanch_command() -> list[str]:
    script = Path(sys.executable).with_name("stanch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner.cli"]


def clean_env(endpoint: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN}
    env.update(ENV)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


@dataclass
class Measured:
    wall_s: float
    api_calls: int
    changes: int
    peak_rss_mb: float
    #: stanch's own metrics (the run document): first containing change, and contained and verified
    first_change_s: float | None = None
    contained_s: float | None = None
    cached_reads: int = 0


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str, str, float]:
    """Run to completion; wall seconds, exit code, stdout, stderr and the process's own peak RSS."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return wall, proc.returncode, out.read(), err.read(), usage.ru_maxrss / 1024


# ------------------------------------------------------------------ the account
@dataclass
class Scenario:
    """What is seeded, and what the attacker owns (what containment must reach)."""

    name: str
    extra_users: int = 0  # more attacker users, one key each, in the attacker's group
    keys_per_user: int = 1
    services: int = 1  # miner services in the attacker's cluster
    tasks_per_service: int = 2
    users: list[str] = field(default_factory=list)
    service_names: list[str] = field(default_factory=list)
    #: the attack's CloudTrail (what an organization trail would hold): stanch attributes from it
    trail: list[dict[str, Any]] = field(default_factory=list)


def seed_scenario(url: str, sc: Scenario) -> dict[str, Any]:
    session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    os.environ["AWS_ENDPOINT_URL"] = url  # drill.seed builds its own clients from the session
    try:
        data = seed(session, {**NAMES})
        trail = attack_trail(data)
        root = trail.root()
        iam, ecs = session.client("iam"), session.client("ecs")

        def key_for(user: str) -> None:
            key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
            trail.add(root, "iam", "CreateAccessKey", {"userName": user}, {"accessKey": {"accessKeyId": key}})

        sc.users = [NAMES["user"]]
        for _ in range(sc.keys_per_user - 1):
            key_for(NAMES["user"])
        for i in range(sc.extra_users):
            name = f"{NAMES['user']}-{i:03d}"
            iam.create_user(UserName=name)
            trail.add(root, "iam", "CreateUser", {"userName": name})
            for _ in range(sc.keys_per_user):
                key_for(name)
            iam.add_user_to_group(GroupName=NAMES["group"], UserName=name)
            trail.add(root, "iam", "AddUserToGroup", {"groupName": NAMES["group"], "userName": name})
            sc.users.append(name)
        sc.trail = trail.records
        sc.service_names = [NAMES["service"]]
        if sc.services > 1 or sc.tasks_per_service != 2:
            service = ecs.describe_services(cluster=NAMES["cluster"], services=[NAMES["service"]])["services"][0]
            net = service["networkConfiguration"]
            td = service["taskDefinition"]
            for i in range(1, sc.services):
                name = f"{NAMES['service']}-{i:02d}"
                ecs.create_service(cluster=NAMES["cluster"], serviceName=name, taskDefinition=td,
                                   desiredCount=sc.tasks_per_service, launchType="FARGATE", networkConfiguration=net)
                sc.service_names.append(name)
            for name in sc.service_names:
                have = 2 if name == NAMES["service"] else 0
                left = sc.tasks_per_service - have
                while left > 0:
                    n = min(left, 10)
                    ecs.run_task(cluster=NAMES["cluster"], taskDefinition=td, count=n, group=f"service:{name}",
                                 startedBy=f"ecs-svc/{name}", launchType="FARGATE", networkConfiguration=net)
                    left -= n
        return dict(data["incident"])
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)


def warm(url: str) -> None:
    """One call per service both tools use, so moto's lazy set-up is not timed."""
    from botocore.exceptions import ClientError

    s = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    for service, call in (("sts", "get_caller_identity"), ("iam", "list_users"), ("ecs", "list_clusters"),
                          ("ec2", "describe_regions"), ("cloudtrail", "describe_trails"), ("s3", "list_buckets"),
                          ("organizations", "describe_organization")):
        with contextlib.suppress(ClientError):  # e.g. no organization: the call still set the service up
            getattr(s.client(service, endpoint_url=url), call)()


def contained(url: str, sc: Scenario) -> list[str]:
    """What containment missed (empty when every key, service and task of the attacker is contained)."""
    s = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    iam, ecs = s.client("iam", endpoint_url=url), s.client("ecs", endpoint_url=url)
    missed = [f"key of {u} still active" for u in sc.users
              for k in iam.list_access_keys(UserName=u)["AccessKeyMetadata"] if k["Status"] != "Inactive"]
    for i in range(0, len(sc.service_names), 10):
        for svc in ecs.describe_services(cluster=NAMES["cluster"], services=sc.service_names[i:i + 10])["services"]:
            if svc["desiredCount"] != 0:
                missed.append(f"service {svc['serviceName']} desiredCount {svc['desiredCount']}")
    running = ecs.list_tasks(cluster=NAMES["cluster"], desiredStatus="RUNNING")["taskArns"]
    if running:
        missed.append(f"{len(running)} miner task(s) still running")
    return missed


@contextmanager
def moto_account(sc: Scenario) -> Iterator[tuple[str, dict[str, Any]]]:
    proc, url = start_moto(managed_policies="all", env=clean_env())
    try:
        incident = seed_scenario(url, sc)
        warm(url)
        yield url, incident
    finally:
        stop_moto(proc)


@contextmanager
def latency(url: str, ms: int, trail: list[dict[str, Any]]) -> Iterator[str]:
    """Both tools talk to the moto server through the project's proxy, which adds `ms` per call and
    answers CloudTrail LookupEvents from the attack's trail (moto has no LookupEvents: its 500s
    would cost stanch botocore's whole retry budget, a wait real CloudTrail never imposes)."""
    from tests.faultproxy import FaultProxy

    with FaultProxy(url, latency_ms=ms, lookup_events=trail) as proxy:
        yield str(proxy.url)


def have_proxy() -> bool:
    try:
        import tests.faultproxy  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ one measurement per tool
def run_stanch(url: str, incident: dict[str, Any], work: Path, trail: list[dict[str, Any]]) -> Measured:
    path = work / "incident.json"
    path.write_text(json.dumps(incident))
    (work / "trail.json").write_text(json.dumps({"Records": trail}))
    # like compared with like: Custodian runs in one region, so stanch searches that one region too
    (work / "stanch.toml").write_text(f'[aws]\nregions = ["{REGION}"]\n')
    cmd = [*stanch_command(), "run", str(path), "--approve-all", "--by", "bench", "--output", "json",
           "--max-changes", "100000", "--state-dir", str(work / "state"), "--cloudtrail", str(work / "trail.json"),
           "--config", str(work / "stanch.toml")]
    wall, code, out, err, rss = timed(cmd, clean_env(url), work)
    if code not in (0, 5):
        raise RuntimeError(f"stanch exited {code}: {err[-2000:]}")
    doc = json.loads(out)
    changes = sum(1 for s in doc["steps"] for c in s["changes"] if c["status"] == "applied")
    metrics = doc["metrics"]
    return Measured(wall, int(metrics["api_calls_total"]), changes, rss, metrics.get("time_to_first_change_s"),
                    metrics.get("time_to_contained_s"), int(metrics.get("api_calls_cached") or 0))


def custodian_policy(sc: Scenario) -> dict[str, Any]:
    groups = [f"service:{n}" for n in sc.service_names]
    return {"policies": [
        {"name": "disable-attacker-keys", "resource": "iam-user",
         "filters": [{"type": "value", "key": "UserName", "op": "in", "value": sc.users}],
         "actions": [{"type": "remove-keys", "disable": True}]},
        {"name": "scale-miners-to-zero", "resource": "ecs-service",
         "filters": [{"type": "value", "key": "serviceName", "op": "in", "value": sc.service_names}],
         "actions": [{"type": "modify", "update": {"desiredCount": 0}}]},
        {"name": "stop-miner-tasks", "resource": "ecs-task",
         "filters": [{"type": "value", "key": "group", "op": "in", "value": groups}],
         "actions": [{"type": "stop", "reason": "incident containment (bench)"}]},
    ]}


def run_custodian(exe: Path, url: str, sc: Scenario, work: Path) -> Measured:
    policy = work / "policy.json"  # custodian reads JSON as well as YAML
    policy.write_text(json.dumps(custodian_policy(sc)))
    out_dir = work / "c7n-out"
    cmd = [str(exe), "run", "-s", str(out_dir), "--region", REGION, "--cache-period", "0", str(policy)]
    wall, code, _, err, rss = timed(cmd, clean_env(url), work)
    if code != 0:
        raise RuntimeError(f"custodian exited {code}: {err[-2000:]}")
    calls = 0
    changes = 0
    for meta in out_dir.glob("*/metadata.json"):  # each policy's API calls, as Custodian counts them
        calls += sum(json.loads(meta.read_text()).get("api-stats", {}).values())
    for resources in out_dir.glob("*/resources.json"):
        changes += len(json.loads(resources.read_text()))
    return Measured(wall, calls, changes, rss)


def measure(tool: str, sc: Scenario, latency_ms: int, exe: Path | None) -> Measured:
    with moto_account(sc) as (url, incident), latency(url, latency_ms, sc.trail) as endpoint, \
            tempfile.TemporaryDirectory(prefix="stanch-bench-") as tmp:
        work = Path(tmp)
        if tool == "stanch":
            result = run_stanch(endpoint, incident, work, sc.trail)
        else:
            assert exe is not None
            result = run_custodian(exe, endpoint, sc, work)
        missed = contained(url, sc)
        if missed:
            raise RuntimeError(f"{tool} did not contain ({sc.name}): {'; '.join(missed[:5])}")
        return result


# ------------------------------------------------------------------ rows
def median(values: list[float]) -> float:
    return float(statistics.median(values))


def compare(exe: Path, sc: Scenario, latency_ms: int, reps: int) -> dict[str, Any]:
    runs: dict[str, list[Measured]] = {"stanch": [], "custodian": []}
    for rep in range(reps):
        order = ("stanch", "custodian") if rep % 2 == 0 else ("custodian", "stanch")
        for tool in order:
            runs[tool].append(measure(tool, Scenario(sc.name, sc.extra_users, sc.keys_per_user, sc.services,
                                                     sc.tasks_per_service), latency_ms, exe))
            print(f"  {sc.name} +{latency_ms}ms rep {rep + 1}: {tool} {runs[tool][-1].wall_s:.2f}s", file=sys.stderr)
    row: dict[str, Any] = {}
    for tool, ms in runs.items():
        row[tool] = {"wall_s": median([m.wall_s for m in ms]), "api_calls": int(median([m.api_calls for m in ms])),
                     "changes": int(median([m.changes for m in ms])),
                     "peak_rss_mb": median([m.peak_rss_mb for m in ms])}
        firsts = [m.first_change_s for m in ms if m.first_change_s is not None]
        containeds = [m.contained_s for m in ms if m.contained_s is not None]
        row[tool]["first_change_s"] = median(firsts) if firsts else None
        row[tool]["contained_s"] = median(containeds) if containeds else None
        row[tool]["cached_reads"] = int(median([m.cached_reads for m in ms]))
    row["ratio"] = row["stanch"]["wall_s"] / row["custodian"]["wall_s"]
    return row


def scale_curve(users: list[int], reps: int) -> list[dict[str, Any]]:
    rows = []
    for n in users:
        ms = [measure("stanch", Scenario(f"{n} users", extra_users=n - 1), 0, None) for _ in range(reps)]
        wall = median([m.wall_s for m in ms])
        contained = [m.contained_s for m in ms if m.contained_s is not None]
        calls = int(median([m.api_calls for m in ms]))
        changes = int(median([m.changes for m in ms]))
        rows.append({"users": n, "wall_s": wall, "api_calls": calls, "changes": changes,
                     "calls_per_change": calls / changes if changes else None,
                     "contained_s": median(contained) if contained else None,
                     "peak_rss_mb": max(m.peak_rss_mb for m in ms)})
        print(f"  scale {n} users: {wall:.2f}s {calls} calls", file=sys.stderr)
    return rows


def cli_walls(exe: Path, reps: int) -> dict[str, float]:
    commands: dict[str, list[str]] = {
        "stanch --help": [*stanch_command(), "--help"], "stanch --version": [*stanch_command(), "--version"],
        "custodian --help": [str(exe), "--help"], "custodian version": [str(exe), "version"]}
    walls: dict[str, list[float]] = {k: [] for k in commands}
    names = list(commands)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            wall, code, _, err, _ = timed(commands[name], clean_env(), ROOT)
            if code != 0:
                raise RuntimeError(f"{name} exited {code}: {err[-500:]}")
            walls[name].append(wall)
    return {k: median(v) for k, v in walls.items()}


# ------------------------------------------------------------------ report
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python "
            f"{platform.python_version()}, load average {load:.1f} at start")


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['date']} on {result['machine']}; medians of {result['reps']} alternating repetitions; "
             f"Cloud Custodian {result['c7n']}", ""]
    if result.get("compare"):
        lines += ["| | stanch | Custodian | stanch / Custodian | stanch: first change / contained |",
                  "|---|---|---|---|---|"]
        for label, row in result["compare"].items():
            if isinstance(row, str):
                lines.append(f"| {label} | {row} | | | |")
                continue
            s, c = row["stanch"], row["custodian"]
            timing = " / ".join("-" if s.get(k) is None else f"{s[k]:.2f} s" for k in ("first_change_s", "contained_s"))
            lines.append(f"| {label} | {s['wall_s']:.2f} s ({s['api_calls']} calls, {s.get('cached_reads', 0)} cached, "
                         f"{s['changes']} changes) | {c['wall_s']:.2f} s ({c['api_calls']} calls, {c['changes']} "
                         f"resources) | {row['ratio']:.2f} | {timing} |")
    if result.get("cli"):
        cli = result["cli"]
        for what, c_key in (("--help", "custodian --help"), ("--version", "custodian version")):
            s = cli[f"stanch {what}"]
            lines.append(f"| `stanch {what}` / `{c_key}` | {s:.2f} s | {cli[c_key]:.2f} s | {s / cli[c_key]:.2f} | |")
    if result.get("scale"):
        lines += ["", "Scale curve, stanch alone, no added latency:", "",
                  "| attacker users | wall | contained (run's metric) | API calls | changes | calls per change "
                  "| peak RSS |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["scale"]:
            per = "-" if r["calls_per_change"] is None else f"{r['calls_per_change']:.1f}"
            done = "-" if r.get("contained_s") is None else f"{r['contained_s']:.2f} s"
            lines.append(f"| {r['users']} | {r['wall_s']:.2f} s | {done} | {r['api_calls']} | {r['changes']} | {per} | "
                         f"{r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per row (medians); default 5")
    parser.add_argument("--rows", nargs="+", default=["basic", "latency", "fanout", "fanout-0", "scale", "cli"],
                        choices=["basic", "latency", "fanout", "fanout-0", "scale", "cli"])
    parser.add_argument("--scale", type=int, nargs="+", default=[1, 10, 50, 200], metavar="USERS")
    parser.add_argument("--scale-reps", type=int, default=None, help="repetitions per scale point; default --reps")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--c7n-version", default=C7N_VERSION)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stanch-bench")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()

    exe = custodian_path(args.cache_dir, args.c7n_version) if set(args.rows) - {"scale"} else None
    result: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                              "reps": args.reps, "c7n": args.c7n_version, "compare": {}}
    proxy = have_proxy()
    fanout = Scenario("fan-out", extra_users=1, keys_per_user=2, services=50, tasks_per_service=4)
    rows: list[tuple[str, str, Scenario, int]] = [
        ("basic", "reference attack, no added latency", Scenario("reference"), 0),
        ("latency", f"reference attack, +{args.latency_ms} ms per call", Scenario("reference"), args.latency_ms),
        ("fanout", f"fan-out (2 users x 2 keys, 50 services, 200 tasks), +{args.latency_ms} ms", fanout,
         args.latency_ms),
        ("fanout-0", "fan-out, no added latency", fanout, 0),
    ]
    for key, label, sc, ms in rows:
        if key not in args.rows:
            continue
        if not proxy:
            result["compare"][label] = "skipped: no proxy (tests/faultproxy.py)"
            continue
        assert exe is not None
        result["compare"][label] = compare(exe, sc, ms, args.reps)
    if "scale" in args.rows:
        result["scale"] = scale_curve(args.scale, args.scale_reps or args.reps)
    if "cli" in args.rows:
        assert exe is not None
        result["cli"] = cli_walls(exe, args.reps)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(render(result))


if __name__ == "__main__":
    main()
