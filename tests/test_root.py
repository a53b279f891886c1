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


def test_root_keys_deleted_through_assume_root(aws: boto3.Session) -> None:
    member, role = org_with_member(aws)
    ctx = context(aws, incident(account_id=member), org_config(role))
    org = ctx.aws.assume_role(role)
    sts_stub = Stubber(org.client("sts"))
    expires = datetime.now(UTC) + timedelta(minutes=15)
    sts_stub.add_response("assume_root", {"Credentials": {
        "AccessKeyId": "ASIAROOTTASKSESSION1", "SecretAccessKey": "x" * 40, "SessionToken": "t" * 60,
        "Expiration": expires}}, {"TargetPrincipal": member, "TaskPolicyArn": {"arn": ROOT_TASK_DELETE_CREDENTIALS},
                                  "DurationSeconds": 900})
    sts_stub.activate()
    root = org.assume_root(member)
    iam_stub = Stubber(root.client("iam"))
    listed = {"AccessKeyMetadata": [{"UserName": "root", "AccessKeyId": KEY, "Status": "Active"}], "IsTruncated": False}
    iam_stub.add_response("list_access_keys", listed, {})
    iam_stub.add_response("delete_access_key", {}, {"AccessKeyId": KEY})
    iam_stub.add_response("list_access_keys", {"AccessKeyMetadata": [], "IsTruncated": False}, {})
    iam_stub.activate()
    action = DeleteRootAccessKeys()
    [change] = plan(action, ctx, {"access_key_id": KEY}).changes
    assert change.operation == "iam:DeleteAccessKey" and change.target == f"arn:aws:iam::{member}:root"
    assert "used by the attacker" in change.reason
    assert action.apply(ctx, change) == "applied"
    assert plan(action, ctx, {"access_key_id": KEY}).changes == []
    iam_stub.assert_no_pending_responses()
    sts_stub.assert_no_pending_responses()
    assert DeleteRootAccessKeys.risk == "irreversible"
