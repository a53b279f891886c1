"""End to end through the CLI against a private moto server on 127.0.0.1: a real process where the
process is what is tested (stdout holds exactly the JSON document, a run resumed from a new process,
a kill, what reaches stderr), typer's in-process runner for the rest."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import Result
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import account_snapshot, seed
from tests.conftest import ROOT, MotoServer, publish_trail, write_json

STANCH = [sys.executable, "-m", "runner.cli"]
PERSISTENT_USERS = 6


def stanch(*args: str, check_codes: tuple[int, ...] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*STANCH, *args], check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env=os.environ.copy(), timeout=120, **kw)
    if check_codes is not None:
        assert proc.returncode in check_codes, proc.stderr[-3000:]
    return proc


def cli(*args: str, check_codes: tuple[int, ...] | None = None) -> Result:
    """The same command in this process (no terminal: gated steps pause)."""
    result = CliRunner().invoke(app, list(args))
    if check_codes is not None:
        assert result.exit_code in check_codes, result.output[-3000:]
    return result


def seeded(moto: MotoServer, tmp_path: Path, names: dict[str, str] | None = None) -> tuple[Path, dict[str, Any]]:
    session = boto3.Session(region_name="us-east-1")
    data = seed(session, names)
    publish_trail(session, data)  # the organization trail the runs attribute from
    return write_json(tmp_path / "incident.json", data["incident"]), data


def audit(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]


def test_dry_run_json_is_planned_and_changes_nothing(moto_server: MotoServer, tmp_path: Path) -> None:
    incident, _ = seeded(moto_server, tmp_path)
    before = account_snapshot(boto3.Session(region_name="us-east-1"))
    proc = stanch("run", str(incident), "--dry-run", "--output", "json", check_codes=(0,))
    doc = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert doc["status"] == "planned" and doc["dry_run"] is True
    assert set(doc) >= {"run_id", "incident_id", "playbook", "status", "dry_run", "steps", "manual_actions"}
    planned = {s["id"]: s for s in doc["steps"]}
    assert planned["deactivate-keys"]["status"] == "planned"
    change = planned["deactivate-keys"]["changes"][0]
    assert change["operation"] == "iam:UpdateAccessKey" and change["params"]["Status"] == "Inactive"
    assert change["previous"] == {"Status": "Active"} and change["status"] == "planned"
    assert planned["scale-miner-services"]["status"] == "planned"
    assert account_snapshot(boto3.Session(region_name="us-east-1")) == before
    assert "dry run" in proc.stderr or "dry_run" in proc.stderr or proc.stderr


def test_no_terminal_pauses_then_approve_and_resume_from_new_processes(moto_server: MotoServer, tmp_path: Path) -> None:
    incident, _ = seeded(moto_server, tmp_path)
    first = cli("run", str(incident), "--output", "json", check_codes=(3,))
    doc = json.loads(first.stdout)
    assert doc["status"] == "awaiting_approval"
    by_id = {s["id"]: s["status"] for s in doc["steps"]}
    assert by_id["scale-miner-services"] == "awaiting_approval"
    assert by_id["deactivate-keys"] == "applied"  # credential containment did not wait
    run_id = doc["run_id"]
    ecs = boto3.Session(region_name="us-east-1").client("ecs")
    assert ecs.describe_services(cluster="prod_app", services=["prod_app"])["services"][0]["desiredCount"] == 2

    locked = cli("run", str(incident), check_codes=(4,))
    assert run_id in locked.stderr

    bad = cli("approve", run_id, "--step", "scale-miner-servics", "--by", "alice", check_codes=(2,))
    assert "scale-miner-services" in bad.stderr
    cli("approve", run_id, "--step", "scale-miner-services", "--by", "alice", "--reason", "xmrig confirmed",
        check_codes=(0,))
    second = stanch("resume", run_id, "--output", "json", check_codes=(3,))
    assert {s["id"]: s["status"] for s in json.loads(second.stdout)["steps"]}["stop-miner-tasks"] == "awaiting_approval"
    cli("approve", run_id, "--step", "stop-miner-tasks", "--by", "alice", check_codes=(0,))
    final = stanch("resume", run_id, "--output", "json", check_codes=(0,))
    assert json.loads(final.stdout)["status"] == "contained"
    assert ecs.describe_services(cluster="prod_app", services=["prod_app"])["services"][0]["desiredCount"] == 0
    status = json.loads(cli("status", run_id, "--output", "json", check_codes=(0,)).stdout)
    assert [(a["step"], a["by"]) for a in status["approvals"]] == [
        ("scale-miner-services", "alice"), ("stop-miner-tasks", "alice")]
    listing = cli("status", check_codes=(0,)).stdout
    assert run_id in listing and "contained" in listing


def test_sigkill_while_applying_then_resume_applies_each_change_once(moto_server: MotoServer, tmp_path: Path) -> None:
    incident, _ = seeded(moto_server, tmp_path)
    iam = boto3.Session(region_name="us-east-1").client("iam")
    for i in range(PERSISTENT_USERS):  # work left to do after the kill
        iam.create_user(UserName=f"persist-{i}")
        iam.create_access_key(UserName=f"persist-{i}")
        iam.add_user_to_group(GroupName="ecs_dev", UserName=f"persist-{i}")
    state = Path(os.environ["STANCH_STATE_DIR"])
    stalled = tmp_path / "stalled"
    # the 6th write is sent and answered, then its thread (and every later writer) waits forever: the
    # process is mid-apply with certainty when it is killed, whatever the machine's speed. The users are
    # only inside the window (no CloudTrail here): suspects, approved explicitly
    proc = subprocess.Popen([sys.executable, "-m", "tests.stallpoint", "6", str(stalled),
                             "run", str(incident), "--approve-all", "--approve", "contain-suspects",
                             "--max-changes", "500"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    log = state / "audit.jsonl"
    deadline = time.monotonic() + 120  # a bound for a loaded machine; the loop ends at the stall
    while time.monotonic() < deadline and proc.poll() is None:
        if stalled.exists() and log.exists() and log.read_text().count('"event":"change.applied"') >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    else:
        proc.kill()
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL and stalled.exists(), "the run finished before it could be killed"
    db = sqlite3.connect(state / "journal.sqlite3")
    [(run_id, status)] = db.execute("SELECT run_id, status FROM runs").fetchall()
    db.close()
    assert status == "applying"
    killed_applied = sum(1 for e in audit(state) if e["event"] == "change.applied")
    resumed = cli("resume", run_id, "--approve-all", "--approve", "contain-suspects", "--output", "json",
                  check_codes=(0,))
    assert json.loads(resumed.stdout)["status"] == "contained"
    applied = Counter((e["step"], e["digest"]) for e in audit(state) if e["event"] == "change.applied")
    assert applied and max(applied.values()) == 1, [k for k, v in applied.items() if v > 1]
    assert sum(applied.values()) > killed_applied
    for i in range(PERSISTENT_USERS):
        assert {k["Status"] for k in iam.list_access_keys(UserName=f"persist-{i}")["AccessKeyMetadata"]} == {"Inactive"}
        assert iam.list_groups_for_user(UserName=f"persist-{i}")["Groups"] == []


def test_no_secret_reaches_output_logs_or_journal(moto_server: MotoServer, tmp_path: Path) -> None:
    incident, data = seeded(moto_server, tmp_path)
    secret = data["attacker_key"]["SecretAccessKey"]
    password = "Drill-only-pa55word!"
    proc = stanch("run", str(incident), "--approve-all", "--output", "json", check_codes=(0, 5))
    state = Path(os.environ["STANCH_STATE_DIR"])
    run_id = json.loads(proc.stdout)["run_id"]
    reports = [cli("report", run_id, "--format", fmt, check_codes=(0,)).stdout for fmt in ("md", "html", "json")]
    assert "svc" in reports[0] or "cluster_admin" in reports[0]
    files = [p.read_bytes().decode("utf-8", "replace") for p in state.rglob("*") if p.is_file()]
    for text in [proc.stdout, proc.stderr, *reports, *files]:
        assert secret not in text
        assert password not in text


def test_redaction_processor_blanks_secrets_everywhere(tmp_path: Path) -> None:
    import io

    from runner.audit import make_logger

    canary = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYCANARYKEY1"
    token = "IQoJb3JpZ2luX2VjE" + "A" * 200
    out = io.StringIO()
    log = make_logger(tmp_path / "audit.jsonl", out, run_id="r-1")
    log.info("change.applied", step="s", target="t", operation="iam:CreateAccessKey", message=f"key {canary}",
             response={"AccessKey": {"AccessKeyId": "AKIAABCDEFGHIJKLMNOP", "SecretAccessKey": canary}},
             SessionToken=token, error=f"token={token}", Password="hunter2-canary")
    text = out.getvalue() + (tmp_path / "audit.jsonl").read_text()
    for leaked in (canary, token, "hunter2-canary"):
        assert leaked not in text
    assert "AKIAABCDEFGHIJKLMNOP" in text and "[REDACTED]" in text


def test_unreachable_endpoint_is_reported_without_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    incident = write_json(tmp_path / "i.json", json.loads(Path(__file__).with_name("data").joinpath(
        "incident-cryptojacking.json").read_text()))
    env = {**os.environ, "STANCH_CONFIG": str(write_config(tmp_path))}
    proc = subprocess.run([*STANCH, "run", str(incident), "--dry-run"], check=False, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "AWS unreachable" in proc.stderr


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "stanch.toml"
    path.write_text("[aws]\nmax_attempts = 1\nconnect_timeout = 1\n")
    return path


def test_bad_config_is_exit_2_with_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[guardrails]\nprotected_principal = ['x']\n[runner]\nmax_workers = 0\n")
    incident = Path(__file__).with_name("data") / "incident-cryptojacking.json"
    proc = cli("run", str(incident), "--dry-run", "--config", str(path), check_codes=(2,))
    assert proc.exception is None or isinstance(proc.exception, SystemExit)
    assert "did you mean 'protected_principals'?" in proc.stderr
    assert "runner.max_workers" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_teaches(tmp_path: Path) -> None:
    top = cli("--help", check_codes=(0,)).stdout
    for word in ("run", "approve", "resume", "status", "drill", "playbook", "Exit codes"):
        assert word in top
    run_help = cli("run", "--help", check_codes=(0,)).stdout
    for opt in ("--dry-run", "--approve", "--approve-all", "--state-dir", "--endpoint-url", "--output"):
        assert opt in run_help
