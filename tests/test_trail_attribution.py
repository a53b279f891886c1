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
from runner.drill import TrailWriter, attack_trail, seed
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
    assert "created by the attacker according to CloudTrail (ecs:CreateService e-1 at" in \
        scope["ecs_services"][0]["reason"]
    left = {e["name"]: e["reason"] for e in scope["excluded"]}
    assert "web/reports" in left
    assert any("not a trail file" in n for n in result.notes)


def fast_lookups() -> Any:
    cfg = load_config()
    return cfg.model_copy(update={"intake": cfg.intake.model_copy(update={"lookup_events_tps": 1000})})


def page(*records: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"Events": [{"EventId": r["eventID"], "EventName": r["eventName"],
                                       "CloudTrailEvent": json.dumps(r)} for r in records]}
    if token:
        out["NextToken"] = token
    return out


def lookup(key: str, value: str, token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"StartTime": ANY, "LookupAttributes": [{"AttributeKey": key, "AttributeValue": value}]}
    if token:
        params["NextToken"] = token
    return params


def test_lookup_events_follow_the_closure_page_by_page_and_survive_a_throttled_query(
        aws_managed: boto3.Session) -> None:
    """Root key -> a new user and its key (second page) -> that key assumes an existing role -> the
    session key creates the miner service. Each new key is looked up in the next round; a throttled
    query is a recorded gap and the next query still runs."""
    seeded = seed(aws_managed, NAMES)
    aws_managed.client("iam").create_role(RoleName="deploy", AssumeRolePolicyDocument="{}")
    doc = dict(seeded["incident"])
    doc["principals"], doc["resources"], doc["indicators"] = [{"type": "root", "access_key_id": "AKIAEXAMPLEROOTKEY01"}], [], {}
    ctx = context(aws_managed, validate_incident("t", doc), fast_lookups())
    t = attack_trail(seeded, TrailWriter(when=seeded["incident"]["window_start"]))
    atk_key = seeded["attacker_key"]["AccessKeyId"]
    me = t.user("svc-backup", atk_key)
    hop = t.add(me, "sts", "AssumeRole", {"roleArn": "arn:aws:iam::123456789012:role/deploy", "roleSessionName": "x"},
                {"credentials": {"accessKeyId": "ASIAHOPSESSIONKEY001"},
                 "assumedRoleUser": {"arn": "arn:aws:sts::123456789012:assumed-role/deploy/x"}})
    hidden = t.add(t.role("deploy", "x", "ASIAHOPSESSIONKEY001"), "ecs", "CreateService",
                   {"cluster": "web", "serviceName": "reports", "desiredCount": 1})
    service(aws_managed, "web", "reports", "python:3.12", 1)
    root_recs, user_recs = t.records[:7], t.records[7:10]
    stub = Stubber(ctx.aws.client("cloudtrail", "us-east-1"))
    # round 1: the root key (two pages), "root", then nothing more is known
    stub.add_response("lookup_events", page(*root_recs[:3], token="p2"), lookup("AccessKeyId", "AKIAEXAMPLEROOTKEY01"))
    stub.add_response("lookup_events", page(*root_recs[3:]), lookup("AccessKeyId", "AKIAEXAMPLEROOTKEY01", "p2"))
    stub.add_client_error("lookup_events", "ThrottlingException", "Rate exceeded", 400,
                          expected_params=lookup("Username", "root"))
    # round 2: what round 1 found: the attacker's key and user
    stub.add_response("lookup_events", page(*user_recs, hop), lookup("AccessKeyId", atk_key))
    stub.add_response("lookup_events", page(), lookup("Username", "svc-backup"))
    # round 3: the session key the hop obtained
    stub.add_response("lookup_events", page(hidden), lookup("AccessKeyId", "ASIAHOPSESSIONKEY001"))
    stub.activate()
    result = plan(DiscoverScope(), ctx, {})
    stub.assert_no_pending_responses()
    scope = result.outputs
    assert sorted(s["name"] for s in scope["ecs_services"]) == ["reports", "worker"]
    reasons = {s["name"]: s["reason"] for s in scope["ecs_services"]}
    assert hidden["eventID"] in reasons["reports"] and "worker" in reasons
    assert [u["name"] for u in scope["users"]] == ["svc-backup"]
    # the existing role is not locked: its attacker sessions are revoked, precisely
    assert scope["roles"] == []
    assert [(r["op"], r["name"]) for r in scope["reversals"]] == [("revoke-sessions", "deploy")]
    assert hop["eventID"] in scope["reversals"][0]["proof"]
    assert any("ThrottlingException" in g for g in scope["attribution"]["gaps"])
    assert "CloudTrail LookupEvents us-east-1 (" in " ".join(scope["attribution"]["sources"])


def test_lookup_events_unavailable_is_a_note_not_a_failure(aws_managed: boto3.Session) -> None:
    seeded = seed(aws_managed, NAMES)
    result = plan(DiscoverScope(), context(aws_managed, seeded_incident(seeded)), {})
    assert result.outputs["ecs_services"] == []  # the disguised image alone is not enough
    assert any("attribution gap: CloudTrail LookupEvents us-east-1" in n for n in result.notes)
    assert result.outputs["attribution"]["available"] is False
