"""IAM containment actions. Each is reversible and records the value it replaces."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import AccessKeyRef, GroupRef, RoleRef, UserRef, is_code, iso, paginate, tolerant_call, user_arn
from actions.registry import register

QUARANTINE_POLICY = "stanch-quarantine"


class KeysParams(Params):
    access_keys: list[AccessKeyRef]


@register
class DeactivateAccessKeys(Action[KeysParams]):
    """Set access keys Inactive (never deleted in containment; reactivate to roll back)."""

    name = "iam.deactivate-access-keys"
    summary = "Deactivate access keys (reversible: previous status recorded)"
    params_model = KeysParams
    permissions = ("iam:ListAccessKeys", "iam:UpdateAccessKey")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: KeysParams) -> Plan:
        iam = ctx.aws.client("iam")
        wanted: dict[str, set[str]] = {}
        for k in params.access_keys:
            wanted.setdefault(k.user, set()).add(k.id)

        def read(user: str) -> list[Change]:
            try:
                metas = list(paginate(iam, "list_access_keys", "AccessKeyMetadata", UserName=user))
            except ClientError as exc:
                if is_code(exc, "NoSuchEntity"):
                    return []  # the user is gone, and its keys with it
                raise
            return [
                Change("iam:UpdateAccessKey", user_arn(ctx.incident.account_id, user),
                       {"UserName": user, "AccessKeyId": m["AccessKeyId"], "Status": "Inactive"},
                       previous={"Status": m["Status"]}, reason=f"access key {m['AccessKeyId']} of {user}")
                for m in metas if m["AccessKeyId"] in wanted[user] and m["Status"] == "Active"
            ]

        return Plan(changes=[c for changes in ctx.fanout(read, sorted(wanted)) for c in changes])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("iam").update_access_key, change.params, "NoSuchEntity")

    def narrow(self, params: KeysParams, changes: Sequence[Change]) -> KeysParams:
        changed = {c.params.get("AccessKeyId") for c in changes}
        return params.model_copy(update={"access_keys": [k for k in params.access_keys if k.id in changed]})


class UsersParams(Params):
    users: list[UserRef]


class _PerUser(Action[UsersParams]):
    """An action over a list of users: verification reads only the users it changed."""

    def narrow(self, params: UsersParams, changes: Sequence[Change]) -> UsersParams:
        changed = {c.params.get("UserName") for c in changes}
        return params.model_copy(update={"users": [u for u in params.users if u.name in changed]})


@register
class DeleteLoginProfiles(_PerUser):
    """Delete console passwords. Recorded as existing; roll back by creating a new login profile."""

    name = "iam.delete-login-profiles"
    summary = "Delete console login profiles of users (records that one existed)"
    params_model = UsersParams
    permissions = ("iam:GetLoginProfile", "iam:DeleteLoginProfile")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: UsersParams) -> Plan:
        iam = ctx.aws.client("iam")

        def read(user: UserRef) -> Change | None:
            try:
                lp = iam.get_login_profile(UserName=user.name)["LoginProfile"]
            except ClientError as exc:
                if is_code(exc, "NoSuchEntity"):
                    return None
                raise
            return Change("iam:DeleteLoginProfile", user.arn or user_arn(ctx.incident.account_id, user.name),
                          {"UserName": user.name},
                          previous={"LoginProfile": "present", "CreateDate": iso(lp.get("CreateDate")),
                                    "PasswordResetRequired": lp.get("PasswordResetRequired", False)},
                          reason=f"console password of {user.name}")

        return Plan(changes=[c for c in ctx.fanout(read, params.users) if c])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("iam").delete_login_profile, change.params, "NoSuchEntity")


@register
class DeactivateMfaDevices(_PerUser):
    """Deactivate MFA devices the attacker registered: all devices of users created in the incident
    window, and devices enabled inside the window on other in-scope users."""

    name = "iam.deactivate-mfa-devices"
    summary = "Deactivate MFA devices registered by the attacker"
    params_model = UsersParams
    permissions = ("iam:ListMFADevices", "iam:DeactivateMFADevice")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: UsersParams) -> Plan:
        iam = ctx.aws.client("iam")
        start = ctx.incident.window_start_dt

        def read(user: UserRef) -> list[Change]:
            try:
                devices = list(paginate(iam, "list_mfa_devices", "MFADevices", UserName=user.name))
            except ClientError as exc:
                if is_code(exc, "NoSuchEntity"):
                    return []
                raise
            return [
                Change("iam:DeactivateMFADevice", user.arn or user_arn(ctx.incident.account_id, user.name),
                       {"UserName": user.name, "SerialNumber": d["SerialNumber"]},
                       previous={"Enabled": True, "EnableDate": iso(d.get("EnableDate"))},
                       reason=f"MFA device of {user.name}")
                for d in devices
                if user.created_in_window or (start is not None and d.get("EnableDate") and d["EnableDate"] >= start)
            ]

        return Plan(changes=[c for cs in ctx.fanout(read, params.users) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("iam").deactivate_mfa_device, change.params, "NoSuchEntity")


class PrincipalsParams(Params):
    users: list[UserRef] = []
    roles: list[RoleRef] = []
    groups: list[GroupRef] = []


def quarantine_document(issued_before: str) -> dict[str, Any]:
    """Deny everything; the second statement keeps sessions issued before containment dead even
    if the first is later removed to restore limited access."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "StanchQuarantineDenyAll", "Effect": "Deny", "Action": "*", "Resource": "*"},
            {"Sid": "StanchRevokeOlderSessions", "Effect": "Deny", "Action": "*", "Resource": "*",
             "Condition": {"DateLessThan": {"aws:TokenIssueTime": issued_before}}},
        ],
    }


def _is_quarantine(doc: Any) -> bool:
    if isinstance(doc, str):
        doc = json.loads(doc)
    stmts = doc.get("Statement", []) if isinstance(doc, dict) else []
    stmts = stmts if isinstance(stmts, list) else [stmts]
    return any(s.get("Sid") == "StanchQuarantineDenyAll" and s.get("Effect") == "Deny" for s in stmts)


#: IAM's quota on the total size of a principal's inline policies (characters, whitespace excluded)
INLINE_QUOTA = {"user": 2048, "group": 5120, "role": 10240}
#: the customer-managed deny-all policy used where the inline quota is full (created once per account)
MANAGED_QUARANTINE = "stanch-quarantine-deny-all"
_KINDS = {"user": "UserName", "group": "GroupName", "role": "RoleName"}


def _size(doc: Any) -> int:
    text = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
    return sum(1 for ch in text if not ch.isspace())


def _principal_arn(acct: str, kind: str, name: str, arn: str) -> str:
    return arn or f"arn:aws:iam::{acct}:{kind}/{name}"


def _call(iam: Any, verb: str, kind: str) -> Any:
    """`iam.<verb>_<kind>_policy`, e.g. _call(iam, "put", "group") -> iam.put_group_policy."""
    return getattr(iam, f"{verb}_{kind}_policy")


@register
class QuarantinePrincipals(Action[PrincipalsParams]):
    """Deny everything to in-scope users, roles and groups: an inline deny-all policy (with an
    aws:TokenIssueTime condition), or, where the principal's inline-policy quota is full, the
    customer-managed policy stanch-quarantine-deny-all (created once per account, recorded)."""

    name = "iam.quarantine-principals"
    summary = "Attach a deny-all policy (inline, or managed when the inline quota is full) that kills old sessions"
    params_model = PrincipalsParams
    permissions = ("iam:GetUserPolicy", "iam:PutUserPolicy", "iam:GetRolePolicy", "iam:PutRolePolicy",
                   "iam:GetGroupPolicy", "iam:PutGroupPolicy", "iam:ListUserPolicies", "iam:ListRolePolicies",
                   "iam:ListGroupPolicies", "iam:ListAttachedUserPolicies", "iam:ListAttachedRolePolicies",
                   "iam:ListAttachedGroupPolicies", "iam:GetPolicy", "iam:CreatePolicy", "iam:AttachUserPolicy",
                   "iam:AttachRolePolicy", "iam:AttachGroupPolicy")
    risk = "reversible"
    ordered = True  # the managed policy is created before it is attached

    def plan(self, ctx: ActionContext, params: PrincipalsParams) -> Plan:
        iam = ctx.aws.client("iam")
        cutoff = ctx.started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = json.dumps(quarantine_document(cutoff))
        acct = ctx.incident.account_id
        managed_arn = f"arn:aws:iam::{acct}:policy/{MANAGED_QUARANTINE}"
        items = [("user", u.name, _principal_arn(acct, "user", u.name, u.arn)) for u in params.users]
        items += [("role", r.name, _principal_arn(acct, "role", r.name, r.arn)) for r in params.roles]
        items += [("group", g.name, _principal_arn(acct, "group", g.name, g.arn)) for g in params.groups]

        def read(item: tuple[str, str, str]) -> Change | None:
            kind, name, arn = item
            key = _KINDS[kind]
            try:
                names = list(paginate(iam, f"list_{kind}_policies", "PolicyNames", **{key: name}))
                docs = {n: _call(iam, "get", kind)(**{key: name, "PolicyName": n})["PolicyDocument"] for n in names}
                attached = [p["PolicyArn"] for p in paginate(iam, f"list_attached_{kind}_policies",
                                                             "AttachedPolicies", **{key: name})]
            except ClientError as exc:
                if is_code(exc, "NoSuchEntity"):
                    return None  # the principal is gone: nothing to quarantine
                raise
            current = docs.get(QUARANTINE_POLICY)
            if (current is not None and _is_quarantine(current)) or managed_arn in attached:
                return None
            used = sum(_size(d) for n, d in docs.items() if n != QUARANTINE_POLICY)
            why = f"deny all actions by {kind} {name}, including sessions issued before {cutoff}"
            if used + _size(doc) > INLINE_QUOTA[kind]:
                return Change(f"iam:Attach{kind.capitalize()}Policy", arn, {key: name, "PolicyArn": managed_arn},
                              previous={"Attached": None},
                              reason=f"{why} (its inline policies use {used} of {INLINE_QUOTA[kind]} characters: "
                                     f"the managed {MANAGED_QUARANTINE} is attached instead)")
            return Change(f"iam:Put{kind.capitalize()}Policy", arn,
                          {key: name, "PolicyName": QUARANTINE_POLICY, "PolicyDocument": doc},
                          previous={"PolicyDocument": current}, reason=why)

        changes = [c for c in ctx.fanout(read, items) if c]
        if any(c.operation.startswith("iam:Attach") for c in changes) and not _policy_exists(iam, managed_arn):
            changes.insert(0, Change("iam:CreatePolicy", managed_arn, {
                "PolicyName": MANAGED_QUARANTINE, "PolicyDocument": doc,
                "Description": "stanch: deny everything (quarantine where the inline-policy quota is full)"},
                previous={"Policy": None}, reason="managed deny-all policy, created once per account"))
        return Plan(changes=changes)

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        iam = ctx.aws.client("iam")
        if change.operation == "iam:CreatePolicy":
            return tolerant_call(iam.create_policy, change.params, "EntityAlreadyExists")
        kind = next(k for k in _KINDS if change.operation.endswith(f"{k.capitalize()}Policy"))
        verb = "put" if change.operation.startswith("iam:Put") else "attach"
        return tolerant_call(_call(iam, verb, kind), change.params, "NoSuchEntity")  # a deleted principal needs none


def _policy_exists(iam: Any, arn: str) -> bool:
    try:
        iam.get_policy(PolicyArn=arn)
    except ClientError as exc:
        if is_code(exc, "NoSuchEntity"):
            return False
        raise
    return True


@register
class RemoveFromGroups(_PerUser):
    """Remove users from every group they belong to (group names recorded for rollback)."""

    name = "iam.remove-from-groups"
    summary = "Remove users from their IAM groups (memberships recorded)"
    params_model = UsersParams
    permissions = ("iam:ListGroupsForUser", "iam:RemoveUserFromGroup")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: UsersParams) -> Plan:
        iam = ctx.aws.client("iam")

        def read(user: UserRef) -> list[Change]:
            try:
                groups = list(paginate(iam, "list_groups_for_user", "Groups", UserName=user.name))
            except ClientError as exc:
                if is_code(exc, "NoSuchEntity"):
                    return []
                raise
            return [Change("iam:RemoveUserFromGroup", user.arn or user_arn(ctx.incident.account_id, user.name),
                           {"GroupName": g["GroupName"], "UserName": user.name},
                           previous={"MemberOf": g["GroupName"]}, reason=f"{user.name} in group {g['GroupName']}")
                    for g in groups]

        return Plan(changes=[c for cs in ctx.fanout(read, params.users) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("iam").remove_user_from_group, change.params, "NoSuchEntity")


class AdminParams(Params):
    users: list[UserRef] = []
    groups: list[GroupRef] = []
    roles: list[RoleRef] = []


def grants_everything(doc: Any) -> bool:
    """True when a policy document is an admin grant: an unconditional Allow on Resource * of Action `*`
    or `iam:*` (which lets its holder grant itself anything), or any NotAction Allow (all but a few)."""
    if isinstance(doc, str):
        doc = json.loads(doc)
    stmts = doc.get("Statement", []) if isinstance(doc, dict) else []
    for s in stmts if isinstance(stmts, list) else [stmts]:
        if not isinstance(s, dict) or s.get("Effect") != "Allow" or "Condition" in s:
            continue
        resources = s.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        if "*" not in resources and "NotResource" not in s:  # NotResource: everything but a few
            continue
        if "NotAction" in s:
            return True
        actions = s.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if any(str(a).lower() in ("*", "iam:*") for a in actions):
            return True
    return False


@register
class DetachAdminPolicies(Action[AdminParams]):
    """Detach AdministratorAccess (and any managed policy granting * on *) from in-scope principals."""

    name = "iam.detach-admin-policies"
    summary = "Detach AdministratorAccess and any policy granting * on * from in-scope principals"
    params_model = AdminParams
    permissions = ("iam:ListAttachedUserPolicies", "iam:ListAttachedGroupPolicies",
                   "iam:ListAttachedRolePolicies", "iam:GetPolicy", "iam:GetPolicyVersion",
                   "iam:DetachUserPolicy", "iam:DetachGroupPolicy", "iam:DetachRolePolicy",
                   "iam:ListUserPolicies", "iam:ListGroupPolicies", "iam:ListRolePolicies", "iam:GetUserPolicy",
                   "iam:GetGroupPolicy", "iam:GetRolePolicy", "iam:DeleteUserPolicy", "iam:DeleteGroupPolicy",
                   "iam:DeleteRolePolicy")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: AdminParams) -> Plan:
        iam = ctx.aws.client("iam")
        admin = {*ctx.config.discovery.admin_policy_arns, *ctx.incident.indicators.policy_arns}
        verdicts: dict[str, bool] = {}

        def is_admin(arn: str) -> bool:
            if arn in admin:
                return True
            if arn.startswith("arn:aws:iam::aws:"):
                return False  # other AWS-managed policies are scoped
            if arn not in verdicts:
                version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
                doc = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
                verdicts[arn] = grants_everything(doc)
            return verdicts[arn]

        kinds = {"user": ("list_attached_user_policies", "UserName", "iam:DetachUserPolicy"),
                 "group": ("list_attached_group_policies", "GroupName", "iam:DetachGroupPolicy"),
                 "role": ("list_attached_role_policies", "RoleName", "iam:DetachRolePolicy")}
        acct = ctx.incident.account_id
        items = [("user", u.name, u.arn or user_arn(acct, u.name)) for u in params.users]
        items += [("group", g.name, g.arn or f"arn:aws:iam::{acct}:group/{g.name}") for g in params.groups]
        items += [("role", r.name, r.arn or f"arn:aws:iam::{acct}:role/{r.name}") for r in params.roles]

        def read(item: tuple[str, str, str]) -> list[tuple[str, str, str, str]]:
            kind, name, arn = item
            op, key, _ = kinds[kind]
            try:
                return [(kind, name, arn, p["PolicyArn"])
                        for p in paginate(iam, op, "AttachedPolicies", **{key: name})]
            except ClientError as exc:
                if is_code(exc, "NoSuchEntity"):
                    return []
                raise

        changes = []
        for kind, name, arn, policy in [a for attached in ctx.fanout(read, items) for a in attached]:
            if is_admin(policy):
                _, key, op = kinds[kind]
                changes.append(Change(op, arn, {key: name, "PolicyArn": policy}, previous={"Attached": policy},
                                      reason=f"{policy.rsplit('/', 1)[-1]} attached to in-scope {kind} {name}"))
        changes += [c for cs in ctx.fanout(lambda item: _inline_admin(iam, *item), items) for c in cs]
        return Plan(changes=changes)

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        iam = ctx.aws.client("iam")
        call = {"iam:DetachUserPolicy": iam.detach_user_policy, "iam:DetachGroupPolicy": iam.detach_group_policy,
                "iam:DetachRolePolicy": iam.detach_role_policy, "iam:DeleteUserPolicy": iam.delete_user_policy,
                "iam:DeleteGroupPolicy": iam.delete_group_policy,
                "iam:DeleteRolePolicy": iam.delete_role_policy}[change.operation]
        return tolerant_call(call, change.params, "NoSuchEntity")


def _inline_admin(iam: Any, kind: str, name: str, arn: str) -> list[Change]:
    """Inline admin grants of an in-scope principal: removed, the document kept in `previous` (evidence,
    and what rollback puts back). stanch's own quarantine policy is a deny and never matches."""
    key = _KINDS[kind]
    try:
        names = list(paginate(iam, f"list_{kind}_policies", "PolicyNames", **{key: name}))
        docs = {n: _call(iam, "get", kind)(**{key: name, "PolicyName": n})["PolicyDocument"] for n in names}
    except ClientError as exc:
        if is_code(exc, "NoSuchEntity"):
            return []
        raise
    return [Change(f"iam:Delete{kind.capitalize()}Policy", arn, {key: name, "PolicyName": n},
                   previous={"PolicyDocument": doc},
                   reason=f"inline policy {n} of in-scope {kind} {name} grants administrator rights")
            for n, doc in docs.items() if n != QUARANTINE_POLICY and grants_everything(doc)]


class RootParams(Params):
    access_key_id: str | None = None


def deny_root_scp() -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "StanchDenyRootPrincipal", "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"StringLike": {"aws:PrincipalArn": "arn:aws:iam::*:root"}}}]})


def _root_manual(acct: str, key: str, why: str = "") -> str:
    """Everything a person must do when root credentials cannot be revoked by the runner."""
    return "\n".join([
        f"DO THIS FIRST: the root credentials of account {acct} are compromised and still live{why}. While they "
        "are, the attacker can undo every other containment step. Root access key {key} and every other root "
        "artefact must be revoked by a person, now:".replace("{key}", key),
        f"  1. Sign in to the AWS console as the root user of account {acct} (not an IAM user). If the password or "
        "the account e-mail no longer works, the attacker changed it: use 'Forgot password' and contact AWS "
        "Support at once.",
        f"  2. Account menu > Security credentials > Access keys: delete key {key} and every other root access "
        "key (the root user should have none).",
        "  3. Same page, X.509 signing certificates: delete every root signing certificate.",
        "  4. Same page, MFA: remove every MFA device you do not recognise, then register your own.",
        "  5. Change the root password.",
        "  6. Account settings: check the account e-mail address and the alternate contacts (billing, operations, "
        "security) and restore anything the attacker changed.",
        "  7. Root session tokens already issued stay valid until they expire: no API revokes them. Keep the other "
        "containment in place and check again afterwards with `stanch verify RUN_ID`.",
        "  8. Then run this incident again: the step verifies that AccountAccessKeysPresent is 0.",
    ])


def _find_scp(orgs: Any, name: str) -> str | None:
    for pol in paginate(orgs, "list_policies", "Policies", Filter="SERVICE_CONTROL_POLICY"):
        if pol["Name"] == name:
            return str(pol["Id"])
    return None


@register
class ContainRootCredentials(Action[RootParams]):
    """Contain root access keys. The account's own IAM API cannot delete them: with an AWS
    Organizations management (or delegated admin) role configured and the account a member, an SCP
    denies the root principal (reversible: detach it); the keys themselves are deleted by the gated
    `iam.delete-root-access-keys`. Otherwise the responder gets the exact manual steps."""

    name = "iam.contain-root-credentials"
    manual_first = True
    summary = "Root keys: SCP denying the root principal (Organizations member) or exact manual steps"
    params_model = RootParams
    permissions = ("iam:GetAccountSummary", "sts:AssumeRole", "organizations:DescribeOrganization",
                   "organizations:DescribeAccount", "organizations:ListPolicies",
                   "organizations:ListPoliciesForTarget", "organizations:CreatePolicy", "organizations:AttachPolicy")
    permission_paths = {p: "org" for p in permissions if p != "iam:GetAccountSummary"}
    risk = "reversible"
    ordered = True

    def plan(self, ctx: ActionContext, params: RootParams) -> Plan:
        summary = ctx.aws.client("iam").get_account_summary()["SummaryMap"]
        if int(summary.get("AccountAccessKeysPresent", 0)) == 0:
            return Plan(notes=["the account reports no root access keys: nothing to revoke"])
        acct = ctx.incident.account_id
        key = params.access_key_id or "(id not in the incident; see the root user's security credentials)"
        role = ctx.config.root.organizations_role_arn
        if not role:
            return Plan(manual=[_root_manual(acct, key)], notes=["no Organizations role configured ([root])"])
        orgs = ctx.aws.assume_role(role).client("organizations")
        org = orgs.describe_organization()["Organization"]
        if org["MasterAccountId"] == acct:
            return Plan(manual=[_root_manual(acct, key, " (SCPs do not apply to the management account)")])
        try:
            orgs.describe_account(AccountId=acct)
        except ClientError as exc:
            if is_code(exc, "AccountNotFoundException"):
                return Plan(manual=[_root_manual(acct, key, f" (not a member of organization {org['Id']})")])
            raise
        name = f"stanch-deny-root-{acct}"
        target = f"arn:aws:organizations::{org['MasterAccountId']}:account/{org['Id']}/{acct}"
        existing = _find_scp(orgs, name)
        changes = []
        if existing is None:
            changes.append(Change("organizations:CreatePolicy", target,
                                  {"Name": name, "Type": "SERVICE_CONTROL_POLICY", "Content": deny_root_scp(),
                                   "Description": f"stanch: deny the root principal of {acct} ({ctx.incident.id})"},
                                  previous={"Policy": None}, reason="SCP that denies every action by root"))
        attached = existing is not None and any(
            p["Id"] == existing for p in paginate(orgs, "list_policies_for_target", "Policies", TargetId=acct,
                                                  Filter="SERVICE_CONTROL_POLICY"))
        if not attached:
            changes.append(Change("organizations:AttachPolicy", target, {"PolicyName": name, "TargetId": acct},
                                  previous={"Attached": False}, reason=f"root key {key} was used by the attacker"))
        return Plan(changes=changes, notes=["root access keys present; delete them with iam.delete-root-access-keys"])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        orgs = ctx.aws.assume_role(ctx.config.root.organizations_role_arn).client("organizations")
        if change.operation == "organizations:CreatePolicy":
            try:
                orgs.create_policy(**change.params)
            except ClientError as exc:
                if is_code(exc, "DuplicatePolicyException"):
                    return "already_done"
                raise
            return "applied"
        policy_id = _find_scp(orgs, change.params["PolicyName"])
        try:
            orgs.attach_policy(PolicyId=policy_id, TargetId=change.params["TargetId"])
        except ClientError as exc:
            if is_code(exc, "DuplicatePolicyAttachmentException"):
                return "already_done"
            raise
        return "applied"


#: the feature of IAM's centralized root access that lets sts:AssumeRoot delete root credentials
ROOT_CREDENTIALS_MANAGEMENT = "RootCredentialsManagement"


@register
class DeleteRootAccessKeys(Action[RootParams]):
    """Delete every root credential of a member account through sts:AssumeRoot with the
    IAMDeleteRootUserCredentials task policy: access keys, signing certificates, the console password
    and MFA devices, each its own change. Only after checking that centralized root access
    (RootCredentialsManagement) is enabled for the organization. Irreversible."""

    name = "iam.delete-root-access-keys"
    summary = "Delete root access keys, signing certificates, password and MFA via sts:AssumeRoot (irreversible)"
    params_model = RootParams
    permissions = ("sts:AssumeRole", "sts:AssumeRoot", "iam:ListOrganizationsFeatures",
                   "organizations:DescribeOrganization", "iam:ListAccessKeys", "iam:DeleteAccessKey",
                   "iam:ListSigningCertificates", "iam:DeleteSigningCertificate", "iam:GetLoginProfile",
                   "iam:DeleteLoginProfile", "iam:ListMFADevices", "iam:DeactivateMFADevice")
    permission_paths = {p: "org" if p.startswith(("sts:", "organizations:")) or p == "iam:ListOrganizationsFeatures"
                        else "root-task" for p in permissions}
    risk = "irreversible"
    manual_first = True

    def plan(self, ctx: ActionContext, params: RootParams) -> Plan:
        role = ctx.config.root.organizations_role_arn
        if not role:
            return Plan(notes=["no Organizations role configured: root keys are a manual action"])
        acct = ctx.incident.account_id
        org = ctx.aws.assume_role(role)
        if org.client("organizations").describe_organization()["Organization"]["MasterAccountId"] == acct:
            return Plan(notes=["the management account's root cannot be assumed: root keys are a manual action"])
        try:
            features = org.client("iam").list_organizations_features().get("EnabledFeatures", [])
        except ClientError as exc:
            if not is_code(exc, "OrganizationNotFoundException", "ServiceAccessNotEnabledException",
                           "AccessDenied", "AccessDeniedException"):
                raise
            features = []
        if ROOT_CREDENTIALS_MANAGEMENT not in features:
            key = params.access_key_id or "(see the root user's security credentials)"
            return Plan(manual=[_root_manual(acct, key, " (centralized root access, RootCredentialsManagement, "
                                                        "is not enabled for the organization, so sts:AssumeRoot "
                                                        "cannot delete them)")])
        iam = org.assume_root(acct).client("iam")
        target = f"arn:aws:iam::{acct}:root"
        changes = [
            Change("iam:DeleteAccessKey", target, {"AccessKeyId": k["AccessKeyId"]},
                   previous={"Status": k["Status"], "CreateDate": iso(k.get("CreateDate"))},
                   reason="root access key" + (" used by the attacker" if k["AccessKeyId"] == params.access_key_id
                                               else " (the root user should have none)"))
            for k in paginate(iam, "list_access_keys", "AccessKeyMetadata")]
        changes += [
            Change("iam:DeleteSigningCertificate", target, {"CertificateId": c["CertificateId"]},
                   previous={"Status": c.get("Status"), "UploadDate": iso(c.get("UploadDate"))},
                   reason="root signing certificate (signs requests like an access key)")
            for c in paginate(iam, "list_signing_certificates", "Certificates")]
        try:
            profile = iam.get_login_profile()["LoginProfile"]
            changes.append(Change("iam:DeleteLoginProfile", target, {},
                                  previous={"LoginProfile": "present", "CreateDate": iso(profile.get("CreateDate"))},
                                  reason="root console password (centralized root access: members need none)"))
        except ClientError as exc:
            if not is_code(exc, "NoSuchEntity"):
                raise
        changes += [
            Change("iam:DeactivateMFADevice", target, {"SerialNumber": d["SerialNumber"]},
                   previous={"Enabled": True, "EnableDate": iso(d.get("EnableDate"))},
                   reason="root MFA device (may be the attacker's)")
            for d in paginate(iam, "list_mfa_devices", "MFADevices")]
        return Plan(changes=changes)

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        iam = ctx.aws.assume_role(ctx.config.root.organizations_role_arn).assume_root(ctx.incident.account_id) \
            .client("iam")
        call = {"iam:DeleteAccessKey": iam.delete_access_key, "iam:DeleteSigningCertificate":
                iam.delete_signing_certificate, "iam:DeleteLoginProfile": iam.delete_login_profile,
                "iam:DeactivateMFADevice": iam.deactivate_mfa_device}[change.operation]
        return tolerant_call(call, change.params, "NoSuchEntity")
