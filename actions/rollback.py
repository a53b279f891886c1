"""Rollback: undo a run's containment from the values its changes recorded.

Every containment change records what it replaced; this action plans the inverse of each applied
change that can be inverted, skips what is already back, and lists what cannot be undone by an
API call (a deleted console password, a deactivated MFA device, stopped tasks, deletions)."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import is_code, paginate, tolerant_call
from actions.iam_undo import as_doc
from actions.registry import register
from actions.triage import UndoAction

NOT_REVERSIBLE = {
    "iam:DeleteLoginProfile": "the console password of {UserName} was deleted; if the user is legitimate, create a "
                              "new login profile (with a password reset) for it",
    "iam:DeactivateMFADevice": "MFA device {SerialNumber} of {UserName} was deactivated; its owner must enable it "
                               "again with two codes",
    "ecs:StopTask": None,  # the service starts new tasks once its desired count is restored
    "organizations:CreatePolicy": None,  # detaching the SCP restores access; the policy itself is harmless
    "s3:PutObject": None,  # evidence stays
}


# ------------------------------------------------------------------ attacker-persistence undo actions
#: what rollback needs to put back what the undo actions (actions/triage.py UndoAction) removed
UNDO_PERMISSIONS = (
    "lambda:GetPolicy", "lambda:AddPermission", "lambda:GetFunctionConcurrency", "lambda:PutFunctionConcurrency",
    "lambda:DeleteFunctionConcurrency", "lambda:GetAlias", "lambda:UpdateAlias", "ec2:DescribeSecurityGroups",
    "ec2:AuthorizeSecurityGroupIngress", "ec2:DescribeImages", "ec2:DescribeImageAttribute", "ec2:ModifyImageAttribute",
    "ec2:DescribeSnapshotAttribute", "ec2:ModifySnapshotAttribute", "rds:DescribeDBSnapshotAttributes",
    "rds:ModifyDBSnapshotAttribute", "rds:DescribeDBClusterSnapshotAttributes", "rds:ModifyDBClusterSnapshotAttribute",
    "s3:GetBucketPolicy", "s3:PutBucketPolicy", "cloudtrail:GetTrailStatus", "cloudtrail:StopLogging",
    "cloudtrail:GetEventSelectors", "cloudtrail:PutEventSelectors", "guardduty:GetDetector",
    "guardduty:UpdateDetector", "config:DescribeConfigurationRecorderStatus", "config:StopConfigurationRecorder",
)


def undo_actions(*, forward: bool) -> dict[str, UndoAction]:
    """Operation -> the undo action that owns it: the operations it applies (`forward`), or the
    operations that roll them back (applied and checked by the same action)."""
    from actions.registry import builtin_registry

    out: dict[str, UndoAction] = {}
    for cls in builtin_registry().all():
        if issubclass(cls, UndoAction):
            action = cls()
            for op, inverses in cls.reverts.items():
                for name in [op] if forward else inverses:
                    out[name] = action
    return out


class RevertParams(Params):
    run_id: str
    changes: list[dict[str, Any]]
    #: protected-looking principals the original run was allowed to change (through a gated step)
    protected_lookalikes: list[str] = []


def inverse(c: dict[str, Any]) -> Change | str | None:
    """The change that undoes `c`, a sentence for what only a person can undo, or None."""
    op, p, prev, target = c["operation"], c["params"], c.get("previous") or {}, c["target"]
    undo = undo_actions(forward=True).get(op)
    if undo is not None:
        return undo.inverse(c)
    why = f"undo {op} of run change"
    if op == "iam:UpdateAccessKey":
        return Change(op, target, {**p, "Status": prev.get("Status", "Active")}, previous={"Status": p["Status"]},
                      reason=f"{why}: access key {p['AccessKeyId']} back to {prev.get('Status', 'Active')}")
    if op in ("iam:PutUserPolicy", "iam:PutRolePolicy"):
        key = "UserName" if op == "iam:PutUserPolicy" else "RoleName"
        if prev.get("PolicyDocument") is None:
            return Change(op.replace("Put", "Delete"), target, {key: p[key], "PolicyName": p["PolicyName"]},
                          previous={"PolicyName": p["PolicyName"]}, reason=f"{why}: remove the quarantine policy")
        doc = prev["PolicyDocument"]
        return Change(op, target, {**p, "PolicyDocument": doc if isinstance(doc, str) else json.dumps(doc)},
                      previous={"PolicyDocument": "quarantine"}, reason=f"{why}: restore the earlier inline policy")
    if op in ("iam:DeleteUserPolicy", "iam:DeleteGroupPolicy", "iam:DeleteRolePolicy") and prev.get("PolicyDocument"):
        doc = prev["PolicyDocument"]
        return Change(op.replace("Delete", "Put"), target,
                      {**p, "PolicyDocument": doc if isinstance(doc, str) else json.dumps(doc)},
                      previous={"PolicyDocument": None}, reason=f"{why}: put inline policy {p['PolicyName']} back")
    if op == "iam:UpdateAssumeRolePolicy" and prev.get("PolicyDocument") is not None:
        doc = prev["PolicyDocument"]
        return Change(op, target, {**p, "PolicyDocument": doc if isinstance(doc, str) else json.dumps(doc)},
                      previous={"PolicyDocument": p["PolicyDocument"]},
                      reason=f"{why}: role {p['RoleName']} gets back the trust policy it had")
    if op == "iam:RemoveUserFromGroup":
        return Change("iam:AddUserToGroup", target, dict(p), previous={"MemberOf": None},
                      reason=f"{why}: {p['UserName']} back into {p['GroupName']}")
    if op in ("iam:DetachUserPolicy", "iam:DetachGroupPolicy", "iam:DetachRolePolicy"):
        return Change(op.replace("Detach", "Attach"), target, dict(p), previous={"Attached": None},
                      reason=f"{why}: re-attach {p['PolicyArn']}")
    if op == "ecs:UpdateService" and "desiredCount" in prev:
        return Change(op, target, {**p, "desiredCount": prev["desiredCount"]}, previous={"desiredCount": 0},
                      reason=f"{why}: {p['service']} back to {prev['desiredCount']} task(s)")
    if op == "organizations:AttachPolicy":
        return Change("organizations:DetachPolicy", target, dict(p), previous={"Attached": True},
                      reason=f"{why}: detach SCP {p['PolicyName']}")
    if op in NOT_REVERSIBLE:
        text = NOT_REVERSIBLE[op]
        return text.format(**p) if text else None
    return f"{op} on {target} cannot be undone automatically"


@register
class RevertChanges(Action[RevertParams]):
    name = "rollback.revert"
    summary = "Undo the applied changes of an earlier run, from the values they recorded"
    params_model = RevertParams
    permissions = ("iam:ListAccessKeys", "iam:UpdateAccessKey", "iam:GetUserPolicy", "iam:DeleteUserPolicy",
                   "iam:PutUserPolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy", "iam:PutRolePolicy",
                   "iam:GetGroupPolicy", "iam:PutGroupPolicy",
                   "iam:ListGroupsForUser", "iam:AddUserToGroup", "iam:ListAttachedUserPolicies",
                   "iam:ListAttachedGroupPolicies", "iam:ListAttachedRolePolicies", "iam:AttachUserPolicy",
                   "iam:AttachGroupPolicy", "iam:AttachRolePolicy", "ecs:DescribeServices", "ecs:UpdateService",
                   "sts:AssumeRole", "organizations:ListPolicies", "organizations:ListPoliciesForTarget",
                   "organizations:DetachPolicy", "iam:GetRole", "iam:UpdateAssumeRolePolicy", *UNDO_PERMISSIONS)
    risk = "reversible"
    ordered = True

    def plan(self, ctx: ActionContext, params: RevertParams) -> Plan:
        changes: list[Change] = []
        manual: list[str] = []
        for c in reversed(params.changes):
            inv = inverse(c)
            if isinstance(inv, str):
                manual.append(inv)
            elif inv is not None and not self._already(ctx, inv):
                changes.append(inv)
        return Plan(changes=changes, manual=manual, outputs={"protected_lookalikes": params.protected_lookalikes},
                    notes=[f"reverting {len(params.changes)} change(s) of run {params.run_id}"])

    def _already(self, ctx: ActionContext, c: Change) -> bool:
        """True when live state already matches what the inverse change would set."""
        undo = undo_actions(forward=False).get(c.operation)
        if undo is not None:
            return undo.restored(ctx, c)
        iam = ctx.aws.client("iam")
        p = c.params
        try:
            if c.operation == "iam:UpdateAccessKey":
                keys = paginate(iam, "list_access_keys", "AccessKeyMetadata", UserName=p["UserName"])
                return any(k["AccessKeyId"] == p["AccessKeyId"] and k["Status"] == p["Status"] for k in keys)
            if c.operation in ("iam:DeleteUserPolicy", "iam:DeleteRolePolicy"):
                if c.operation == "iam:DeleteUserPolicy":
                    iam.get_user_policy(UserName=p["UserName"], PolicyName=p["PolicyName"])
                else:
                    iam.get_role_policy(RoleName=p["RoleName"], PolicyName=p["PolicyName"])
                return False
            if c.operation in ("iam:PutUserPolicy", "iam:PutGroupPolicy", "iam:PutRolePolicy"):
                kind = c.operation.removeprefix("iam:Put").removesuffix("Policy")
                key = f"{kind}Name"
                try:
                    current = getattr(iam, f"get_{kind.lower()}_policy")(**{key: p[key],
                                                                            "PolicyName": p["PolicyName"]})
                except ClientError as exc:
                    if is_code(exc, "NoSuchEntity"):
                        return False  # not there yet: put it back (a deleted principal fails the put, tolerated)
                    raise
                wanted = p["PolicyDocument"]
                doc = current["PolicyDocument"]
                return bool((json.loads(doc) if isinstance(doc, str) else doc) ==
                            (json.loads(wanted) if isinstance(wanted, str) else wanted))
            if c.operation == "iam:UpdateAssumeRolePolicy":
                current = iam.get_role(RoleName=p["RoleName"])["Role"]["AssumeRolePolicyDocument"]
                return bool(as_doc(current) == as_doc(p["PolicyDocument"]))
            if c.operation == "iam:AddUserToGroup":
                groups = paginate(iam, "list_groups_for_user", "Groups", UserName=p["UserName"])
                return any(g["GroupName"] == p["GroupName"] for g in groups)
            if c.operation.startswith("iam:Attach"):
                kind = c.operation.removeprefix("iam:Attach").removesuffix("Policy")
                key = f"{kind}Name"
                attached = paginate(iam, f"list_attached_{kind.lower()}_policies", "AttachedPolicies", **{key: p[key]})
                return any(a["PolicyArn"] == p["PolicyArn"] for a in attached)
            if c.operation == "ecs:UpdateService":
                ecs = ctx.aws.client("ecs", c.target.split(":")[3])
                found = ecs.describe_services(cluster=p["cluster"], services=[p["service"]])["services"]
                return not found or found[0].get("status") != "ACTIVE" or found[0]["desiredCount"] == p["desiredCount"]
            if c.operation == "organizations:DetachPolicy":
                orgs = ctx.aws.assume_role(ctx.config.root.organizations_role_arn).client("organizations")
                pols = paginate(orgs, "list_policies_for_target", "Policies", TargetId=p["TargetId"],
                                Filter="SERVICE_CONTROL_POLICY")
                return not any(x["Name"] == p["PolicyName"] for x in pols)
        except ClientError as exc:
            if is_code(exc, "NoSuchEntity"):
                return True  # the principal or policy is gone: nothing to put back
            raise
        return False

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        op, p = change.operation, change.params
        undo = undo_actions(forward=False).get(op)
        if undo is not None:
            return undo.apply(ctx, change)
        if op.startswith("ecs:"):
            return tolerant_call(ctx.aws.client("ecs", change.target.split(":")[3]).update_service, p,
                                 "ServiceNotFoundException", "ServiceNotActiveException")
        if op == "organizations:DetachPolicy":
            orgs = ctx.aws.assume_role(ctx.config.root.organizations_role_arn).client("organizations")
            ids = [x["Id"] for x in paginate(orgs, "list_policies", "Policies", Filter="SERVICE_CONTROL_POLICY")
                   if x["Name"] == p["PolicyName"]]
            if not ids:
                return "already_done"
            return tolerant_call(orgs.detach_policy, {"PolicyId": ids[0], "TargetId": p["TargetId"]},
                                 "PolicyNotAttachedException")
        iam = ctx.aws.client("iam")
        method = getattr(iam, _snake(op.split(":", 1)[1]))
        return tolerant_call(method, p, "NoSuchEntity")


def _snake(name: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name).lstrip("_")
