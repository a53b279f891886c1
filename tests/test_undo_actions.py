"""Each undo action against moto: it undoes only what the attacker's event added (a look-alike beside
it stays), records what it replaced, converges (a fresh plan is empty), runs with exactly its
declared permissions, and its inverse puts the attacker's state back (rollback)."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from actions import awsconfig, cloudtrail, ec2_exposure, guardduty, iam_persistence, lambda_, rds, s3
from actions.base import ActionContext
from actions.triage import UndoAction
from tests.awshelp import ACCOUNT, context, converge, enforced_as, incident, plan

OUTSIDE, PARTNER = "999900001111", "777788889999"


def ev(key: str, req: dict[str, Any], region: str = "us-east-1") -> dict[str, Any]:
    source, name = key.split(":")
    return {"eventID": str(uuid.uuid4()), "eventTime": "2030-01-01T00:00:00Z", "eventSource": f"{source}.amazonaws.com",
            "eventName": name, "awsRegion": region, "requestParameters": req,
            "userIdentity": {"type": "IAMUser", "userName": "intruder"}}


def zipped() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("h.py", "def h(e, c):\n    return 1\n")
    return buf.getvalue()


def function(s: boto3.Session, name: str) -> None:
    iam = s.client("iam")
    try:
        role = iam.get_role(RoleName="fn-exec")["Role"]["Arn"]
    except ClientError:
        role = iam.create_role(RoleName="fn-exec", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    s.client("lambda").create_function(FunctionName=name, Runtime="python3.12", Role=role, Handler="h.h",
                                       Code={"ZipFile": zipped()})


# ------------------------------------------------------------------ scenarios: setup -> (events, window), check

Setup = Callable[[boto3.Session], tuple[list[dict[str, Any]], str | None]]


def permission_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    function(s, "resize")
    lam = s.client("lambda")
    lam.add_permission(FunctionName="resize", StatementId="from-s3", Action="lambda:InvokeFunction",
                       Principal="s3.amazonaws.com", SourceArn="arn:aws:s3:::uploads", SourceAccount=ACCOUNT)
    lam.add_permission(FunctionName="resize", StatementId="open-door", Action="lambda:InvokeFunction",
                       Principal=f"arn:aws:iam::{OUTSIDE}:root")
    return [ev("lambda:AddPermission20150331v2", {"functionName": "resize", "statementId": "open-door"})], None


def permission_check(s: boto3.Session) -> None:
    policy = json.loads(s.client("lambda").get_policy(FunctionName="resize")["Policy"])
    assert [st["Sid"] for st in policy["Statement"]] == ["from-s3"]


def throttle_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    function(s, "coin")
    function(s, "billing-export")  # legitimate: the attacker never created it
    return [ev("lambda:CreateFunction20150331", {"functionName": "coin"})], None


def throttle_check(s: boto3.Session) -> None:
    lam = s.client("lambda")
    assert lam.get_function_concurrency(FunctionName="coin")["ReservedConcurrentExecutions"] == 0
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName="billing-export")


def pin_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    function(s, "checkout")
    lam = s.client("lambda")
    lam.publish_version(FunctionName="checkout")
    lam.create_alias(FunctionName="checkout", Name="prod", FunctionVersion="1")
    lam.create_alias(FunctionName="checkout", Name="canary", FunctionVersion="1")
    time.sleep(0.01)
    window = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(0.01)
    lam.update_function_code(FunctionName="checkout", ZipFile=zipped())
    lam.publish_version(FunctionName="checkout")
    lam.update_alias(FunctionName="checkout", Name="prod", FunctionVersion="2")
    return [ev("lambda:UpdateFunctionCode20150331v2", {"functionName": "checkout"})], window


def pin_check(s: boto3.Session) -> None:
    lam = s.client("lambda")
    assert lam.get_alias(FunctionName="checkout", Name="prod")["FunctionVersion"] == "1"
    assert lam.get_alias(FunctionName="checkout", Name="canary")["FunctionVersion"] == "1"


def ingress_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    ec2 = s.client("ec2", region_name="sa-east-1")
    sg = ec2.create_security_group(GroupName="edge", Description="edge")["GroupId"]
    for port in (443, 22):
        ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    return [ev("ec2:AuthorizeSecurityGroupIngress", {"groupId": sg, "ipPermissions": {"items": [
        {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]}},
        region="sa-east-1")], None


def ingress_check(s: boto3.Session) -> None:
    ec2 = s.client("ec2", region_name="sa-east-1")
    sg = ec2.describe_security_groups(GroupNames=["edge"])["SecurityGroups"][0]
    assert [(p["FromPort"], p["IpRanges"]) for p in sg["IpPermissions"]] == [(443, [{"CidrIp": "0.0.0.0/0"}])]


def image_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    ec2 = s.client("ec2")
    inst = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=inst, Name="base")["ImageId"]
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": PARTNER}]})
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": OUTSIDE}, {"Group": "all"}]})
    return [ev("ec2:ModifyImageAttribute", {"imageId": ami, "launchPermission": {"add": {"items": [
        {"userId": OUTSIDE}, {"group": "all"}]}}})], None


def image_check(s: boto3.Session) -> None:
    ec2 = s.client("ec2")
    [ami] = [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"] if i["Name"] == "base"]
    assert ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"] == [
        {"UserId": PARTNER}]


def snapshot_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    ec2 = s.client("ec2")
    vol = ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
    snap = ec2.create_snapshot(VolumeId=vol, Description="attacked")["SnapshotId"]
    ec2.modify_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[PARTNER, OUTSIDE])
    return [ev("ec2:ModifySnapshotAttribute", {"snapshotId": snap, "createVolumePermission": {"add": {"items": [
        {"userId": OUTSIDE}]}}})], None


def snapshot_check(s: boto3.Session) -> None:
    ec2 = s.client("ec2")
    [snap] = [x["SnapshotId"] for x in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
              if x.get("Description") == "attacked"]
    assert ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")[
        "CreateVolumePermissions"] == [{"UserId": PARTNER}]


def rds_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    client = s.client("rds")
    client.create_db_instance(DBInstanceIdentifier="crm", DBInstanceClass="db.t3.micro", Engine="postgres",
                              MasterUsername="u", MasterUserPassword="not-a-real-pass", AllocatedStorage=20)
    client.create_db_snapshot(DBInstanceIdentifier="crm", DBSnapshotIdentifier="crm-snap")
    client.modify_db_snapshot_attribute(DBSnapshotIdentifier="crm-snap", AttributeName="restore",
                                        ValuesToAdd=[PARTNER, OUTSIDE])
    client.create_db_cluster(DBClusterIdentifier="ledger", Engine="aurora-postgresql", MasterUsername="u",
                             MasterUserPassword="not-a-real-pass")
    client.create_db_cluster_snapshot(DBClusterIdentifier="ledger", DBClusterSnapshotIdentifier="ledger-snap")
    client.modify_db_cluster_snapshot_attribute(DBClusterSnapshotIdentifier="ledger-snap", AttributeName="restore",
                                                ValuesToAdd=["all"])
    return [ev("rds:ModifyDBSnapshotAttribute", {"dBSnapshotIdentifier": "crm-snap", "attributeName": "restore",
                                                 "valuesToAdd": [OUTSIDE]}),
            ev("rds:ModifyDBClusterSnapshotAttribute", {"dBClusterSnapshotIdentifier": "ledger-snap",
                                                        "attributeName": "restore", "valuesToAdd": ["all"]})], None


def rds_check(s: boto3.Session) -> None:
    client = s.client("rds")
    db = client.describe_db_snapshot_attributes(DBSnapshotIdentifier="crm-snap")["DBSnapshotAttributesResult"]
    assert db["DBSnapshotAttributes"][0]["AttributeValues"] == [PARTNER]
    cl = client.describe_db_cluster_snapshot_attributes(DBClusterSnapshotIdentifier="ledger-snap")
    assert cl["DBClusterSnapshotAttributesResult"]["DBClusterSnapshotAttributes"][0]["AttributeValues"] == []


KEEP = {"Sid": "Own", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"},
        "Action": "s3:GetObject", "Resource": "arn:aws:s3:::ledger-exports/*"}
GRAB = {"Sid": "Grab", "Effect": "Allow", "Principal": {"AWS": OUTSIDE}, "Action": "s3:*",
        "Resource": ["arn:aws:s3:::ledger-exports", "arn:aws:s3:::ledger-exports/*"]}


def bucket_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    s3c = s.client("s3")
    s3c.create_bucket(Bucket="ledger-exports")
    doc = {"Version": "2012-10-17", "Statement": [KEEP, GRAB]}
    s3c.put_bucket_policy(Bucket="ledger-exports", Policy=json.dumps(doc))
    s3c.create_bucket(Bucket="partner-drop")  # a legitimate cross-account policy the attacker never touched
    s3c.put_bucket_policy(Bucket="partner-drop", Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {**GRAB, "Sid": "Partner", "Principal": {"AWS": PARTNER}, "Resource": "arn:aws:s3:::partner-drop/*"}]}))
    return [ev("s3:PutBucketPolicy", {"bucketName": "ledger-exports", "bucketPolicy": doc})], None


def bucket_check(s: boto3.Session) -> None:
    s3c = s.client("s3")
    assert json.loads(s3c.get_bucket_policy(Bucket="ledger-exports")["Policy"])["Statement"] == [KEEP]
    assert json.loads(s3c.get_bucket_policy(Bucket="partner-drop")["Policy"])["Statement"][0]["Sid"] == "Partner"


def trail_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    s.client("s3").create_bucket(Bucket="trail-logs")
    ct = s.client("cloudtrail")
    for name in ("security", "ops", "untouched"):
        ct.create_trail(Name=name, S3BucketName="trail-logs")
        ct.start_logging(Name=name)
    ct.stop_logging(Name="security")
    ct.put_event_selectors(TrailName="ops", EventSelectors=[{"ReadWriteType": "ReadOnly",
                                                             "IncludeManagementEvents": False}])
    return [ev("cloudtrail:StopLogging", {"name": "security"}),
            ev("cloudtrail:PutEventSelectors", {"trailName": "ops"})], None


def trail_check(s: boto3.Session) -> None:
    ct = s.client("cloudtrail")
    assert all(ct.get_trail_status(Name=n)["IsLogging"] for n in ("security", "ops", "untouched"))
    [sel] = ct.get_event_selectors(TrailName="ops")["EventSelectors"]
    assert (sel["ReadWriteType"], sel["IncludeManagementEvents"]) == ("All", True)
    assert ct.get_event_selectors(TrailName="untouched")["EventSelectors"] == []


def login_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    iam = s.client("iam")
    for user in ("dana", "erin"):
        iam.create_user(UserName=user)
        iam.create_login_profile(UserName=user, Password="Some-pa55word!")
    return [ev("iam:CreateLoginProfile", {"userName": "dana"})], None


def login_check(s: boto3.Session) -> None:
    iam = s.client("iam")
    with pytest.raises(ClientError):
        iam.get_login_profile(UserName="dana")
    assert iam.get_login_profile(UserName="erin")["LoginProfile"]["UserName"] == "erin"


def detector_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    gd = s.client("guardduty", region_name="ap-south-1")
    detector = gd.create_detector(Enable=True)["DetectorId"]
    gd.update_detector(DetectorId=detector, Enable=False)
    return [ev("guardduty:UpdateDetector", {"detectorId": detector, "enable": False}, region="ap-south-1"),
            ev("guardduty:UpdateDetector", {"detectorId": detector, "findingPublishingFrequency": "SIX_HOURS"},
               region="ap-south-1")], None


def detector_check(s: boto3.Session) -> None:
    gd = s.client("guardduty", region_name="ap-south-1")
    [detector] = gd.list_detectors()["DetectorIds"]
    assert gd.get_detector(DetectorId=detector)["Status"] == "ENABLED"


def recorder_setup(s: boto3.Session) -> tuple[list[dict[str, Any]], str | None]:
    cfg = s.client("config")
    role = f"arn:aws:iam::{ACCOUNT}:role/c"
    # a recorder stopped on purpose in another region, which the attacker never touched
    s.client("config", region_name="eu-central-1").put_configuration_recorder(
        ConfigurationRecorder={"name": "default", "roleARN": role})
    cfg.put_configuration_recorder(ConfigurationRecorder={"name": "default", "roleARN": role})
    cfg.put_delivery_channel(DeliveryChannel={"name": "default", "s3BucketName": "config-bucket"})
    cfg.start_configuration_recorder(ConfigurationRecorderName="default")
    cfg.stop_configuration_recorder(ConfigurationRecorderName="default")
    return [ev("config:StopConfigurationRecorder", {"configurationRecorderName": "default"})], None


def recorder_check(s: boto3.Session) -> None:
    def recording(region: str) -> bool:
        cfg = s.client("config", region_name=region)
        return bool(cfg.describe_configuration_recorder_status()["ConfigurationRecordersStatus"][0]["recording"])

    assert recording("us-east-1") and not recording("eu-central-1")


SCENARIOS: list[tuple[type[UndoAction], Setup, Callable[[boto3.Session], None]]] = [
    (lambda_.RemoveAttackerPermissions, permission_setup, permission_check),
    (lambda_.ThrottleAttackerFunctions, throttle_setup, throttle_check),
    (lambda_.PinAliasesToEarlierVersions, pin_setup, pin_check),
    (ec2_exposure.RevokeAttackerIngress, ingress_setup, ingress_check),
    (ec2_exposure.UnshareAttackerImages, image_setup, image_check),
    (ec2_exposure.UnshareAttackerSnapshots, snapshot_setup, snapshot_check),
    (rds.UnshareAttackerDbSnapshots, rds_setup, rds_check),
    (s3.RemoveAttackerPolicyStatements, bucket_setup, bucket_check),
    (cloudtrail.RestoreLogging, trail_setup, trail_check),
    (iam_persistence.DeleteAttackerLoginProfiles, login_setup, login_check),
    (guardduty.EnableDetectors, detector_setup, detector_check),
    (awsconfig.StartRecorders, recorder_setup, recorder_check),
]
IDS = [cls.name for cls, _, _ in SCENARIOS]


def ctx_for(session: boto3.Session, window: str | None) -> ActionContext:
    return context(session, incident(window_start=window) if window else None)


@pytest.mark.parametrize(("cls", "setup", "check"), SCENARIOS, ids=IDS)
def test_undo_converges_records_previous_and_rolls_back(aws: boto3.Session, cls: type[UndoAction], setup: Setup,
                                                       check: Callable[[boto3.Session], None]) -> None:
    events, window = setup(aws)
    action = cls()
    dry = ctx_for(aws, window)
    dry.aws.dry_run = True
    planned = plan(action, dry, {"events": events})  # planning in dry-run mode never writes
    assert planned.changes and dry.aws.refused == []
    first = converge(action, ctx_for(aws, window), {"events": events})
    for change in first.changes:
        assert change.target.startswith("arn:aws:") and change.reason
        assert change.previous, f"{cls.name} must record the value it replaces"
    check(aws)
    ctx = ctx_for(aws, window)
    for change in first.changes:
        inverse = action.inverse(change.to_json())
        if change.operation == "iam:DeleteLoginProfile":
            assert inverse is None  # a deleted password cannot come back; rollback names it as manual
            continue
        assert inverse is not None and not action.restored(ctx, inverse)
        action.apply(ctx, inverse)
        assert action.restored(ctx, inverse), inverse
    if cls is not iam_persistence.DeleteAttackerLoginProfiles:
        assert plan(action, ctx, {"events": events}).changes  # the attacker's state is back


@pytest.mark.parametrize(("cls", "setup", "check"), SCENARIOS, ids=IDS)
def test_undo_runs_with_exactly_its_declared_permissions(aws: boto3.Session, cls: type[UndoAction], setup: Setup,
                                                        check: Callable[[boto3.Session], None]) -> None:
    events, window = setup(aws)
    action = cls()
    if cls.__module__ in ("actions.lambda_", "actions.guardduty"):
        # moto cannot authenticate these REST services' signed calls under IAM enforcement: check instead that
        # every operation the action calls is declared
        ctx = ctx_for(aws, window)
        for change in plan(action, ctx, {"events": events}).changes:
            action.apply(ctx, change)
        used = set(ctx.aws.call_counts())
        assert used and used <= set(cls.permissions), used - set(cls.permissions)
        check(aws)
        return
    with enforced_as(aws, cls.permissions) as limited:
        ctx = ctx_for(limited, window)
        for change in plan(action, ctx, {"events": events}).changes:
            action.apply(ctx, change)
    check(aws)


def test_replaced_code_without_an_earlier_version_or_alias_is_manual(aws: boto3.Session) -> None:
    function(aws, "orphan")
    e = ev("lambda:UpdateFunctionConfiguration20150331v2", {"functionName": "orphan", "layers": ["arn:x:layer:1"]})
    out = lambda_.PinAliasesToEarlierVersions().assess(context(aws), [e])
    assert [v.outcome for v in out] == ["manual"] and "orphan" in out[0].instruction and not out[0].changes


def test_a_deleted_trail_is_manual_and_a_gone_function_needs_nothing(aws: boto3.Session) -> None:
    [trail] = cloudtrail.RestoreLogging().assess(context(aws), [ev("cloudtrail:StopLogging", {"name": "gone-trail"})])
    assert trail.outcome == "manual" and "gone-trail" in trail.instruction
    [fn] = lambda_.ThrottleAttackerFunctions().assess(context(aws), [ev("lambda:CreateFunction20150331",
                                                                        {"functionName": "gone"})])
    assert fn.outcome == "no_action_needed"


def test_code_changes_to_a_function_the_attacker_created_are_covered_by_throttling(aws: boto3.Session) -> None:
    function(aws, "dropper")
    created = ev("lambda:CreateFunction20150331", {"functionName": "dropper"})
    changed = ev("lambda:UpdateFunctionCode20150331v2", {"functionName": "dropper"})
    action = lambda_.PinAliasesToEarlierVersions()
    [verdict] = action.verdicts(context(aws), [created, changed])
    assert verdict.outcome == "contained" and "throttled" in verdict.why
    assert plan(action, context(aws), {"events": [created, changed]}).changes == []


def test_rollback_declares_what_undoing_each_undo_needs_and_containment_does_not() -> None:
    from actions.registry import builtin_registry
    from actions.rollback import RevertChanges

    undo = [cls for cls in builtin_registry().all() if issubclass(cls, UndoAction)]
    assert len(undo) >= 12
    for cls in undo:
        for forward, inverses in cls.reverts.items():
            assert forward in cls.permissions, (cls.name, forward)
            for op in inverses:
                assert op in RevertChanges.permissions, (cls.name, op)
    # containment's role never holds the writes that would re-open what it closes
    granted = {p for cls in undo for p in cls.permissions}
    assert not granted & {"lambda:AddPermission", "ec2:AuthorizeSecurityGroupIngress", "cloudtrail:StopLogging",
                          "config:StopConfigurationRecorder", "lambda:DeleteFunctionConcurrency"}
