"""Queue throughput: N queued incidents drained by 1, 2 and 4 `stanch worker` processes.

    python bench/workers.py                      # 100 incidents; 1, 2 and 4 workers
    python bench/workers.py --incidents 40 --workers 1 4

Each row gets a fresh private moto server on 127.0.0.1 (SQS queue with a DLQ, one IAM user and
access key per incident, a decoy), the incidents queued as GuardDuty finding events, and the
trimmed playbook of tests/test_worker.py (discovery in one region, key deactivation). The clock
runs from the workers' start until the queue is empty; then every run must be `contained`, every
key inactive, the decoy's key active and no change sent twice, or the row is an error, not a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import MotoServer  # noqa: E402
from tests.motoserver import start, stop  # noqa: E402
from tests.test_worker import account, depth, finding, key_status, queues, write_config  # noqa: E402


def row(n_incidents: int, n_workers: int) -> dict[str, float | int]:
    proc, url = start()
    env = {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "PYTHONPATH": str(ROOT)}
    env.pop("AWS_PROFILE", None)
    os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION")})
    moto = MotoServer(url)
    try:
        with tempfile.TemporaryDirectory(prefix="stanch-bench-workers-") as tmp_name:
            tmp = Path(tmp_name)
            keys = account(moto, n_incidents)
            moto.client("ecs").list_clusters()  # moto builds its ECS backend on first use: not the workers' time
            main, dlq = queues(moto, max_receives=3)
            cfg = write_config(tmp, queue_url=main)
            state = tmp / "state"
            sqs = moto.client("sqs")
            bodies = [json.dumps(finding(f"svc-{i:02d}", keys[f"svc-{i:02d}"])) for i in range(n_incidents)]
            for i in range(0, len(bodies), 10):
                sqs.send_message_batch(QueueUrl=main, Entries=[{"Id": str(n), "MessageBody": b}
                                                               for n, b in enumerate(bodies[i:i + 10])])
            load = os.getloadavg()[0]
            t0 = time.monotonic()
            command = [sys.executable, "-m", "runner.cli", "worker", "--config", str(cfg), "--wait", "1", "-q",
                       "-o", "json"]
            procs = [subprocess.Popen(command, env={**env, "STANCH_STATE_DIR": str(state)}, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(n_workers)]
            while depth(moto, main):
                time.sleep(0.2)
            wall = time.monotonic() - t0
            for p in procs:
                p.send_signal(signal.SIGTERM)
            handled = []
            for p in procs:
                out, err = p.communicate(timeout=120)
                if p.returncode != 0:
                    raise SystemExit(f"worker failed ({p.returncode}): {err[-2000:]}")
                handled += json.loads(out)["messages"]
            events = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
            started = Counter((e["run_id"], e["digest"]) for e in events if e["event"] == "change.started")
            finished = [e for e in events if e["event"] == "run.finished"]
            problems = []
            if len(finished) != n_incidents or {e["status"] for e in finished} != {"contained"}:
                problems.append(f"{len(finished)} runs finished, statuses {Counter(e['status'] for e in finished)}")
            if started and max(started.values()) > 1:
                problems.append("a change was sent twice")
            if any(key_status(moto, f"svc-{i:02d}") != {"Inactive"} for i in range(n_incidents)):
                problems.append("a key is still active")
            if key_status(moto, "decoy-ops") != {"Active"} or depth(moto, dlq):
                problems.append("the decoy was touched, or a message reached the DLQ")
            if problems:
                problems += sorted({str(h.get("reason", ""))[:300] for h in handled if h.get("fate") != "delete"})
                raise SystemExit(f"{n_workers} worker(s): not contained: {'; '.join(problems)}")
            return {"workers": n_workers, "incidents": n_incidents, "wall_s": round(wall, 2),
                    "per_s": round(n_incidents / wall, 3), "messages": len(handled), "load": round(load, 1)}
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--incidents", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    rows = [row(args.incidents, n) for n in args.workers]
    base = rows[0]["per_s"]
    print(f"\n| workers | incidents | wall | incidents/s | vs {rows[0]['workers']} worker(s) | load avg at start |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['incidents']} | {r['wall_s']} s | {r['per_s']} | "
              f"{float(r['per_s']) / float(base):.2f} | {r['load']} |")


if __name__ == "__main__":
    main()
