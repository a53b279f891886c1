"""Quarantine that always lands: a full inline-policy quota falls back to a managed deny-all policy,
attacker groups are quarantined too, inline admin grants are removed (and kept), rollback undoes it all."""

from __future__ import annotations

import json
from typing import Any

import boto3

from actions.iam import (
    MANAGED_QUARANTINE,
    QUARANTINE_POLICY,
    DetachAdminPolicies,
    QuarantinePrincipals,
    grants_everything,
)
from actions.rollback import RevertChanges
from tests.awshelp import ACCOUNT, context, converge, plan


def _doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


FILLER = _doc(*[{"Sid": f"ReadBucket{i}", "Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                 "Resource": [f"arn:aws:s3:::telemetry-archive-{i:02d}", f"arn:aws:s3:::telemetry-archive-{i:02d}/*"]}
                for i in range(14)])


def test_admin_grant_forms() -> None:
    allow = {"Effect": "Allow", "Resource": "*"}
    assert grants_everything(_doc({**allow, "Action": "*"}))
    assert grants_everything(_doc({**allow, "Action": ["s3:GetObject", "IAM:*"]}))
    assert grants_everything(_doc({**allow, "NotAction": ["iam:DeleteAccountPasswordPolicy"]}))
    assert grants_everything(_doc({"Effect": "Allow", "Action": "*", "NotResource": "arn:aws:s3:::x"}))
    assert not grants_everything(_doc({**allow, "Action": ["s3:*"]}))
    assert not grants_everything(_doc({"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::logs/*"}))
    assert not grants_everything(_doc({**allow, "Action": "*", "Condition": {"Bool": {"aws:SecureTransport": "true"}}}))
    assert not grants_everything(_doc({"Effect": "Deny", "Action": "*", "Resource": "*"}))


def test_full_inline_quota_gets_the_managed_policy_and_groups_are_quarantined(aws: boto3.Session) -> None:
    iam = aws.client("iam")
    for user in ("sync-agent", "report-bot"):
        iam.create_user(UserName=user)
    iam.put_user_policy(UserName="sync-agent", PolicyName="archive-read", PolicyDocument=FILLER)
    iam.create_group(GroupName="night-shift")
    ctx = context(aws)
    params = {"users": [{"name": "sync-agent"}, {"name": "report-bot"}], "groups": [{"name": "night-shift"}]}

    done = converge(QuarantinePrincipals(), ctx, params)
    ops = [(c.operation, c.target.rsplit("/", 1)[-1]) for c in done.changes]
    assert ops[0] == ("iam:CreatePolicy", MANAGED_QUARANTINE)  # created before it is attached
    assert sorted(ops[1:]) == [("iam:AttachUserPolicy", "sync-agent"), ("iam:PutGroupPolicy", "night-shift"),
                               ("iam:PutUserPolicy", "report-bot")]
    managed = f"arn:aws:iam::{ACCOUNT}:policy/{MANAGED_QUARANTINE}"
    assert [p["PolicyArn"] for p in iam.list_attached_user_policies(UserName="sync-agent")["AttachedPolicies"]] == \
        [managed]
    assert iam.list_user_policies(UserName="sync-agent")["PolicyNames"] == ["archive-read"]  # its own policy kept
    assert iam.list_group_policies(GroupName="night-shift")["PolicyNames"] == [QUARANTINE_POLICY]
    version = iam.get_policy(PolicyArn=managed)["Policy"]["DefaultVersionId"]
    body = iam.get_policy_version(PolicyArn=managed, VersionId=version)["PolicyVersion"]["Document"]
    assert body["Statement"][0] == {"Sid": "StanchQuarantineDenyAll", "Effect": "Deny", "Action": "*", "Resource": "*"}

    # a second quota-full principal reuses the policy: created once per account
    iam.create_user(UserName="cron-runner")
    iam.put_user_policy(UserName="cron-runner", PolicyName="archive-read", PolicyDocument=FILLER)
    again = plan(QuarantinePrincipals(), ctx, {"users": [{"name": "cron-runner"}]})
    assert [c.operation for c in again.changes] == ["iam:AttachUserPolicy"]

    converge(RevertChanges(), ctx, {"run_id": "r-test", "changes": [c.to_json() for c in done.changes]})
    assert iam.list_attached_user_policies(UserName="sync-agent")["AttachedPolicies"] == []
    assert iam.list_group_policies(GroupName="night-shift")["PolicyNames"] == []
    assert iam.list_user_policies(UserName="report-bot")["PolicyNames"] == []


def test_inline_admin_grants_removed_kept_and_restored(aws: boto3.Session) -> None:
    iam = aws.client("iam")
    iam.create_user(UserName="sync-agent")
    iam.create_group(GroupName="night-shift")
    iam.create_role(RoleName="batch-exec", AssumeRolePolicyDocument=_doc(
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}))
    everything = _doc({"Effect": "Allow", "Action": "*", "Resource": "*"})
    iam_star = _doc({"Effect": "Allow", "Action": "iam:*", "Resource": "*"})
    not_action = _doc({"Effect": "Allow", "NotAction": ["organizations:*"], "Resource": "*"})
    scoped = _doc({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::exports/*"})
    iam.put_user_policy(UserName="sync-agent", PolicyName="ops", PolicyDocument=everything)
    iam.put_user_policy(UserName="sync-agent", PolicyName="exports-read", PolicyDocument=scoped)
    iam.put_group_policy(GroupName="night-shift", PolicyName="helpdesk", PolicyDocument=iam_star)
    iam.put_role_policy(RoleName="batch-exec", PolicyName="runtime", PolicyDocument=not_action)
    ctx = context(aws)
    params = {"users": [{"name": "sync-agent"}], "groups": [{"name": "night-shift"}], "roles": [{"name": "batch-exec"}]}

    done = converge(DetachAdminPolicies(), ctx, params)
    removed = {(c.operation, c.params["PolicyName"]) for c in done.changes}
    assert removed == {("iam:DeleteUserPolicy", "ops"), ("iam:DeleteGroupPolicy", "helpdesk"),
                       ("iam:DeleteRolePolicy", "runtime")}
    kept = {c.params["PolicyName"]: c.previous["PolicyDocument"] for c in done.changes}
    assert kept["ops"] == json.loads(everything)  # the grant is recorded (evidence, and for rollback)
    assert iam.list_user_policies(UserName="sync-agent")["PolicyNames"] == ["exports-read"]

    converge(RevertChanges(), ctx, {"run_id": "r-test", "changes": [c.to_json() for c in done.changes]})
    assert sorted(iam.list_user_policies(UserName="sync-agent")["PolicyNames"]) == ["exports-read", "ops"]
    assert iam.get_group_policy(GroupName="night-shift", PolicyName="helpdesk")["PolicyDocument"] == json.loads(iam_star)
    assert iam.list_role_policies(RoleName="batch-exec")["PolicyNames"] == ["runtime"]
