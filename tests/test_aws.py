"""AWS session handling: the dry-run guarantee, call counting, endpoint and retry settings."""

from __future__ import annotations

import io
from pathlib import Path

import boto3
import pytest

from actions.base import Action, ActionContext, NoParams, Plan
from actions.registry import Registry, builtin_registry
from runner.aws import AwsSession, is_read_operation
from runner.engine import RunOptions
from runner.errors import DryRunViolation
from runner.incident import validate_incident
from runner.service import AwsOptions, start_run

INCIDENT = validate_incident("t", {
    "id": "INC-DRY-1", "kind": "cryptojacking", "account_id": "123456789012", "region": "us-east-1",
    "detected_at": "2026-11-20T10:14:00Z",
})


class RogueWrite(Action[NoParams]):
    """A buggy action that writes while planning."""

    name = "rogue.write-in-plan"
    summary = "writes during plan (a bug)"
    risk = "read-only"

    def plan(self, ctx: ActionContext, params: NoParams) -> Plan:
        ctx.aws.client("iam").create_user(UserName="should-not-exist")
        ctx.aws.client("ecs").create_cluster(clusterName="should-not-exist")
        return Plan()


@pytest.mark.parametrize(("op", "read"), [
    ("ListUsers", True), ("GetAccountSummary", True), ("DescribeServices", True), ("LookupEvents", True),
    ("UpdateAccessKey", False), ("PutUserPolicy", False), ("StopTask", False), ("CreateUser", False),
    ("DeleteLoginProfile", False), ("GenerateCredentialReport", False),
])
def test_read_operations_are_recognised(op: str, read: bool) -> None:
    assert is_read_operation(op) is read


def test_dry_run_session_refuses_writes_before_sending(aws: boto3.Session) -> None:
    s = AwsSession(region="us-east-1", boto_session=aws, dry_run=True)
    s.client("iam").list_users()
    with pytest.raises(DryRunViolation, match="iam:CreateUser"):
        s.client("iam").create_user(UserName="x")
    assert aws.client("iam").list_users()["Users"] == []
    assert s.refused == ["iam:CreateUser"]
    assert s.call_counts() == {"iam:ListUsers": 1}


def test_an_action_that_writes_during_a_dry_run_is_stopped_and_reported(aws: boto3.Session, tmp_path: Path) -> None:
    reg = Registry()
    reg.register(RogueWrite)
    pb = tmp_path / "rogue.yaml"
    pb.write_text("name: rogue\nsteps:\n  - id: rogue\n    action: rogue.write-in-plan\n")
    out = start_run(INCIDENT, playbook_ref=str(pb), config_path=None, options=RunOptions(dry_run=True, by="t"),
                    aws_opts=AwsOptions(), state=tmp_path / "state", stream=io.StringIO(), registry=reg,
                    session=AwsSession(region="us-east-1", boto_session=aws, dry_run=True))
    assert out.exit_code == 1 and out.result["status"] == "failed"
    step = out.result["steps"][0]
    assert step["status"] == "failed"
    assert "dry run: refused write operation iam:CreateUser before it was sent" in step["error"]
    assert out.result["metrics"]["refused_writes"] == ["iam:CreateUser"]
    assert aws.client("iam").list_users()["Users"] == []
    assert aws.client("ecs").list_clusters()["clusterArns"] == []


def test_endpoint_and_retry_settings_reach_the_clients(aws: boto3.Session) -> None:
    from runner.config import AwsSection

    s = AwsSession(region="eu-west-1", boto_session=aws, endpoint_url="http://127.0.0.1:1",
                   settings=AwsSection(retry_mode="adaptive", max_attempts=2))
    client = s.client("ecs")
    assert client.meta.endpoint_url == "http://127.0.0.1:1"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 2}
    assert s.client("ecs") is client  # one client per service and region
    assert s.client("ecs", "us-east-1") is not client


def test_actions_never_build_their_own_clients() -> None:
    import inspect

    for cls in builtin_registry().all():
        source = inspect.getsource(inspect.getmodule(cls))  # type: ignore[arg-type]
        assert "boto3.client" not in source and "boto3.Session" not in source, cls.name
