"""Nothing silent: every attacker call the catalogue knows, and any unknown write, lands in exactly
one outcome of `attacker.triage` (contained / manual / no action needed / exposed)."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest

from actions.triage import TriageAttackerActivity
from runner.techniques import CATALOGUE, classify, event_key, is_write, resource_of
from tests.awshelp import context, plan

#: the techniques issue 14 names, as CloudTrail spells them
ISSUE_TECHNIQUES = [
    "iam:CreateUser", "iam:CreateRole", "iam:UpdateAssumeRolePolicy", "iam:CreateAccessKey", "iam:CreateLoginProfile",
    "iam:UpdateLoginProfile", "iam:AttachUserPolicy", "iam:AttachGroupPolicy", "iam:AttachRolePolicy",
    "iam:PutUserPolicy", "iam:PutGroupPolicy", "iam:PutRolePolicy", "iam:AddUserToGroup",
    "iam:CreateOpenIDConnectProvider", "iam:CreateSAMLProvider", "sts:GetFederationToken", "sts:GetSessionToken",
    "sts:AssumeRole", "lambda:AddPermission", "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration",
    "lambda:CreateFunction", "lambda:PublishLayerVersion", "ec2:RunInstances", "ec2:AuthorizeSecurityGroupIngress",
    "ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute", "ec2:CreateKeyPair", "ec2:ImportKeyPair",
    "rds:ModifyDBSnapshotAttribute", "rds:ModifyDBClusterSnapshotAttribute", "s3:PutBucketPolicy", "s3:PutBucketAcl",
    "s3:DeleteBucketPublicAccessBlock", "cloudtrail:StopLogging", "cloudtrail:DeleteTrail",
    "cloudtrail:PutEventSelectors", "cloudtrail:UpdateTrail", "ec2:DeleteFlowLogs", "guardduty:DeleteDetector",
    "guardduty:UpdateDetector", "config:StopConfigurationRecorder", "secretsmanager:GetSecretValue",
    "ssm:GetParameter", "ssm:GetParameters", "ec2:GetPasswordData",
]


def event(key: str, req: dict[str, Any] | None = None, region: str = "ap-southeast-2", **extra: Any) -> dict[str, Any]:
    source, name = key.split(":", 1)
    return {"eventID": str(uuid.uuid4()), "eventTime": f"2030-01-01T00:00:{len(key) % 60:02d}Z",
            "eventSource": source if "." in source else f"{source}.amazonaws.com", "eventName": name,
            "awsRegion": region, "sourceIPAddress": "198.51.100.7", "userAgent": "Boto3/1.34 attacker",
            "userIdentity": {"type": "IAMUser", "userName": "intruder", "arn": "arn:aws:iam::123456789012:user/intruder"},
            "requestParameters": req if req is not None else {}, "responseElements": None, **extra}


def minimal_request(key: str) -> dict[str, Any]:
    """Request parameters naming a resource that does not exist (in a region nothing lives in)."""
    t = CATALOGUE[key]
    req: dict[str, Any] = {k.split(".")[0]: f"ghost-{k.split('.')[0].lower()}" for k in t.resource_keys[:1]}
    if key.startswith("ssm."):
        req["withDecryption"] = True
    if "AuthorizeSecurityGroupIngress" in key:
        req = {"groupId": "sg-0ghost", "ipPermissions": {"items": [{"ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
                                                                    "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]}}
    if "ModifyImageAttribute" in key:
        req["launchPermission"] = {"add": {"items": [{"userId": "999900001111"}]}}
    if "ModifySnapshotAttribute" in key:
        req["createVolumePermission"] = {"add": {"items": [{"userId": "999900001111"}]}}
    if "rds." in key:
        req.update(attributeName="restore", valuesToAdd=["999900001111"])
    return req


def test_the_catalogue_covers_every_technique_of_the_issue() -> None:
    known = {f"{k.split('.')[0]}:{k.split(':', 1)[1]}" for k in CATALOGUE}
    assert set(ISSUE_TECHNIQUES) <= known, sorted(set(ISSUE_TECHNIQUES) - known)
    for t in CATALOGUE.values():
        assert t.attack_id.startswith("T1") and t.attack_name, t
        assert (t.kind == "undo") == bool(t.handler), t
        if t.kind in ("manual", "exposed"):
            assert "{resource}" in t.instruction, t


def test_every_catalogued_event_and_an_unknown_write_land_in_exactly_one_outcome(aws: boto3.Session) -> None:
    events = [event(key, minimal_request(key)) for key in CATALOGUE]
    unknown = event("kms.amazonaws.com:ScheduleKeyDeletion", {"keyId": "k-123"})
    versioned = event("lambda.amazonaws.com:AddPermission20150331v2", {"functionName": "ghost", "statementId": "x"})
    read = event("s3.amazonaws.com:ListBuckets", {})
    plain = event("ssm.amazonaws.com:GetParameter", {"name": "/flags", "withDecryption": False})
    everything = [*events, unknown, versioned, read, plain]
    out = plan(TriageAttackerActivity(), context(aws), {"events": everything})
    activity = out.outputs["activity"]
    by_id = {a["event_id"]: a for a in activity}
    assert len(by_id) == len(activity)  # exactly once each
    missing = [event_key(e) for e in [*events, unknown, versioned] if e["eventID"] not in by_id]
    assert missing == [], f"silent: {missing}"
    assert read["eventID"] not in by_id and plain["eventID"] not in by_id  # reads exposing nothing are not listed
    for a in activity:
        assert a["outcome"] in ("contained", "manual", "no_action_needed", "exposed"), a
        assert a["why"], a
        if a["outcome"] in ("manual", "exposed"):
            assert a["instruction"] in out.manual, a  # a person's step is a manual action of the run
    assert by_id[unknown["eventID"]]["outcome"] == "manual"
    assert "k-123" in by_id[unknown["eventID"]]["instruction"]
    assert by_id[versioned["eventID"]]["technique_id"] == "T1546"
    secrets = [a for a in activity if a["event"].startswith(("secretsmanager", "ssm"))]
    assert secrets and all(a["outcome"] == "exposed" for a in secrets)
    assert out.changes == []  # triage only reads


def test_failed_calls_and_unattributed_identities_are_not_called_contained(aws: boto3.Session) -> None:
    aws.client("iam").create_user(UserName="payroll")  # an existing user the attacker was denied on
    denied = event("iam.amazonaws.com:AttachUserPolicy", {"userName": "payroll", "policyArn": "arn:x"},
                   errorCode="AccessDenied")
    worked = event("iam.amazonaws.com:AttachUserPolicy", {"userName": "payroll", "policyArn": "arn:aws:iam::aws:"
                                                                                             "policy/ReadOnlyAccess"})
    gone = event("iam.amazonaws.com:CreateUser", {"userName": "deleted-already"})
    out = plan(TriageAttackerActivity(), context(aws), {"events": [denied, worked, gone], "users": [{"name": "intruder"}]})
    by_id = {a["event_id"]: a for a in out.outputs["activity"]}
    assert by_id[denied["eventID"]]["outcome"] == "no_action_needed"
    assert by_id[worked["eventID"]]["outcome"] == "manual"
    assert "detach-user-policy --user-name payroll" in by_id[worked["eventID"]]["instruction"]
    assert by_id[gone["eventID"]]["outcome"] == "no_action_needed"


@pytest.mark.parametrize(("name", "expected"), [("GetFederationToken", "contained"), ("GetSessionToken", "contained")])
def test_sessions_of_a_quarantined_issuer_are_named_as_revoked(aws: boto3.Session, name: str, expected: str) -> None:
    e = event(f"sts.amazonaws.com:{name}", {"name": "x"})
    out = plan(TriageAttackerActivity(), context(aws), {"events": [e], "users": [{"name": "intruder"}]})
    [item] = out.outputs["activity"]
    assert item["outcome"] == expected and "aws:TokenIssueTime" in item["why"]
    other = plan(TriageAttackerActivity(), context(aws), {"events": [e], "users": [{"name": "someone-else"}]})
    assert other.outputs["activity"][0]["outcome"] == "manual"


def test_classify_and_resource_helpers() -> None:
    assert is_write("CreateTopic") and not is_write("GetObject") and not is_write("ListFunctions20150331")
    assert classify(event("iam.amazonaws.com:ListUsers"))[0] == "ignored_read"
    e = event("ec2.amazonaws.com:RunInstances", {}, responseElements={"instancesSet": {"items": [{"instanceId": "i-9"}]}})
    e["responseElements"] = {"instancesSet": {"items": [{"instanceId": "i-9"}]}}
    assert resource_of(e, CATALOGUE["ec2.amazonaws.com:RunInstances"]) == "i-9"


def test_triage_uses_only_declared_reads_and_survives_records_without_resources(aws: boto3.Session) -> None:
    events = [event(key, minimal_request(key)) for key in CATALOGUE]
    bare = [event(key, None) for key in CATALOGUE if CATALOGUE[key].kind == "undo"]
    for e in bare:
        e["requestParameters"] = "not-a-dict"
    ctx = context(aws)
    out = plan(TriageAttackerActivity(), ctx, {"events": [*events, *bare]})
    used = set(ctx.aws.call_counts())
    assert used <= set(TriageAttackerActivity.permissions), used - set(TriageAttackerActivity.permissions)
    by_id = {a["event_id"]: a for a in out.outputs["activity"]}
    assert all(by_id[e["eventID"]]["outcome"] == "manual" for e in bare)


def test_a_protected_user_is_never_changed_on_an_attacker_event(aws: boto3.Session) -> None:
    from actions.iam_persistence import DeleteAttackerLoginProfiles

    iam = aws.client("iam")
    iam.create_user(UserName="breakglass-ops")
    iam.create_login_profile(UserName="breakglass-ops", Password="Attacker-set-pa55!")
    e = event("iam.amazonaws.com:CreateLoginProfile", {"userName": "breakglass-ops"})
    out = plan(DeleteAttackerLoginProfiles(), context(aws), {"events": [e]})
    assert out.changes == []
    triage = plan(TriageAttackerActivity(), context(aws), {"events": [e]})
    assert triage.outputs["activity"][0]["outcome"] == "manual"
    assert "breakglass-ops" in triage.manual[0]


def test_every_flow_log_of_a_deletion_is_named() -> None:
    e = event("ec2.amazonaws.com:DeleteFlowLogs", {"DeleteFlowLogsRequest": {"FlowLogId": [
        {"content": "fl-1", "tag": 1}, {"content": "fl-2", "tag": 2}]}})
    assert resource_of(e, CATALOGUE["ec2.amazonaws.com:DeleteFlowLogs"]) == "fl-1, fl-2"


def test_a_denied_secret_read_exposed_nothing(aws: boto3.Session) -> None:
    denied = event("secretsmanager.amazonaws.com:GetSecretValue", {"secretId": "prod/db"}, errorCode="AccessDenied")
    out = plan(TriageAttackerActivity(), context(aws), {"events": [denied]})
    assert out.outputs["activity"][0]["outcome"] == "no_action_needed" and out.manual == []
