"""`stanch rollback`: containment undone from the values its changes recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import ADMIN, account_snapshot, seed
from tests.conftest import use_attack_trail, write_json

NAMES = {"user": "svc-backup", "group": "k8s-ops", "cluster": "billing", "service": "report-gen", "image": "xmrig/xmrig"}


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_rollback_restores_what_containment_replaced(aws_managed: boto3.Session, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = seed(aws_managed, NAMES)
    use_attack_trail(aws_managed, seeded, monkeypatch, tmp_path)
    before = account_snapshot(aws_managed)
    state = str(tmp_path / "state")
    incident = write_json(tmp_path / "incident.json", seeded["incident"])
    run = cli("run", str(incident), "--approve-all", "--output", "json", "--state-dir", state)
    assert run.exit_code == 0, run.output
    run_id = json.loads(run.stdout)["run_id"]
    contained = account_snapshot(aws_managed)
    assert contained["users"]["svc-backup"]["groups"] == []

    dry = cli("rollback", run_id, "--dry-run", "--output", "json", "--state-dir", state)
    assert dry.exit_code == 0, dry.output
    [revert] = json.loads(dry.stdout)["steps"]
    ops = sorted(c["operation"] for c in revert["changes"])
    assert ops == ["ecs:UpdateService", "iam:AddUserToGroup", "iam:AttachGroupPolicy", "iam:DeleteGroupPolicy",
                   "iam:DeleteUserPolicy", "iam:UpdateAccessKey"]
    assert account_snapshot(aws_managed) == contained

    paused = cli("rollback", run_id, "--output", "json", "--reason", "decoy test", "--state-dir", state)
    assert paused.exit_code == 3  # the revert step is approval-gated like any other

    paused_id = json.loads(paused.stdout)["run_id"]
    again = cli("rollback", run_id, "--approve-all", "--reason", "decoy test", "--state-dir", state)
    assert again.exit_code == 4 and paused_id in again.output  # the paused rollback holds the incident
    assert account_snapshot(aws_managed) == contained
    done = cli("resume", paused_id, "--approve-all", "--by", "alice", "--output", "json", "--state-dir", state)
    after = account_snapshot(aws_managed)
    doc = json.loads(done.stdout)
    assert done.exit_code == 5, done.output
    assert doc["status"] == "needs_manual_action"  # the console password cannot come back by API
    assert any("console password of svc-backup" in m["instructions"] for m in doc["manual_actions"])
    atk_before, atk_after = before["users"]["svc-backup"], after["users"]["svc-backup"]
    assert atk_after["keys"] == atk_before["keys"]
    assert atk_after["groups"] == ["k8s-ops"] and atk_after["inline"] == []
    assert after["groups"]["k8s-ops"] == [ADMIN]
    assert {k: v for k, v in after["services"].items() if "/billing/" in k} == \
        {k: v for k, v in before["services"].items() if "/billing/" in k}


def test_rollback_of_an_unfinished_or_empty_run_is_refused(aws: boto3.Session, tmp_path: Path) -> None:
    out = cli("rollback", "r-missing", "--false-positive", "--state-dir", str(tmp_path))
    assert out.exit_code == 2 and "no run 'r-missing'" in out.output
