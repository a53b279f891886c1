"""Root access keys: manual steps for a standalone account; SCP plus sts:AssumeRoot for an
Organizations member account (moto for Organizations, botocore's Stubber for AssumeRoot, which
moto does not implement)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3
from botocore.stub import Stubber

from actions.iam import ContainRootCredentials, DeleteRootAccessKeys
from runner.aws import ROOT_TASK_DELETE_CREDENTIALS
from runner.config import load_config
from runner.drill import root_keys_present
from tests.awshelp import ACCOUNT, context, converge, incident, plan

KEY = "AKIAEXAMPLEROOTKEY01"


def org_with_member(aws: boto3.Session) -> tuple[str, str]:
    orgs = aws.client("organizations")
    orgs.create_organization(FeatureSet="ALL")
    root_id = orgs.list_roots()["Roots"][0]["Id"]
    orgs.enable_policy_type(RootId=root_id, PolicyType="SERVICE_CONTROL_POLICY")
    member = orgs.create_account(AccountName="workload", Email="w@example.com")["CreateAccountStatus"]["AccountId"]
    role = aws.client("iam").create_role(RoleName="stanch-org", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                                                "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
    return str(member), str(role)


def org_config(role: str):  # type: ignore[no-untyped-def]
    cfg = load_config()
    return cfg.model_copy(update={"root": cfg.root.model_copy(update={"organizations_role_arn": role})})


def test_standalone_account_gets_manual_steps(aws: boto3.Session) -> None:
    root_keys_present(True)
    result = plan(ContainRootCredentials(), context(aws), {"access_key_id": KEY})
    assert result.changes == []
    assert KEY in result.manual[0] and "Security credentials" in result.manual[0]
    assert plan(DeleteRootAccessKeys(), context(aws), {"access_key_id": KEY}).changes == []


def test_member_account_root_is_denied_by_an_scp(aws: boto3.Session) -> None:
    member, role = org_with_member(aws)
    root_keys_present(True)
    ctx = context(aws, incident(account_id=member), org_config(role))
    first = converge(ContainRootCredentials(), ctx, {"access_key_id": KEY})
    assert [c.operation for c in first.changes] == ["organizations:CreatePolicy", "organizations:AttachPolicy"]
    assert first.manual == []
    orgs = aws.client("organizations")
    attached = orgs.list_policies_for_target(TargetId=member, Filter="SERVICE_CONTROL_POLICY")["Policies"]
    [scp] = [p for p in attached if p["Name"] == f"stanch-deny-root-{member}"]
    content = json.loads(orgs.describe_policy(PolicyId=scp["Id"])["Policy"]["Content"])
    assert content["Statement"][0]["Effect"] == "Deny"
    assert content["Statement"][0]["Condition"]["StringLike"]["aws:PrincipalArn"] == "arn:aws:iam::*:root"


def test_management_account_root_stays_manual(aws: boto3.Session) -> None:
    _, role = org_with_member(aws)
    root_keys_present(True)
    result = plan(ContainRootCredentials(), context(aws, incident(account_id=ACCOUNT), org_config(role)),
                  {"access_key_id": KEY})
    assert result.changes == [] and "management account" in result.manual[0]


def _stub_org_features(org, enabled: bool) -> Stubber:  # type: ignore[no-untyped-def]
    stub = Stubber(org.client("iam"))
    features = ["RootCredentialsManagement", "RootSessions"] if enabled else []
    stub.add_response("list_organizations_features", {"OrganizationId": "o-abc", "EnabledFeatures": features}, {})
    stub.activate()
    return stub


def test_root_credentials_deleted_through_assume_root(aws: boto3.Session) -> None:
    member, role = org_with_member(aws)
    ctx = context(aws, incident(account_id=member), org_config(role))
    org = ctx.aws.assume_role(role)
    features = Stubber(org.client("iam"))
    for _ in range(2):  # plan, then the re-plan after applying
        features.add_response("list_organizations_features", {"OrganizationId": "o-abc", "EnabledFeatures": [
            "RootCredentialsManagement", "RootSessions"]}, {})
    features.activate()
    sts_stub = Stubber(org.client("sts"))
    expires = datetime.now(UTC) + timedelta(minutes=15)
    sts_stub.add_response("assume_root", {"Credentials": {
        "AccessKeyId": "ASIAROOTTASKSESSION1", "SecretAccessKey": "x" * 40, "SessionToken": "t" * 60,
        "Expiration": expires}}, {"TargetPrincipal": member, "TaskPolicyArn": {"arn": ROOT_TASK_DELETE_CREDENTIALS},
                                  "DurationSeconds": 900})
    sts_stub.activate()
    root = org.assume_root(member)
    iam_stub = Stubber(root.client("iam"))
    cert = "CERTROOTSIGNING00001ABCDEFGH"
    iam_stub.add_response("list_access_keys", {"AccessKeyMetadata": [
        {"UserName": "root", "AccessKeyId": KEY, "Status": "Active"}], "IsTruncated": False}, {})
    iam_stub.add_response("list_signing_certificates", {"Certificates": [
        {"UserName": "root", "CertificateId": cert, "CertificateBody": "-----BEGIN CERTIFICATE-----",
         "Status": "Active"}], "IsTruncated": False}, {})
    iam_stub.add_client_error("get_login_profile", "NoSuchEntity", http_status_code=404)
    iam_stub.add_response("list_mfa_devices", {"MFADevices": [], "IsTruncated": False}, {})
    iam_stub.add_response("delete_access_key", {}, {"AccessKeyId": KEY})
    iam_stub.add_response("delete_signing_certificate", {}, {"CertificateId": cert})
    iam_stub.add_response("list_access_keys", {"AccessKeyMetadata": [], "IsTruncated": False}, {})
    iam_stub.add_response("list_signing_certificates", {"Certificates": [], "IsTruncated": False}, {})
    iam_stub.add_client_error("get_login_profile", "NoSuchEntity", http_status_code=404)
    iam_stub.add_response("list_mfa_devices", {"MFADevices": [], "IsTruncated": False}, {})
    iam_stub.activate()
    action = DeleteRootAccessKeys()
    key_change, cert_change = plan(action, ctx, {"access_key_id": KEY}).changes
    assert key_change.operation == "iam:DeleteAccessKey" and key_change.target == f"arn:aws:iam::{member}:root"
    assert "used by the attacker" in key_change.reason
    assert cert_change.operation == "iam:DeleteSigningCertificate" and cert_change.params == {"CertificateId": cert}
    assert action.apply(ctx, key_change) == "applied" and action.apply(ctx, cert_change) == "applied"
    assert plan(action, ctx, {"access_key_id": KEY}).changes == []
    iam_stub.assert_no_pending_responses()
    sts_stub.assert_no_pending_responses()
    features.assert_no_pending_responses()
    assert DeleteRootAccessKeys.risk == "irreversible"


def test_without_centralized_root_access_the_keys_stay_a_manual_action_listed_first(aws: boto3.Session) -> None:
    member, role = org_with_member(aws)
    ctx = context(aws, incident(account_id=member), org_config(role))
    stub = _stub_org_features(ctx.aws.assume_role(role), enabled=False)
    result = plan(DeleteRootAccessKeys(), ctx, {"access_key_id": KEY})
    stub.assert_no_pending_responses()
    assert result.changes == [] and "centralized root access" in result.manual[0]
    text = result.manual[0]
    for artefact in ("access key", "signing certificate", "MFA", "password", "e-mail", "alternate contacts",
                     "session tokens already issued stay valid until they expire"):
        assert artefact in text, artefact
    assert DeleteRootAccessKeys.manual_first and ContainRootCredentials.manual_first


def test_root_manual_action_comes_first_in_json_text_and_report(aws_managed: boto3.Session, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from runner.cli import app
    from runner.drill import seed
    from tests.conftest import TRAIL_CONFIG, publish_trail, write_json

    seeded = seed(aws_managed, {"user": "ci-deployer", "group": "release-mgrs", "cluster": "thumbs",
                                "service": "resize", "image": "xmrig"})
    root_keys_present(True)
    cfg = tmp_path / "two-regions.toml"
    cfg.write_text('[aws]\nregions = ["us-east-1", "eu-west-1"]\n\n' + TRAIL_CONFIG)
    publish_trail(aws_managed, seeded)
    inc = write_json(tmp_path / "incident.json", seeded["incident"])
    state = str(tmp_path / "state")
    runner = CliRunner()
    out = runner.invoke(app, ["run", str(inc), "--approve-all", "--config", str(cfg), "--state-dir", state,
                              "--output", "json"])
    assert out.exit_code == 5, out.output
    doc = json.loads(out.stdout)
    first = doc["manual_actions"][0]
    assert first["step"] == "root-credentials" and first["first"] is True and KEY in first["instructions"]
    assert "signing certificate" in first["instructions"] and "alternate contacts" in first["instructions"]
    text = runner.invoke(app, ["status", doc["run_id"], "--state-dir", state])
    assert text.stdout.lstrip().startswith("MANUAL ACTION FIRST (root-credentials)")
    report = runner.invoke(app, ["report", doc["run_id"], "--state-dir", state])
    md = report.stdout
    assert md.index("## Do this first") < md.index("## Executive summary") and KEY in md.split("## Executive")[0]
    assert "## What was searched" in md and "eu-west-1" in md
