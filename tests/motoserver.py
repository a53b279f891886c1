"""A private moto server on 127.0.0.1, for the tests and the benchmark.

    python -m tests.motoserver [--managed-policies all|none|NAME,NAME...]

It binds a port the kernel picks and prints that port as its first line, so parallel test workers
never race for a port. `--managed-policies` loads only the named AWS-managed policies: moto parses
all ~1,600 of them (about a second) every time the account is reset, and the tests need a handful.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: what the tests attach (AdministratorAccess), broad AWS-managed decoys that are not "* on *", and a
#: few a test may plausibly attach; a test needing another uses the `aws_all_managed` fixture
TEST_MANAGED_POLICIES = ("AdministratorAccess", "PowerUserAccess", "IAMFullAccess", "AmazonECS_FullAccess",
                         "AWSSupportAccess", "ReadOnlyAccess", "SecurityAudit", "IAMReadOnlyAccess",
                         "AmazonECSTaskExecutionRolePolicy", "IAMDeleteRootUserCredentials",
                         "IAMAuditRootUserCredentials")


def only_managed_policies(names: tuple[str, ...] | list[str]) -> None:
    """Make moto load only these AWS-managed policies (in this process), when it loads them at all."""
    import moto.iam.models
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    everything = json.loads(aws_managed_policies_data)
    missing = [n for n in names if n not in everything]
    if missing:
        raise SystemExit(f"moto has no AWS-managed policy named {', '.join(missing)}")
    moto.iam.models.aws_managed_policies_data = json.dumps({n: everything[n] for n in names})


def start(managed_policies: str = ",".join(TEST_MANAGED_POLICIES), quiet: bool = True,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start a server process; return it and its URL once it answers."""
    child_env = {**(env if env is not None else os.environ),
                 "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.motoserver", "--managed-policies", managed_policies],
                            env=child_env, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL if quiet else None)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the server prints its port once it listens
    if not line.isdigit():
        stop(proc)
        raise RuntimeError(f"moto server did not start (said {line!r})")
    return proc, f"http://127.0.0.1:{line}"


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--managed-policies", default="all",
                        help="all (moto's full set), none, or a comma-separated list of policy names")
    args = parser.parse_args()
    if args.managed_policies != "none":
        os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
        if args.managed_policies != "all":
            only_managed_policies([n for n in args.managed_policies.split(",") if n])

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(server.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
