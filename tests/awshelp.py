"""Helpers for tests that run actions against moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import boto3

from actions.base import Action, ActionContext, Plan
from runner.aws import AwsSession
from runner.config import Config, load_config
from runner.incident import Incident, validate_incident

ACCOUNT = "123456789012"


def incident(**over: Any) -> Incident:
    doc = {"id": "INC-TEST-1", "kind": "cryptojacking", "account_id": ACCOUNT, "region": "us-east-1",
           "detected_at": "2030-01-01T00:00:00Z", "window_start": "2000-01-01T00:00:00Z", **over}
    return validate_incident("test", doc)


def context(session: boto3.Session, inc: Incident | None = None, config: Config | None = None,
            dry_run: bool = False) -> ActionContext:
    cfg = config or load_config()
    return ActionContext(
        aws=AwsSession(region="us-east-1", boto_session=session, dry_run=dry_run),
        incident=inc or incident(), config=cfg, run_id="r-test", started_at=datetime.now(UTC),
        fanout_pool=ThreadPoolExecutor(4), protected=cfg.is_protected,
    )


def plan(action: Action[Any], ctx: ActionContext, params: dict[str, Any]) -> Plan:
    return action.plan(ctx, action.params_model.model_validate(params))


def converge(action: Action[Any], ctx: ActionContext, params: dict[str, Any]) -> Plan:
    """plan -> apply every change -> a fresh plan is empty -> applying again changes nothing."""
    first = plan(action, ctx, params)
    assert first.changes, f"{action.name}: expected something to do"
    for change in first.changes:
        assert action.apply(ctx, change) == "applied"
    assert plan(action, ctx, params).changes == [], f"{action.name}: plan not empty after apply"
    for change in first.changes:
        assert action.apply(ctx, change) in ("applied", "already_done")
    assert plan(action, ctx, params).changes == []
    return first


@contextmanager
def enforced_as(session: boto3.Session, permissions: tuple[str, ...] | list[str]) -> Iterator[boto3.Session]:
    """A principal holding exactly `permissions`, with moto's IAM enforcement on while inside."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    iam = session.client("iam")
    name = f"perm-{abs(hash(tuple(permissions))) % 10**8}"
    iam.create_user(UserName=name)
    if permissions:
        iam.put_user_policy(UserName=name, PolicyName="exact", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": list(permissions), "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    limited = boto3.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                            region_name="us-east-1")
    saved = (settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield limited
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = saved


def network(session: boto3.Session) -> dict[str, Any]:
    from runner.drill import _network

    return _network(session.client("ec2"))


def service(session: boto3.Session, cluster: str, name: str, image: str, count: int = 2) -> str:
    from runner.drill import _service

    return _service(session.client("ecs"), network(session), cluster, name, image, count)
