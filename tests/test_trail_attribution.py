"""Discovery attributes ECS work to the attacker from CloudTrail (trail files in S3, LookupEvents)
even when the image matches no miner pattern; work by other principals stays out of scope."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.stub import ANY, Stubber

from actions.scope import DiscoverScope
from runner.config import load_config
from runner.drill import seed
from runner.incident import validate_incident
from tests.awshelp import context, plan, service

NAMES = {"user": "svc-backup", "group": "k8s-ops", "cluster": "batch-jobs", "service": "worker", "image": "yzsqbe/ka:si"}


def create_service(who: dict[str, Any], cluster: str, name: str, event_id: str, when: str) -> dict[str, Any]:
    return {"eventVersion": "1.08", "userIdentity": who, "eventTime": when, "eventSource": "ecs.amazonaws.com",
            "eventName": "CreateService", "awsRegion": "us-east-1", "eventID": event_id,
            "requestParameters": {"cluster": cluster, "serviceName": name, "desiredCount": 2},
            "recipientAccountId": "123456789012"}


def iam_user(name: str) -> dict[str, Any]:
    return {"type": "IAMUser", "userName": name, "arn": f"arn:aws:iam::123456789012:user/{name}",
            "accountId": "123456789012"}


def seeded_incident(seeded: dict[str, Any]) -> Any:
    doc = dict(seeded["incident"])
    doc["resources"], doc["indicators"] = [], {}
    return validate_incident("t", doc)


def test_trail_files_in_s3_attribute_a_disguised_miner(aws_managed: boto3.Session) -> None:
    seeded = seed(aws_managed, NAMES)
    service(aws_managed, "web", "reports", "python:3.12", 1)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    records = {"Records": [create_service(iam_user("svc-backup"), "batch-jobs", "worker", "e-1", now),
                           create_service(iam_user("alice"), "web", "reports", "e-2", now)]}
    s3 = aws_managed.client("s3")
    s3.create_bucket(Bucket="trail-bucket")
    s3.put_object(Bucket="trail-bucket", Key="AWSLogs/123456789012/CloudTrail/us-east-1/part1.json.gz",
                  Body=gzip.compress(json.dumps(records).encode()))
    s3.put_object(Bucket="trail-bucket", Key="AWSLogs/123456789012/CloudTrail/us-east-1/junk.txt", Body=b"nope")
    cfg = load_config()
    cfg = cfg.model_copy(update={"intake": cfg.intake.model_copy(update={
        "cloudtrail_s3_uri": "s3://trail-bucket/AWSLogs/123456789012/CloudTrail/"})})
    result = plan(DiscoverScope(), context(aws_managed, seeded_incident(seeded), cfg), {})
    scope = result.outputs
    assert [(s["cluster"], s["name"]) for s in scope["ecs_services"]] == [("batch-jobs", "worker")]
    assert "created by in-scope user svc-backup according to CloudTrail (CreateService e-1)" in \
        scope["ecs_services"][0]["reason"]
    left = {e["name"]: e["reason"] for e in scope["excluded"]}
    assert "web/reports" in left
    assert any("not a trail file" in n for n in result.notes)


def test_lookup_events_attribute_a_disguised_miner(aws_managed: boto3.Session) -> None:
    seeded = seed(aws_managed, NAMES)
    ctx = context(aws_managed, seeded_incident(seeded))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = create_service(iam_user("svc-backup"), "arn:aws:ecs:us-east-1:123456789012:cluster/batch-jobs",
                           "worker", "e-9", now)
    stub = Stubber(ctx.aws.client("cloudtrail", "us-east-1"))
    stub.add_response("lookup_events", {"Events": [{"EventId": "e-9", "EventName": "CreateService",
                                                    "CloudTrailEvent": json.dumps(event)}]},
                      {"StartTime": ANY, "LookupAttributes": [{"AttributeKey": "Username",
                                                               "AttributeValue": "svc-backup"}]})
    stub.activate()
    scope = plan(DiscoverScope(), ctx, {}).outputs
    stub.assert_no_pending_responses()
    assert [s["name"] for s in scope["ecs_services"]] == ["worker"]
    assert "according to CloudTrail (CreateService e-9)" in scope["ecs_services"][0]["reason"]


def test_lookup_events_unavailable_is_a_note_not_a_failure(aws_managed: boto3.Session) -> None:
    seeded = seed(aws_managed, NAMES)
    result = plan(DiscoverScope(), context(aws_managed, seeded_incident(seeded)), {})
    assert result.outputs["ecs_services"] == []  # the disguised image alone is not enough
    assert any("LookupEvents unavailable" in n for n in result.notes)
