"""Undo precisely what the attacker changed on identities it does not own.

When the compromised credentials attach AdministratorAccess to a legitimate user, put an inline
`*` policy on it, add it to an admin group, register an MFA device
for it or assume a role that existed before, containment reverses exactly those changes (each
proven by a CloudTrail event) and leaves the owner's own keys, groups and password alone. Sessions
the attacker obtained are revoked with an `aws:TokenIssueTime` deny on the issuing identity, not a
deny-all.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import (
    AccessKeyRef,
    GroupRef,
    Ref,
    RoleRef,
    UserRef,
    is_code,
    method_for,
    paginate,
    tolerant_call,
)
from actions.registry import register

REVOKE_POLICY = "stanch-revoke-older-sessions"
_KIND = {"user": ("User", "UserName"), "group": ("Group", "GroupName"), "role": ("Role", "RoleName")}


class ReversalRef(Ref):
    op: Literal["detach-policy", "delete-inline-policy", "remove-from-group", "deactivate-mfa", "revoke-sessions",
                "restore-trust-policy", "manual"]
    kind: Literal["user", "group", "role"]
    name: str
    arn: str
    proof: str = ""
    policy_arn: str | None = None
    policy_name: str | None = None
    group: str | None = None
    serial: str | None = None
    instructions: str | None = None
    #: restore-trust-policy: the trust policy before the attacker's change, and the attacker's own
    document: Any = None
    attacker_document: Any = None


class ReversalParams(Params):
    reversals: list[ReversalRef] = []


def revoke_document(issued_before: str) -> dict[str, Any]:
    """Deny only sessions issued before containment (AWSRevokeOlderSessions style): the owner signs
    in again and works; what the attacker obtained is dead."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "StanchRevokeOlderSessions", "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"DateLessThan": {"aws:TokenIssueTime": issued_before}}}]}


@register
class UndoAttackerChanges(Action[ReversalParams]):
    """Reverse each attributed change on an identity the attacker does not own, and only that."""

    name = "iam.undo-attacker-changes"
    summary = "Reverse exactly the attacker's changes to existing identities (policy, inline policy, group, " \
              "MFA, sessions)"
    params_model = ReversalParams
    permissions = ("iam:ListAttachedUserPolicies", "iam:ListAttachedGroupPolicies", "iam:ListAttachedRolePolicies",
                   "iam:DetachUserPolicy", "iam:DetachGroupPolicy", "iam:DetachRolePolicy", "iam:GetUserPolicy",
                   "iam:GetGroupPolicy", "iam:GetRolePolicy", "iam:DeleteUserPolicy", "iam:DeleteGroupPolicy",
                   "iam:DeleteRolePolicy", "iam:PutUserPolicy", "iam:PutRolePolicy", "iam:ListGroupsForUser",
                   "iam:RemoveUserFromGroup", "iam:ListMFADevices", "iam:DeactivateMFADevice", "iam:GetRole",
                   "iam:UpdateAssumeRolePolicy")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: ReversalParams) -> Plan:
        cutoff = ctx.started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        manual = [r.instructions for r in params.reversals if r.op == "manual" and r.instructions]
        todo = [r for r in params.reversals if r.op != "manual"]
        changes = [c for c in ctx.fanout(lambda r: self._one(ctx, r, cutoff), todo) if c is not None]
        unique = list({c.digest: c for c in changes}.values())  # two sessions on one role: one revoke
        return Plan(changes=unique, manual=manual)

    def _one(self, ctx: ActionContext, r: ReversalRef, cutoff: str) -> Change | None:
        iam = ctx.aws.client("iam")
        title, key = _KIND[r.kind]
        why = f"the attacker's change ({r.proof})"
        try:
            if r.op == "detach-policy" and r.policy_arn:
                attached = paginate(iam, f"list_attached_{r.kind}_policies", "AttachedPolicies", **{key: r.name})
                if not any(p["PolicyArn"] == r.policy_arn for p in attached):
                    return None
                return Change(f"iam:Detach{title}Policy", r.arn, {key: r.name, "PolicyArn": r.policy_arn},
                              previous={"Attached": r.policy_arn},
                              reason=f"{r.policy_arn.rsplit('/', 1)[-1]} attached to {r.kind} {r.name} by {why}")
            if r.op == "delete-inline-policy" and r.policy_name:
                doc = getattr(iam, f"get_{r.kind}_policy")(**{key: r.name, "PolicyName": r.policy_name})
                return Change(f"iam:Delete{title}Policy", r.arn, {key: r.name, "PolicyName": r.policy_name},
                              previous={"PolicyDocument": doc["PolicyDocument"]},
                              reason=f"inline policy {r.policy_name} put on {r.kind} {r.name} by {why}; its "
                                     "document is kept as the previous value")
            if r.op == "remove-from-group" and r.group:
                groups = paginate(iam, "list_groups_for_user", "Groups", UserName=r.name)
                if not any(g["GroupName"] == r.group for g in groups):
                    return None
                return Change("iam:RemoveUserFromGroup", r.arn, {"GroupName": r.group, "UserName": r.name},
                              previous={"MemberOf": r.group}, reason=f"{r.name} added to {r.group} by {why}")
            if r.op == "deactivate-mfa" and r.serial:
                devices = paginate(iam, "list_mfa_devices", "MFADevices", UserName=r.name)
                if not any(d["SerialNumber"] == r.serial for d in devices):
                    return None
                return Change("iam:DeactivateMFADevice", r.arn, {"UserName": r.name, "SerialNumber": r.serial},
                              previous={"Enabled": True}, reason=f"MFA device {r.serial} registered by {why}")
            if r.op == "restore-trust-policy" and r.kind == "role" and r.document is not None:
                current = iam.get_role(RoleName=r.name)["Role"]["AssumeRolePolicyDocument"]
                wanted = as_doc(r.document)
                if as_doc(current) == wanted:
                    return None
                if r.attacker_document is not None and as_doc(current) != as_doc(r.attacker_document):
                    return None  # changed again since the attacker: not ours to overwrite (the plan notes it)
                return Change("iam:UpdateAssumeRolePolicy", r.arn,
                              {"RoleName": r.name, "PolicyDocument": json.dumps(wanted)},
                              previous={"PolicyDocument": as_doc(current)},
                              reason=f"trust policy of role {r.name} replaced by {why}: the one before it is restored")
            if r.op == "revoke-sessions" and r.kind in ("user", "role"):
                try:
                    current = getattr(iam, f"get_{r.kind}_policy")(**{key: r.name, "PolicyName": REVOKE_POLICY})
                    existing: Any = current["PolicyDocument"]
                except ClientError as exc:
                    if not is_code(exc, "NoSuchEntity"):
                        raise
                    existing = None
                wanted = revoke_document(cutoff)
                if existing is not None and _revokes_since(existing, ctx.incident.window_start):
                    return None
                return Change(f"iam:Put{title}Policy", r.arn,
                              {key: r.name, "PolicyName": REVOKE_POLICY, "PolicyDocument": json.dumps(wanted)},
                              previous={"PolicyDocument": existing},
                              reason=f"sessions the attacker obtained on {r.kind} {r.name} ({r.proof}) are denied; "
                                     f"sessions issued after {cutoff} work as before")
        except ClientError as exc:
            if is_code(exc, "NoSuchEntity"):
                return None  # the identity, policy or profile is gone: nothing left to undo
            raise
        return None

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        iam = ctx.aws.client("iam")
        method = method_for(iam, change.operation)
        return tolerant_call(method, change.params, "NoSuchEntity")


def as_doc(value: Any) -> Any:
    """A policy document as data (IAM returns it parsed or URL-decoded text, CloudTrail as text)."""
    if isinstance(value, str):
        from urllib.parse import unquote

        try:
            return json.loads(unquote(value) if value.startswith("%7B") else value)
        except ValueError:
            return value
    return value


def _revokes_since(doc: Any, window_start: str | None) -> bool:
    """A revoke policy already in place that covers every session issued up to at least the window."""
    if isinstance(doc, str):
        doc = json.loads(doc)
    for s in doc.get("Statement", []) if isinstance(doc, dict) else []:
        cutoff = s.get("Condition", {}).get("DateLessThan", {}).get("aws:TokenIssueTime")
        if s.get("Sid") == "StanchRevokeOlderSessions" and isinstance(cutoff, str) and \
                (window_start is None or cutoff > window_start):
            return True
    return False



class IdentitiesParams(Params):
    users: list[UserRef] = []
    groups: list[GroupRef] = []
    roles: list[RoleRef] = []
    access_keys: list[AccessKeyRef] = []
    reversals: list[ReversalRef] = []


def _parts() -> list[tuple[Action[Any], Any]]:
    from actions import iam

    return [(iam.DeactivateAccessKeys(), lambda p: iam.KeysParams(access_keys=p.access_keys)),
            (iam.QuarantinePrincipals(), lambda p: iam.PrincipalsParams(users=p.users, roles=p.roles)),
            (iam.DeleteLoginProfiles(), lambda p: iam.UsersParams(users=p.users)),
            (iam.DeactivateMfaDevices(), lambda p: iam.UsersParams(users=p.users)),
            (iam.RemoveFromGroups(), lambda p: iam.UsersParams(users=p.users)),
            (iam.DetachAdminPolicies(), lambda p: iam.AdminParams(users=p.users, groups=p.groups, roles=p.roles)),
            (UndoAttackerChanges(), lambda p: ReversalParams(reversals=p.reversals))]


@register
class ContainIdentities(Action[IdentitiesParams]):
    """All of credential containment for one set of identities, as one step: used for the suspects
    and the escalated identities, which each need their own approval."""

    name = "iam.contain-identities"
    summary = "Deactivate keys, quarantine, delete passwords, deactivate MFA, remove from groups, detach admin " \
              "policies and undo attacker changes, for one set of identities"
    params_model = IdentitiesParams
    permissions = tuple(dict.fromkeys(
        ["iam:ListAccessKeys", "iam:UpdateAccessKey", "iam:GetUserPolicy", "iam:PutUserPolicy", "iam:GetRolePolicy",
         "iam:PutRolePolicy", "iam:GetLoginProfile", "iam:DeleteLoginProfile", "iam:ListMFADevices",
         "iam:DeactivateMFADevice", "iam:ListGroupsForUser", "iam:RemoveUserFromGroup",
         "iam:ListAttachedUserPolicies", "iam:ListAttachedGroupPolicies", "iam:ListAttachedRolePolicies",
         "iam:GetPolicy", "iam:GetPolicyVersion", "iam:DetachUserPolicy", "iam:DetachGroupPolicy",
         "iam:DetachRolePolicy", *UndoAttackerChanges.permissions]))
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: IdentitiesParams) -> Plan:
        plans = [action.plan(ctx, make(params)) for action, make in _parts()]
        changes = list({c.digest: c for p in plans for c in p.changes}.values())
        return Plan(changes=changes, manual=[m for p in plans for m in p.manual],
                    notes=[n for p in plans for n in p.notes])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        iam = ctx.aws.client("iam")
        return tolerant_call(method_for(iam, change.operation), change.params, "NoSuchEntity")
