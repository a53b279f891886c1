"""`stanch verify`: a finished run is re-planned read-only; drift is listed (exit 1) and, with --reapply,
applied again under the run's approvals."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import MINER_USER_DATA, base_image, seed
from runner.errors import InputError
from runner.verify import parse_duration
from tests.conftest import TRAIL_CONFIG, publish_trail, write_json

NAMES = {"user": "etl-runner", "group": "data-eng", "cluster": "reporting", "service": "pdf-render",
         "image": "docker.io/minerlab/xmrig:6"}


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def contained_run(aws_managed: boto3.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    # two regions keep the test fast; the all-region search has its own tests
    cfg = tmp_path / "stanch.toml"
    cfg.write_text('[aws]\nregions = ["us-east-1", "eu-west-1"]\n\n' + TRAIL_CONFIG)
    seeded = seed(aws_managed, NAMES)
    publish_trail(aws_managed, seeded)
    # a legitimate Auto Scaling group in the other region whose launch template now runs a miner (no
    # CloudTrail names it), beside one that does not
    ec2, asg = (aws_managed.client(s, region_name="eu-west-1") for s in ("ec2", "autoscaling"))
    for lt, data in (("reports-lt", MINER_USER_DATA), ("api-lt", "#!/bin/bash\nsystemctl start api\n")):
        ec2.create_launch_template(LaunchTemplateName=lt, LaunchTemplateData={
            "ImageId": base_image(ec2), "InstanceType": "c5.large", "UserData": base64.b64encode(data.encode()).decode()})
        asg.create_auto_scaling_group(AutoScalingGroupName=lt.replace("-lt", "-asg"), MinSize=1, MaxSize=3,
                                      DesiredCapacity=1, LaunchTemplate={"LaunchTemplateName": lt},
                                      AvailabilityZones=["eu-west-1a"])
    state = str(tmp_path / "state")
    incident = write_json(tmp_path / "incident.json", seeded["incident"])
    run = cli("run", str(incident), "--approve-all", "--config", str(cfg), "--output", "json", "--state-dir", state)
    assert run.exit_code == 0, run.output
    steps = {s["id"]: s for s in json.loads(run.stdout)["steps"]}
    # the hijacked group stops launching (gated, approved with the rest) and keeps its capacity; the stop sticks
    assert [c["params"] for c in steps["suspend-hijacked-groups"]["changes"]] == [
        {"AutoScalingGroupName": "reports-asg", "ScalingProcesses": ["Launch", "ReplaceUnhealthy"]}]
    assert steps["stop-attacker-instances"]["status"] == "applied"
    groups = {g["AutoScalingGroupName"]: g for g in asg.describe_auto_scaling_groups()["AutoScalingGroups"]}
    assert groups["reports-asg"]["DesiredCapacity"] == 1 and not groups["api-asg"].get("SuspendedProcesses")
    return {"run_id": json.loads(run.stdout)["run_id"], "state": state, "key": seeded["attacker_key"]["AccessKeyId"]}


def test_verify_finds_drift_and_watch_reapply_restores(aws_managed: boto3.Session, contained_run: dict[str, Any]) -> None:
    run_id, state, key = contained_run["run_id"], contained_run["state"], contained_run["key"]
    ok = cli("verify", run_id, "--state-dir", state)
    assert ok.exit_code == 0, ok.output
    assert "still contained" in ok.stdout

    # the attacker (or a careless admin) undoes two containment changes
    iam, ecs = aws_managed.client("iam"), aws_managed.client("ecs")
    iam.update_access_key(UserName="etl-runner", AccessKeyId=key, Status="Active")
    ecs.update_service(cluster="reporting", service="pdf-render", desiredCount=5)
    # ...and re-arms the hijacked group, which would replace the stopped miner instance
    aws_managed.client("autoscaling", region_name="eu-west-1").resume_processes(AutoScalingGroupName="reports-asg")

    drift = cli("verify", run_id, "--state-dir", state, "--output", "json")
    assert drift.exit_code == 1, drift.output
    doc = json.loads(drift.stdout)
    found = {(d["step"], d["operation"]) for d in doc["drift"]}
    assert found == {("deactivate-keys", "iam:UpdateAccessKey"), ("scale-miner-services", "ecs:UpdateService"),
                     ("suspend-hijacked-groups", "autoscaling:SuspendProcesses")}
    assert any("reports-asg" in d["reason"] and "would launch instances again" in d["reason"] for d in doc["drift"])
    assert any(key in d["reason"] for d in doc["drift"])
    assert any(d["target"].endswith("/reporting/pdf-render") for d in doc["drift"])
    # verifying changed nothing
    assert iam.list_access_keys(UserName="etl-runner")["AccessKeyMetadata"][0]["Status"] == "Active"
    assert ecs.describe_services(cluster="reporting", services=["pdf-render"])["services"][0]["desiredCount"] == 5

    watched = cli("verify", run_id, "--watch", "--every", "0.05s", "--for", "0.2s", "--reapply",
                  "--state-dir", state, "--output", "json")
    assert watched.exit_code == 0, watched.output
    rounds = json.loads(watched.stdout)["checks"]
    assert {(d["step"], d["operation"]) for d in rounds[0]["reapplied"]} == found
    assert all(not r["drift"] for r in rounds[1:])
    assert iam.list_access_keys(UserName="etl-runner")["AccessKeyMetadata"][0]["Status"] == "Inactive"
    assert ecs.describe_services(cluster="reporting", services=["pdf-render"])["services"][0]["desiredCount"] == 0
    assert cli("verify", run_id, "--state-dir", state).exit_code == 0
    audit = (Path(state) / "audit.jsonl").read_text()
    assert audit.count('"verify.reapplied"') == 3


def test_verify_rejects_bad_input(aws: boto3.Session, tmp_path: Path) -> None:
    out = cli("verify", "r-nope", "--state-dir", str(tmp_path))
    assert out.exit_code == 2 and "Traceback" not in out.output
    with pytest.raises(InputError):
        parse_duration("soon", "--every")
    assert parse_duration("1h30m", "--for") == 5400 and parse_duration("0.5s", "--every") == 0.5

