"""`stanch drill --live`: a read-only readiness check of a deployment, on moto (two accounts) with
botocore's Stubber standing in for iam:SimulatePrincipalPolicy, which moto lacks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner

from runner.aws import AwsSession, is_read_operation
from runner.cli import app
from runner.config import load_config
from runner.deployment import guardduty_pattern
from runner.live_drill import DrillTargets, run_live_drill

MEMBER = "210987654321"
ROLE = "StanchResponder"
LOCKED, UNLOCKED = "stanch-evidence-locked", "stanch-evidence-plain"

pytestmark = pytest.mark.xdist_group("live-drill")


@pytest.fixture(scope="module")
def deployment() -> Iterator[dict[str, Any]]:
    """The security account's queue (+ DLQ), rules and evidence buckets; a member account with the role."""
    from moto import mock_aws

    with mock_aws():
        home = boto3.Session(region_name="us-east-1")
        creds = home.client("sts").assume_role(RoleArn=f"arn:aws:iam::{MEMBER}:role/seed",
                                               RoleSessionName="seed")["Credentials"]
        member = boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                               aws_session_token=creds["SessionToken"], region_name="us-east-1")
        member.client("iam").create_role(RoleName=ROLE, AssumeRolePolicyDocument="{}")
        s3 = home.client("s3")
        s3.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
        s3.put_object_lock_configuration(Bucket=LOCKED, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 30}}})
        s3.create_bucket(Bucket=UNLOCKED)
        sqs, events = home.client("sqs"), home.client("events")
        dlq = sqs.create_queue(QueueName="stanch-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queue = sqs.create_queue(QueueName="stanch-incidents", Attributes={"RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})})["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        pattern = guardduty_pattern(load_config())
        events.put_rule(Name="stanch-guardduty", EventPattern=json.dumps(pattern))
        events.put_targets(Rule="stanch-guardduty", Targets=[{"Id": "q", "Arn": arn}])
        # a rule forwarding a type nothing is routed for, and not targeting the queue
        stray = {**pattern, "detail": {"type": ["Recon:EC2/PortProbeUnprotectedPort"]}}
        events.put_rule(Name="stanch-stray", EventPattern=json.dumps(stray))
        yield {"home": home, "queue": queue, "dlq": dlq}


def config(tmp_path: Path, bucket: str) -> Any:
    path = tmp_path / "stanch.toml"
    path.write_text(f'[aws]\nregions = ["us-east-1", "eu-west-2"]\n[accounts]\nrole_name = "{ROLE}"\n'
                    f'[evidence]\ns3_bucket = "{bucket}"\n')
    return str(path)


def stub_simulation(monkeypatch: pytest.MonkeyPatch, denied: dict[str, list[str]]) -> list[Stubber]:
    """Every IAM client an AwsSession builds answers SimulatePrincipalPolicy through a Stubber: the
    principal's first answer denies `denied[account]`, every other allows (lists no denial)."""
    stubs: list[Stubber] = []
    original = AwsSession.client

    def client(self: AwsSession, service: str, region: str | None = None) -> Any:
        made = original(self, service, region)
        if service == "iam" and not getattr(made, "_stanch_stubbed", False):
            account = self.identity().account
            stub = Stubber(made)
            results = [{"EvalActionName": a, "EvalDecision": "implicitDeny", "EvalResourceName": "*"}
                       for a in denied.get(account, [])]
            stub.add_response("simulate_principal_policy", {"EvaluationResults": results, "IsTruncated": False})
            for _ in range(20):
                stub.add_response("simulate_principal_policy", {"EvaluationResults": [], "IsTruncated": False})
            stub.activate()
            made._stanch_stubbed = True
            stubs.append(stub)
        return made

    monkeypatch.setattr(AwsSession, "client", client)
    return stubs


def drill(deployment: dict[str, Any], cfg: str, rules: tuple[str, ...] = ("stanch-guardduty",)) -> tuple[Any, Any]:
    session = AwsSession(region="us-east-1", boto_session=deployment["home"], dry_run=True)
    report = run_live_drill(session, load_config(cfg), DrillTargets((MEMBER,), deployment["queue"], rules))
    return report, session


def test_ready_deployment_passes_and_nothing_is_written(deployment: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    stubs = stub_simulation(monkeypatch, {})
    report, session = drill(deployment, config(tmp_path, LOCKED))
    assert report.ready, [c.to_json() for c in report.problems()]
    names = {(c.name, c.account) for c in report.checks}
    assert {("role", MEMBER), ("permissions", MEMBER), ("regions", MEMBER), ("evidence", None), ("queue", None),
            ("rule", None), ("runner permissions", "123456789012")} <= names
    assert len(stubs) == 2  # the member role's policies and the runner's were both simulated
    assert session.refused == [] and all(is_read_operation(op.split(":")[1]) for op in session.call_counts())
    assert session.call_counts()["ecs:ListClusters"] == 2  # both configured regions reached


def test_a_missing_permission_and_object_lock_fail_the_drill_by_name(deployment: dict[str, Any], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    stub_simulation(monkeypatch, {MEMBER: ["ecs:UpdateService"]})
    report, session = drill(deployment, config(tmp_path, UNLOCKED))
    assert not report.ready
    problems = {(c.name, c.account): c.detail for c in report.problems()}
    assert "ecs:UpdateService" in problems[("permission", MEMBER)]
    assert f"arn:aws:iam::{MEMBER}:role/{ROLE}" in problems[("permission", MEMBER)]
    assert "Object Lock" in problems[("evidence", None)] and UNLOCKED in problems[("evidence", None)]
    assert set(problems) == {("permission", MEMBER), ("permissions", MEMBER), ("evidence", None)}
    assert session.refused == []


def test_cli_live_json_names_every_problem_and_exits_1(deployment: dict[str, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    stub_simulation(monkeypatch, {MEMBER: ["iam:UpdateAccessKey"]})
    res = CliRunner().invoke(app, ["drill", "--live", "--account", MEMBER, "--queue-url", deployment["queue"],
                                   "--rule", "stanch-guardduty", "--rule", "stanch-stray", "--rule", "missing-rule",
                                   "--config", config(tmp_path, UNLOCKED), "-o", "json"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["ready"] is False and doc["refused_writes"] == []
    details = [p["detail"] for p in doc["problems"]]
    assert any("iam:UpdateAccessKey" in d for d in details)
    assert any("Object Lock" in d for d in details)
    stray = next(d for d in details if d.startswith("stanch-stray"))
    assert "Recon:EC2/PortProbeUnprotectedPort" in stray and "does not target the queue" in stray
    assert any(d.startswith("missing-rule") for d in details)


def test_cli_live_text_exit_0_when_ready(deployment: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    stub_simulation(monkeypatch, {})
    monkeypatch.setenv("STANCH_DRILL_ACCOUNTS", MEMBER)
    monkeypatch.setenv("STANCH_QUEUE_URL", deployment["queue"])
    monkeypatch.setenv("STANCH_RULES", "stanch-guardduty")
    res = CliRunner().invoke(app, ["drill", "--live", "--config", config(tmp_path, LOCKED)])
    assert res.exit_code == 0, res.output
    assert "ready" in res.stdout and "FAIL" not in res.stdout and "Object Lock on" in res.stdout


def test_an_account_without_role_config_and_a_queue_without_dlq_are_problems(
        deployment: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_simulation(monkeypatch, {})
    path = tmp_path / "bare.toml"
    path.write_text(f'[aws]\nregions = ["us-east-1"]\n[evidence]\ns3_bucket = "{LOCKED}"\n')
    session = AwsSession(region="us-east-1", boto_session=deployment["home"], dry_run=True)
    report = run_live_drill(session, load_config(str(path)),
                            DrillTargets((MEMBER,), deployment["dlq"], ("stanch-guardduty",)))
    problems = {c.name: c.detail for c in report.problems()}
    assert "[accounts] role_name" in problems["role"]
    assert "no dead-letter queue" in problems["queue"]


def test_bad_account_is_bad_input(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["drill", "--live", "--account", "12345"])
    assert res.exit_code == 2 and "12-digit" in res.output and "Traceback" not in res.output
