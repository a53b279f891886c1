"""`stanch drill`, the main job: exit 0 with a scorecard only when every check holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from runner.cli import app


def test_drill_contains_and_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a responder's production settings in the environment: the drill must not follow them (it would
    # notify the SOC about a fake incident, or write to the shared journal)
    # (a file the drill could not even read: following it would end the drill with exit 2)
    monkeypatch.setenv("STANCH_CONFIG", str(tmp_path / "prod-stanch.toml"))
    monkeypatch.setenv("STANCH_CONFIG_OVERLAY", "[notify\nwebhook_url = ")
    monkeypatch.setenv("STANCH_JOURNAL", "dynamodb://prod-journal?region=us-east-1")
    result = CliRunner().invoke(app, ["drill", "--state-dir", str(tmp_path), "--output", "json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["passed"] is True and card["run_status"] == "needs_manual_action"
    checks = {c["check"]: c["ok"] for c in card["checks"]}
    assert checks["attacker's own key denied (moto IAM enforcement)"]
    assert checks["a second run of the same incident applies nothing"]
    assert (tmp_path / "journal.sqlite3").is_file()
    assert {c["operation"] for c in card["contained"]} >= {
        "iam:UpdateAccessKey", "iam:PutUserPolicy", "iam:DeleteLoginProfile", "iam:RemoveUserFromGroup",
        "iam:DetachGroupPolicy", "ecs:UpdateService", "ecs:StopTask"}
    assert {e["name"] for e in card["left_alone"]} >= {"platform-admins", "breakglass-admin", "web/frontend"}
    for name in ("miner service in eu-central-1 scaled to 0", "miner's scalable target suspended with MinCapacity 0",
                 "schedule running the miner task disabled", "miner EC2 instances in ap-southeast-1 stopped "
                 "(not terminated)", "legitimate EC2 instance in ap-southeast-1 untouched",
                 "legitimate schedule untouched", "every region searched, including the three used by the attack",
                 "attacker's persistent spot request in ap-southeast-1 cancelled (its instance kept, then stopped)",
                 "legitimate spot request untouched", "legitimate Auto Scaling group web-asg untouched",
                 "attacker's Auto Scaling group render-farm: launches suspended, scaled to 0",
                 "hijacked group batch-workers: stops launching, not scaled down, its miner instance stopped"):
        assert checks[name], name
    assert {c["operation"] for c in card["contained"]} >= {
        "application-autoscaling:RegisterScalableTarget", "scheduler:UpdateSchedule", "ec2:StopInstances",
        "ec2:CancelSpotInstanceRequests", "autoscaling:SuspendProcesses", "autoscaling:UpdateAutoScalingGroup"}
    assert card["manual_actions"][0]["step"] == "root-credentials"
    assert card["metrics"]["api_calls_total"] > 0 and card["metrics"]["time_to_contained_s"] is not None


@pytest.mark.xdist_group("dry-run-drill")
def test_drill_dry_run_changes_nothing(dry_run_drill: Result) -> None:
    result = dry_run_drill
    assert result.exit_code == 0, result.output
    assert re.search(r"PASS +nothing changed in the account", result.stdout)
    assert result.stdout.index("MANUAL ACTION FIRST (root-credentials)") < result.stdout.index("Would change")
    assert "DRILL PASSED" in result.stdout
