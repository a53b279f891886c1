"""Every write the attacker made is undone or reported (issue 14).

One stolen user key performs the catalogued techniques in a moto account, beside decoys that
look alike and that the attacker never touched. The reference playbook runs through the CLI with
the attributed CloudTrail events supplied to discovery; afterwards every containable technique is
undone, every other one is a manual action naming its resource, every decoy is as it was, and
`stanch rollback` puts back each change from its recorded previous value."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import ACCOUNT, ADMIN, base_image, seed
from runner.report import build_report, render_html, render_markdown
from tests.conftest import write_json

NAMES = {"user": "svc-backup", "group": "k8s-ops", "cluster": "billing", "service": "report-gen", "image": "xmrig/xmrig"}
OUTSIDE = "999900001111"  # the attacker's own account
PARTNER = "777788889999"  # a legitimate partner, shared with before the incident
WEST = "eu-west-3"  # the security-group attack happens outside the home region


def stamp() -> str:
    time.sleep(0.002)
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def zipped() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("h.py", "def h(event, context):\n    return 1\n")
    return buf.getvalue()


class Attacker:
    """Records a CloudTrail event for every call the stolen key makes."""

    def __init__(self, user: str, key: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.identity = {"type": "IAMUser", "userName": user, "accountId": ACCOUNT, "accessKeyId": key,
                         "arn": f"arn:aws:iam::{ACCOUNT}:user/{user}"}

    def did(self, source: str, name: str, req: dict[str, Any] | None = None, resp: dict[str, Any] | None = None,
            region: str = "us-east-1", **extra: Any) -> dict[str, Any]:
        event = {"eventVersion": "1.08", "eventID": str(uuid.uuid4()), "eventTime": stamp(),
                 "eventSource": f"{source}.amazonaws.com", "eventName": name, "awsRegion": region,
                 "sourceIPAddress": "203.0.113.66", "userAgent": "aws-cli/2.15.0 Python/3.11 Linux/kali",
                 "userIdentity": self.identity, "requestParameters": req, "responseElements": resp, **extra}
        self.events.append(event)
        return event


def build(session: boto3.Session) -> dict[str, Any]:
    """Decoys before the window, then the reference chain (drill seed), then the attacker's techniques."""
    iam, lam, s3, ct, rds = (session.client(s) for s in ("iam", "lambda", "s3", "cloudtrail", "rds"))
    ec2, west = session.client("ec2"), session.client("ec2", region_name=WEST)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"AWS": f"arn:aws:iam::{PARTNER}:root"}}]}
    iam.create_role(RoleName="partner-audit", AssumeRolePolicyDocument=json.dumps(trust))  # decoy: legit trust
    iam.create_role(RoleName="ci-deployer", AssumeRolePolicyDocument=json.dumps(trust))
    lambda_role = iam.create_role(RoleName="fn-exec", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                 "Principal": {"Service": "lambda.amazonaws.com"}}]}))["Role"]["Arn"]
    for user in ("bob", "carol"):
        iam.create_user(UserName=user)
    iam.create_login_profile(UserName="carol", Password="Carol-own-pa55word!")
    lam.create_function(FunctionName="thumbnailer", Runtime="python3.12", Role=lambda_role, Handler="h.h",
                        Code={"ZipFile": zipped()})
    lam.add_permission(FunctionName="thumbnailer", StatementId="s3-invoke", Action="lambda:InvokeFunction",
                       Principal="s3.amazonaws.com", SourceArn="arn:aws:s3:::acme-uploads", SourceAccount=ACCOUNT)
    lam.publish_version(FunctionName="thumbnailer")
    lam.create_alias(FunctionName="thumbnailer", Name="live", FunctionVersion="1")
    web = west.create_security_group(GroupName="web-sg", Description="public web")["GroupId"]
    west.authorize_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    instance = ec2.run_instances(ImageId=base_image(ec2), MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    golden = ec2.create_image(InstanceId=instance, Name="golden")["ImageId"]
    ec2.modify_image_attribute(ImageId=golden, LaunchPermission={"Add": [{"UserId": PARTNER}]})  # decoy
    backup_ami = ec2.create_image(InstanceId=instance, Name="db-backup")["ImageId"]
    volume = ec2.create_volume(Size=8, AvailabilityZone="us-east-1a")["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    rds.create_db_instance(DBInstanceIdentifier="orders", DBInstanceClass="db.t3.micro", Engine="postgres",
                           MasterUsername="app", MasterUserPassword="not-a-real-pass", AllocatedStorage=20)
    rds.create_db_snapshot(DBInstanceIdentifier="orders", DBSnapshotIdentifier="orders-nightly")
    rds.create_db_cluster(DBClusterIdentifier="ledger", Engine="aurora-postgresql", MasterUsername="app",
                          MasterUserPassword="not-a-real-pass")
    rds.create_db_cluster_snapshot(DBClusterIdentifier="ledger", DBClusterSnapshotIdentifier="ledger-weekly")
    legit = {"Sid": "AppRead", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/fn-exec"},
             "Action": "s3:GetObject", "Resource": "arn:aws:s3:::acme-data/*"}
    for bucket in ("acme-data", "acme-trails"):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(Bucket="acme-data", Policy=json.dumps({"Version": "2012-10-17", "Statement": [legit]}))
    for trail in ("org-trail", "audit-trail", "ops-trail"):
        ct.create_trail(Name=trail, S3BucketName="acme-trails")
        ct.start_logging(Name=trail)
    gd, cfg = session.client("guardduty"), session.client("config")
    detector = gd.create_detector(Enable=True)["DetectorId"]
    cfg.put_configuration_recorder(ConfigurationRecorder={"name": "main", "roleARN": lambda_role})
    cfg.put_delivery_channel(DeliveryChannel={"name": "main", "s3BucketName": "acme-trails"})
    cfg.start_configuration_recorder(ConfigurationRecorderName="main")

    seeded = seed(session, NAMES)  # stamps the window start, then the reference chain
    a = Attacker(NAMES["user"], seeded["attacker_key"]["AccessKeyId"])
    user, group = NAMES["user"], NAMES["group"]
    # the reference chain, as CloudTrail saw it
    a.did("iam", "CreateUser", {"userName": user})
    a.did("iam", "CreateAccessKey", {"userName": user}, {"accessKey": {
        "accessKeyId": seeded["attacker_key"]["AccessKeyId"], "userName": user, "status": "Active"}})
    a.did("iam", "CreateGroup", {"groupName": group})
    a.did("iam", "AttachGroupPolicy", {"groupName": group, "policyArn": ADMIN})
    a.did("iam", "AddUserToGroup", {"groupName": group, "userName": user})
    a.did("ecs", "CreateService", {"cluster": NAMES["cluster"], "serviceName": NAMES["service"]})
    # identities and credentials beyond the chain
    iam.create_login_profile(UserName="bob", Password="Attacker-set-pa55!")
    a.did("iam", "CreateLoginProfile", {"userName": "bob", "passwordResetRequired": False})
    a.did("iam", "UpdateLoginProfile", {"userName": "carol"})
    a.did("iam", "UpdateAssumeRolePolicy", {"roleName": "ci-deployer", "policyDocument": "{...}"})
    a.did("iam", "CreateOpenIDConnectProvider", {"url": "https://token.attacker.example"},
          {"openIDConnectProviderArn": f"arn:aws:iam::{ACCOUNT}:oidc-provider/token.attacker.example"})
    a.did("iam", "CreateSAMLProvider", {"name": "corp-sso"},
          {"sAMLProviderArn": f"arn:aws:iam::{ACCOUNT}:saml-provider/corp-sso"})
    a.did("sts", "GetFederationToken", {"name": "fed-backdoor", "durationSeconds": 129600})
    a.did("sts", "AssumeRole", {"roleArn": f"arn:aws:iam::{ACCOUNT}:role/ci-deployer", "roleSessionName": "x"})
    # Lambda
    lam.add_permission(FunctionName="thumbnailer", StatementId="backdoor", Action="lambda:InvokeFunction",
                       Principal="*")
    a.did("lambda", "AddPermission20150331v2", {"functionName": "thumbnailer", "statementId": "backdoor",
                                                "action": "lambda:InvokeFunction", "principal": "*"})
    lam.update_function_code(FunctionName="thumbnailer", ZipFile=zipped())
    a.did("lambda", "UpdateFunctionCode20150331v2", {"functionName": "thumbnailer"})
    lam.publish_version(FunctionName="thumbnailer")
    lam.update_alias(FunctionName="thumbnailer", Name="live", FunctionVersion="2")
    lam.create_function(FunctionName="miner-fn", Runtime="python3.12", Role=lambda_role, Handler="h.h",
                        Code={"ZipFile": zipped()})
    a.did("lambda", "CreateFunction20150331", {"functionName": "miner-fn"})
    a.did("lambda", "PublishLayerVersion20181031", {"layerName": "ext"},
          {"layerVersionArn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:layer:ext:1"})
    # EC2
    a.did("ec2", "RunInstances", {"instanceType": "c5.4xlarge"},
          {"instancesSet": {"items": [{"instanceId": "i-0attacker0miner0"}]}})
    a.did("ec2", "CreateKeyPair", {"keyName": "persist-key"})
    west.authorize_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    a.did("ec2", "AuthorizeSecurityGroupIngress", {"groupId": web, "ipPermissions": {"items": [
        {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "groups": {}, "ipv6Ranges": {}, "prefixListIds": {},
         "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]}}, region=WEST)
    ec2.modify_image_attribute(ImageId=backup_ami, LaunchPermission={"Add": [{"UserId": OUTSIDE}, {"Group": "all"}]})
    a.did("ec2", "ModifyImageAttribute", {"imageId": backup_ami, "attributeType": "launchPermission",
                                          "launchPermission": {"add": {"items": [{"userId": OUTSIDE},
                                                                                 {"group": "all"}]}}})
    ec2.modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission", OperationType="add",
                                  UserIds=[OUTSIDE])
    a.did("ec2", "ModifySnapshotAttribute", {"snapshotId": snapshot, "attributeType": "CREATE_VOLUME_PERMISSION",
                                             "createVolumePermission": {"add": {"items": [{"userId": OUTSIDE}]}}})
    a.did("ec2", "DeleteFlowLogs", {"DeleteFlowLogsRequest": {"FlowLogId": {"content": "fl-0123abcd"}}})
    # RDS
    rds.modify_db_snapshot_attribute(DBSnapshotIdentifier="orders-nightly", AttributeName="restore",
                                     ValuesToAdd=[OUTSIDE])
    a.did("rds", "ModifyDBSnapshotAttribute", {"dBSnapshotIdentifier": "orders-nightly", "attributeName": "restore",
                                               "valuesToAdd": [OUTSIDE]})
    rds.modify_db_cluster_snapshot_attribute(DBClusterSnapshotIdentifier="ledger-weekly", AttributeName="restore",
                                             ValuesToAdd=["all"])
    a.did("rds", "ModifyDBClusterSnapshotAttribute", {"dBClusterSnapshotIdentifier": "ledger-weekly",
                                                      "attributeName": "restore", "valuesToAdd": ["all"]})
    # S3
    grab = {"Sid": "Replicate", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{OUTSIDE}:root"},
            "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": ["arn:aws:s3:::acme-data",
                                                                      "arn:aws:s3:::acme-data/*"]}
    attacker_policy = {"Version": "2012-10-17", "Statement": [legit, grab]}
    s3.put_bucket_policy(Bucket="acme-data", Policy=json.dumps(attacker_policy))
    a.did("s3", "PutBucketPolicy", {"bucketName": "acme-data", "bucketPolicy": attacker_policy, "policy": [""]})
    a.did("s3", "PutBucketAcl", {"bucketName": "acme-trails"})
    a.did("s3", "DeleteBucketPublicAccessBlock", {"bucketName": "acme-trails"})
    # logging and detection
    ct.stop_logging(Name="audit-trail")
    a.did("cloudtrail", "StopLogging", {"name": "audit-trail"})
    ct.put_event_selectors(TrailName="ops-trail", EventSelectors=[
        {"ReadWriteType": "ReadOnly", "IncludeManagementEvents": True}])
    a.did("cloudtrail", "PutEventSelectors", {"trailName": "ops-trail", "eventSelectors": [
        {"readWriteType": "ReadOnly", "includeManagementEvents": True}]})
    a.did("cloudtrail", "DeleteTrail", {"name": "legacy-trail"})
    a.did("cloudtrail", "UpdateTrail", {"name": "org-trail-eu", "s3BucketName": "attacker-sink"})
    a.did("guardduty", "DeleteDetector", {"detectorId": "12abc34d567e8fa901bc2d34e56789f0"})
    gd.update_detector(DetectorId=detector, Enable=False)
    a.did("guardduty", "UpdateDetector", {"detectorId": detector, "enable": False})
    cfg.stop_configuration_recorder(ConfigurationRecorderName="main")
    a.did("config", "StopConfigurationRecorder", {"configurationRecorderName": "main"})
    # reads of secrets, and a plain read that exposes nothing
    a.did("secretsmanager", "GetSecretValue", {"secretId": "prod/orders/db"})
    a.did("ssm", "GetParameter", {"name": "/prod/stripe/key", "withDecryption": True})
    a.did("ssm", "GetParameter", {"name": "/prod/feature-flags", "withDecryption": False})
    a.did("ec2", "GetPasswordData", {"instanceId": "i-0winjump01"})
    a.did("iam", "ListUsers", {})
    # a write stanch has no entry for, and a call that failed
    a.did("sns", "CreateTopic", {"name": "exfil-alerts"})
    a.did("iam", "CreateUser", {"userName": "never-made"}, errorCode="AccessDenied", errorMessage="denied")
    return {"seeded": seeded, "events": a.events, "web": web, "golden": golden, "backup_ami": backup_ami,
            "snapshot": snapshot, "detector": detector}


def supply_events(monkeypatch: pytest.MonkeyPatch, events: list[dict[str, Any]], session: boto3.Session,
                  tmp_path: Path) -> None:
    """The account's organization trail holds the stolen key's calls; runs read it through
    `[intake] cloudtrail_s3_uri`, and the attribution graph gives them to discovery."""
    s3 = session.client("s3")
    s3.create_bucket(Bucket="org-trail-persist")
    s3.put_object(Bucket="org-trail-persist", Key=f"AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/part-1.json",
                  Body=json.dumps({"Records": events}).encode())
    config = tmp_path / "trail.toml"
    # the runs search the two regions the attack used (the all-region search has its own tests)
    config.write_text(f'[aws]\nregions = ["us-east-1", "{WEST}"]\n\n'
                      '[intake]\ncloudtrail_s3_uri = "s3://org-trail-persist/AWSLogs/"\n')
    monkeypatch.setenv("STANCH_CONFIG", str(config))


def live_state(session: boto3.Session, built: dict[str, Any]) -> dict[str, Any]:
    """What the undo actions and the decoys look like in the account now."""
    iam, lam, s3, ct, rds = (session.client(s) for s in ("iam", "lambda", "s3", "cloudtrail", "rds"))
    ec2, west = session.client("ec2"), session.client("ec2", region_name=WEST)

    def has_login(user: str) -> bool:
        try:
            iam.get_login_profile(UserName=user)
        except iam.exceptions.NoSuchEntityException:
            return False
        return True

    def rds_shares(kind: str, ident: str) -> list[str]:
        if kind == "db":
            res = rds.describe_db_snapshot_attributes(DBSnapshotIdentifier=ident)["DBSnapshotAttributesResult"]
            attrs = res["DBSnapshotAttributes"]
        else:
            res = rds.describe_db_cluster_snapshot_attributes(DBClusterSnapshotIdentifier=ident)
            attrs = res["DBClusterSnapshotAttributesResult"]["DBClusterSnapshotAttributes"]
        return sorted(v for a in attrs if a["AttributeName"] == "restore" for v in a["AttributeValues"])

    def selectors(trail: str) -> list[tuple[str, bool]]:
        return [(s["ReadWriteType"], s["IncludeManagementEvents"])
                for s in ct.get_event_selectors(TrailName=trail)["EventSelectors"]]

    sg = west.describe_security_groups(GroupIds=[built["web"]])["SecurityGroups"][0]["IpPermissions"]
    return {
        "lambda_sids": sorted(s["Sid"] for s in json.loads(lam.get_policy(FunctionName="thumbnailer")["Policy"])[
            "Statement"]),
        "alias": lam.get_alias(FunctionName="thumbnailer", Name="live")["FunctionVersion"],
        "miner_fn_reserved": lam.get_function_concurrency(FunctionName="miner-fn").get("ReservedConcurrentExecutions"),
        "sg_ports": sorted((p["FromPort"], r["CidrIp"]) for p in sg for r in p["IpRanges"]),
        "golden": sorted(str(p) for p in ec2.describe_image_attribute(
            ImageId=built["golden"], Attribute="launchPermission")["LaunchPermissions"]),
        "backup_ami": sorted(str(p) for p in ec2.describe_image_attribute(
            ImageId=built["backup_ami"], Attribute="launchPermission")["LaunchPermissions"]),
        "snapshot": sorted(str(p) for p in ec2.describe_snapshot_attribute(
            SnapshotId=built["snapshot"], Attribute="createVolumePermission")["CreateVolumePermissions"]),
        "rds_snapshot": rds_shares("db", "orders-nightly"),
        "rds_cluster_snapshot": rds_shares("cluster", "ledger-weekly"),
        "bucket_sids": sorted(s["Sid"] for s in json.loads(s3.get_bucket_policy(Bucket="acme-data")["Policy"])[
            "Statement"]),
        "bob_login": has_login("bob"), "carol_login": has_login("carol"),
        "logging": {t: ct.get_trail_status(Name=t)["IsLogging"] for t in ("org-trail", "audit-trail", "ops-trail")},
        "ops_selectors": selectors("ops-trail"), "org_selectors": selectors("org-trail"),
        "partner_trust": iam.get_role(RoleName="partner-audit")["Role"]["AssumeRolePolicyDocument"],
        "detector": session.client("guardduty").get_detector(DetectorId=built["detector"])["Status"],
        "recorder": session.client("config").describe_configuration_recorder_status()[
            "ConfigurationRecordersStatus"][0]["recording"],
    }


ATTACKED = {
    "lambda_sids": ["backdoor", "s3-invoke"], "alias": "2", "miner_fn_reserved": None,
    "sg_ports": [(22, "0.0.0.0/0"), (443, "0.0.0.0/0")],
    "backup_ami": sorted([str({"UserId": OUTSIDE}), str({"Group": "all"})]),
    "snapshot": [str({"UserId": OUTSIDE})], "rds_snapshot": [OUTSIDE], "rds_cluster_snapshot": ["all"],
    "bucket_sids": ["AppRead", "Replicate"], "bob_login": True, "carol_login": True,
    "logging": {"org-trail": True, "audit-trail": False, "ops-trail": True},
    "ops_selectors": [("ReadOnly", True)], "detector": "DISABLED", "recorder": False,
}
CONTAINED = {
    "lambda_sids": ["s3-invoke"], "alias": "1", "miner_fn_reserved": 0, "sg_ports": [(443, "0.0.0.0/0")],
    "backup_ami": [], "snapshot": [], "rds_snapshot": [], "rds_cluster_snapshot": [], "bucket_sids": ["AppRead"],
    "bob_login": False, "carol_login": True,  # carol's changed password is her own to reset: manual
    "logging": {"org-trail": True, "audit-trail": True, "ops-trail": True}, "ops_selectors": [("All", True)],
    "detector": "ENABLED", "recorder": True,
}
#: event name -> outcome the responder must see
EXPECTED = {
    "CreateUser": "contained", "CreateAccessKey": "contained", "CreateGroup": "contained",
    "AttachGroupPolicy": "contained", "AddUserToGroup": "contained", "CreateService": "contained",
    "CreateLoginProfile": "contained", "UpdateLoginProfile": "manual", "UpdateAssumeRolePolicy": "manual",
    "CreateOpenIDConnectProvider": "manual", "CreateSAMLProvider": "manual", "GetFederationToken": "contained",
    "AssumeRole": "contained", "AddPermission20150331v2": "contained", "UpdateFunctionCode20150331v2": "contained",
    "CreateFunction20150331": "contained", "PublishLayerVersion20181031": "manual", "RunInstances": "manual",
    "CreateKeyPair": "manual", "AuthorizeSecurityGroupIngress": "contained", "ModifyImageAttribute": "contained",
    "ModifySnapshotAttribute": "contained", "DeleteFlowLogs": "manual", "ModifyDBSnapshotAttribute": "contained",
    "ModifyDBClusterSnapshotAttribute": "contained", "PutBucketPolicy": "contained", "PutBucketAcl": "manual",
    "DeleteBucketPublicAccessBlock": "manual", "StopLogging": "contained", "PutEventSelectors": "contained",
    "DeleteTrail": "manual", "UpdateTrail": "manual", "DeleteDetector": "manual", "UpdateDetector": "contained",
    "StopConfigurationRecorder": "contained", "GetSecretValue": "exposed", "GetParameter": "exposed",
    "GetPasswordData": "exposed", "CreateTopic": "manual",
}


@pytest.fixture
def attacked(aws_managed: boto3.Session, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    built = build(aws_managed)
    supply_events(monkeypatch, built["events"], aws_managed, tmp_path)
    built["incident"] = write_json(tmp_path / "incident.json", built["seeded"]["incident"])
    built["state"] = str(tmp_path / "state")
    built["before"] = live_state(aws_managed, built)
    return built


def test_every_attacker_write_is_undone_or_reported_and_decoys_are_untouched(
        aws_managed: boto3.Session, attacked: dict[str, Any]) -> None:
    before = attacked["before"]
    assert {k: before[k] for k in ATTACKED} == ATTACKED

    dry = cli("run", str(attacked["incident"]), "--dry-run", "--output", "json", "--state-dir", attacked["state"])
    assert dry.exit_code == 0, dry.output
    assert live_state(aws_managed, attacked) == before  # a dry run writes nothing

    run = cli("run", str(attacked["incident"]), "--approve-all", "--output", "json", "--state-dir", attacked["state"])
    doc = json.loads(run.stdout)
    assert run.exit_code == 5, run.output  # everything automatable contained; people must act on the rest
    assert doc["status"] == "needs_manual_action"
    after = live_state(aws_managed, attacked)
    assert {k: after[k] for k in CONTAINED} == CONTAINED
    # the decoys: legitimate Lambda permission (above), public HTTPS rule (above), shared AMI, untouched
    # trail, cross-account role trust
    for decoy in ("golden", "org_selectors", "partner_trust"):
        assert after[decoy] == before[decoy], decoy
    assert after["logging"]["org-trail"] is True

    # nothing silent: every call except plain reads is listed once, in time order, with its outcome
    activity = doc["attacker_activity"]
    listed = [a["event_id"] for a in activity]
    expected_ids = [e["eventID"] for e in attacked["events"]
                    if e["eventName"] != "ListUsers" and e["requestParameters"].get("withDecryption") is not False]
    assert listed == expected_ids
    assert [a["time"] for a in activity] == sorted(a["time"] for a in activity)
    outcomes = {a["event"].split(":")[1]: a["outcome"] for a in activity if a["resource"] != "never-made"}
    assert outcomes == EXPECTED
    failed = next(a for a in activity if a["resource"] == "never-made")
    assert failed["outcome"] == "no_action_needed" and "AccessDenied" in failed["why"]
    for a in activity:
        assert a["source_ip"] == "203.0.113.66" and a["user_agent"].startswith("aws-cli")
        if a["event"] != "sns.amazonaws.com:CreateTopic":
            assert a["technique_id"] and a["technique_id"].startswith("T1"), a
        if a["outcome"] in ("manual", "exposed"):
            assert a["resource"] and a["resource"] in a["instruction"], a
    by_name = {a["event"].split(":")[1]: a for a in activity}
    assert by_name["StopLogging"]["blind_period"]["from"] == by_name["StopLogging"]["time"]
    assert "quarantine" in by_name["GetFederationToken"]["why"]

    # every manual and exposed instruction is a manual action of the run
    manual = "\n".join(m["instructions"] for m in doc["manual_actions"])
    for needle in ("carol", "ci-deployer", "token.attacker.example", "legacy-trail", "i-0attacker0miner0",
                   "persist-key", "fl-0123abcd", "prod/orders/db", "/prod/stripe/key", "i-0winjump01",
                   "exfil-alerts", "acme-trails", "12abc34d567e8fa901bc2d34e56789f0"):
        assert needle in manual, needle
    assert "/prod/feature-flags" not in manual

    # the report lists every attributed action with its outcome and ATT&CK id
    report = build_report(doc["run_id"], Path(attacked["state"]))
    section = render_markdown(report).split("## Every attacker call and its outcome", 1)[1].split("\n## ", 1)[0]
    page = render_html(report)
    for a in activity:
        assert a["event_id"] in section and a["event_id"] in page
    assert "T1562.008" in section and "T1537" in section and "exposed" in section and "blind" in section.lower()
    starts = [t for t in report["timeline"] if t["what"].startswith("BLIND PERIOD from StopLogging on audit-trail")]
    ends = [t for t in report["timeline"] if t["what"] == "BLIND PERIOD ends: audit-trail restored"]
    assert len(starts) == 1 and "restored by this run" in starts[0]["what"] and len(ends) == 1
    assert any("legacy-trail, still open" in t["what"] for t in report["timeline"])

    # a second run finds nothing left to undo
    again = cli("run", str(attacked["incident"]), "--approve-all", "--output", "json",
                "--state-dir", attacked["state"])
    redo = json.loads(again.stdout)
    undo_steps = {s["id"]: s for s in redo["steps"] if s["action"].split(".")[0] in
                  ("lambda", "ec2", "rds", "s3", "cloudtrail", "guardduty", "config")}
    assert undo_steps and all(s["changes"] == [] for s in undo_steps.values())


def test_rollback_restores_each_undo_from_its_recorded_previous_value(
        aws_managed: boto3.Session, attacked: dict[str, Any]) -> None:
    before = attacked["before"]
    run = cli("run", str(attacked["incident"]), "--approve-all", "--output", "json", "--state-dir", attacked["state"])
    assert run.exit_code == 5, run.output
    assert {k: v for k, v in live_state(aws_managed, attacked).items() if k in CONTAINED} == CONTAINED

    back = cli("rollback", json.loads(run.stdout)["run_id"], "--approve-all", "--output", "json",
               "--false-positive", "--reason", "drill: undo everything",
               "--state-dir", attacked["state"])
    doc = json.loads(back.stdout)
    assert back.exit_code == 5, back.output  # deleted console passwords cannot come back by API
    [revert] = doc["steps"]
    assert not revert.get("verification"), revert
    restored = live_state(aws_managed, attacked)
    assert {k: v for k, v in restored.items() if k != "bob_login"} == {k: v for k, v in before.items()
                                                                       if k != "bob_login"}
    assert restored["bob_login"] is False
    assert any("console password of bob" in m["instructions"] for m in doc["manual_actions"])


def test_gated_undo_steps_wait_for_approval_while_the_rest_is_contained(
        aws_managed: boto3.Session, attacked: dict[str, Any]) -> None:
    before = attacked["before"]
    first = cli("run", str(attacked["incident"]), "--output", "json", "--state-dir", attacked["state"])
    assert first.exit_code == 3, first.output  # paused: no terminal and nothing pre-approved
    doc = json.loads(first.stdout)
    status = {s["id"]: s["status"] for s in doc["steps"]}
    for gated in ("pin-lambda-aliases", "restore-cloudtrail", "remove-bucket-policy-statements"):
        assert status[gated] == "awaiting_approval", gated
    assert status["remove-lambda-permissions"] == "applied" and status["revoke-attacker-ingress"] == "applied"
    paused = live_state(aws_managed, attacked)
    assert paused["alias"] == before["alias"] and paused["logging"] == before["logging"]
    assert paused["bucket_sids"] == before["bucket_sids"]
    assert paused["lambda_sids"] == ["s3-invoke"] and paused["sg_ports"] == [(443, "0.0.0.0/0")]

    done = cli("resume", doc["run_id"], "--approve-all", "--by", "alice", "--output", "json",
               "--state-dir", attacked["state"])
    assert done.exit_code == 5, done.output
    after = live_state(aws_managed, attacked)
    assert {k: after[k] for k in CONTAINED} == CONTAINED
