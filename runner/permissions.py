"""The IAM policies a deployment needs, generated from what the playbooks' actions declare.

Every action declares its permissions, and where each is used when not by the incident account's
identity (`Action.permission_paths`). A security-account deployment splits them three ways:

- **member**: the responder role in every member account (`[accounts] role_name`): discovery,
  containment, the run's identity check and region list, and its own readiness check;
- **security**: the runner's role in the security account: assume the member roles and the
  Organizations role, write the evidence bucket (write-once), check its own policy;
- **organizations**: the Organizations role of `[root]` (SCPs, sts:AssumeRoot with the one task
  policy that deletes root credentials).

What runs under sts:AssumeRoot is granted by its task policy, so it is in no role's policy.
Resources are scoped and conditions set where IAM allows; the rest is `*` because the targets are
the attacker's, unknown until the incident. `deploy/*.yaml` embed these documents; a test fails
when they drift. The same statements feed `stanch drill --live`, which simulates them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from actions.base import Action
from actions.registry import Registry
from runner.aws import ROOT_TASK_DELETE_CREDENTIALS, is_read_operation
from runner.config import Config
from runner.playbook import Playbook

Audience = Literal["member", "security"]

#: what the engine itself calls in the incident's account: its identity check and the region list
ENGINE_PERMISSIONS = ("sts:GetCallerIdentity", "account:ListRegions", "ec2:DescribeRegions")
#: conditions IAM can enforce on a declared permission, wherever it is granted
CONDITIONS: dict[str, dict[str, dict[str, str]]] = {
    # the only role stanch passes is an EventBridge Scheduler schedule's own, when it re-saves the schedule
    "iam:PassRole": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}},
    # root sessions only with the task policy that deletes root credentials
    "sts:AssumeRoot": {"StringEquals": {"sts:TaskPolicyArn": ROOT_TASK_DELETE_CREDENTIALS.replace(
        "arn:aws:", "arn:${AWS::Partition}:")}},
    # the Organizations path creates, attaches and detaches service control policies, nothing else
    **{f"organizations:{op}": {"StringEquals": {"organizations:PolicyType": "SERVICE_CONTROL_POLICY"}}
       for op in ("CreatePolicy", "AttachPolicy", "DetachPolicy")},
}
#: the member role's own ARN (template parameter ResponderRoleName)
MEMBER_SELF = "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${ResponderRoleName}"
#: every member account's responder role, as the security account's runner assumes it
MEMBER_ROLES = "arn:${AWS::Partition}:iam::*:role/${MemberRoleName}"
EVIDENCE_OBJECTS = "arn:${AWS::Partition}:s3:::${EvidenceBucket}/*"
#: the trail files discovery reads ([intake] cloudtrail_s3_uri; member template parameter TrailBucket)
TRAIL_BUCKET = "arn:${AWS::Partition}:s3:::${TrailBucket}"
TRAIL_READS = ("s3:GetObject", "s3:ListBucket")
RUNNER_SELF = "${WorkerRole.Arn}"
#: the policy a template condition switches on (the Organizations role is optional)
ORG_CONDITION = "HasOrganizationsRole"


@dataclass(frozen=True)
class Statement:
    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...] = ("*",)
    condition: dict[str, dict[str, str]] = field(default_factory=dict)
    effect: Literal["Allow", "Deny"] = "Allow"

    def document(self, sub: bool) -> dict[str, Any]:
        res: list[Any] = [({"Fn::Sub": r} if sub and "${" in r else r) for r in self.resources]
        cond = self.condition
        if sub and "${" in str(cond):
            cond = {op: {k: {"Fn::Sub": v} for k, v in kv.items()} for op, kv in cond.items()}  # type: ignore[misc]
        doc: dict[str, Any] = {"Sid": self.sid, "Effect": self.effect, "Action": list(self.actions),
                               "Resource": res[0] if len(res) == 1 else res}
        if cond:
            doc["Condition"] = cond
        return doc


@dataclass(frozen=True)
class Policy:
    """One managed policy: its template logical id, who holds it, its statements."""

    logical_id: str
    description: str
    statements: tuple[Statement, ...]
    #: the template resource(s) it is attached to (Ref)
    roles: tuple[str, ...]
    #: the template condition it exists under, if any
    condition: str | None = None

    def document(self, sub: bool) -> dict[str, Any]:
        return {"Version": "2012-10-17", "Statement": [s.document(sub) for s in self.statements]}

    def cloudformation(self) -> dict[str, Any]:
        res: dict[str, Any] = {"Type": "AWS::IAM::ManagedPolicy"}
        if self.condition:
            res["Condition"] = self.condition
        res["Properties"] = {"Description": self.description, "Roles": [{"Ref": r} for r in self.roles],
                             "PolicyDocument": self.document(sub=True)}
        return res


def declared(playbooks: Iterable[Playbook], registry: Registry, extra: Iterable[str] = ()) -> dict[str, set[str]]:
    """The permissions of every action the playbooks (and `extra` action names) use, by path:
    "member" (the incident account's identity), "runner", "org" and "root-task"."""
    names = [*(s.action for pb in playbooks for s in pb.steps), *extra]
    found: dict[str, set[str]] = {"member": set(ENGINE_PERMISSIONS), "runner": set(), "org": set(), "root-task": set()}
    for name in names:
        cls: type[Action[Any]] | None = registry.get(name)
        if cls is None:
            continue
        for perm in cls.permissions:
            found[cls.permission_paths.get(perm, "member")].add(perm)
    return found


def _split(perms: Iterable[str], prefix: str) -> list[Statement]:
    """Reads, writes, and one statement per conditioned permission."""
    plain = sorted(p for p in perms if p not in CONDITIONS)
    reads = tuple(p for p in plain if is_read_operation(p.split(":", 1)[1]) and p != "sts:AssumeRole")
    writes = tuple(p for p in plain if p not in reads)
    out = []
    if reads:
        out.append(Statement(f"{prefix}Read", reads))
    if writes:
        out.append(Statement(f"{prefix}Contain", writes))
    by_condition: dict[str, list[str]] = {}
    for perm in sorted(p for p in perms if p in CONDITIONS):
        by_condition.setdefault(repr(CONDITIONS[perm]), []).append(perm)
    for group in by_condition.values():  # one statement per condition, named after its first operation
        out.append(Statement(prefix + group[0].split(":", 1)[1], tuple(group), condition=CONDITIONS[group[0]]))
    return out


def member_policies(found: dict[str, set[str]]) -> list[Policy]:
    """The responder role's policy in every member account (deploy/member-role.yaml)."""
    member = found["member"]
    iam_writes = tuple(sorted(p for p in member if p.startswith("iam:") and not is_read_operation(p.split(":")[1])
                              and p != "iam:PassRole"))
    trail = tuple(p for p in TRAIL_READS if p in member)
    statements = [
        *_split(member - set(trail), "Responder"),
        # the only objects the member role reads are the organization trail's files
        *([Statement("ReadTrailFiles", trail, (TRAIL_BUCKET, f"{TRAIL_BUCKET}/*"))] if trail else []),
        # `stanch drill --live` checks this role's own permissions
        Statement("CheckOwnPermissions", ("iam:SimulatePrincipalPolicy",), (MEMBER_SELF,)),
        # the runner's own identity is never touched: IAM enforces it as well as the engine
        Statement("NeverChangeItself", iam_writes, (MEMBER_SELF,), effect="Deny"),
    ]
    return [Policy("ResponderPolicy", "stanch responder: discovery and containment in this account (generated: "
                   "stanch playbook permissions --for member)", tuple(statements), ("ResponderRole",))]


def security_policies(found: dict[str, set[str]]) -> list[Policy]:
    """The security account's runner policy (deploy/security-account.yaml), and the Organizations role's
    (deploy/organizations-role.yaml, in the management or delegated administrator account)."""
    runner = [Statement("AssumeMemberResponderRoles", ("sts:AssumeRole",), (MEMBER_ROLES,)),
              Statement("CheckOwnPermissions", ("iam:SimulatePrincipalPolicy",), (RUNNER_SELF,))]
    if found["runner"]:
        runner.append(Statement("EvidenceWriteOnce", tuple(sorted(found["runner"])), (EVIDENCE_OBJECTS,)))
    policies = [Policy("RunnerPlaybookPolicy", "stanch runner: reach member accounts, write evidence (generated: "
                       "stanch playbook permissions --for security)", tuple(runner), ("WorkerRole",))]
    org = found["org"] - {"sts:AssumeRole"}
    if found["org"]:
        policies.append(Policy(
            "RunnerOrganizationsAccessPolicy", "stanch runner: assume the Organizations role of [root] (generated)",
            (Statement("AssumeOrganizationsRole", ("sts:AssumeRole",), ("${OrganizationsRoleArn}",)),),
            ("WorkerRole",), ORG_CONDITION))
    if org:
        policies.append(Policy(
            "OrganizationsPolicy", "stanch Organizations path: SCPs on a member account and sts:AssumeRoot to delete "
            "its root credentials (generated)", tuple(_split(org, "Organizations")), ("OrganizationsRole",)))
    return policies


def policies(audience: Audience, found: dict[str, set[str]]) -> list[Policy]:
    return member_policies(found) if audience == "member" else security_policies(found)


_VAR = re.compile(r"\$\{([A-Za-z0-9:.]+)\}")


def render_json(pols: list[Policy], config: Config, account: str = "*") -> dict[str, Any]:
    """Plain IAM policy documents with the template's parameters filled from `config`; a statement whose
    resource needs a value the config does not set (no evidence bucket, no Organizations role) is left
    out, since nothing would use it. The runner's own role ARN is '*' scoped to this account."""
    role = config.accounts.role_name or "StanchResponder"
    values = {"AWS::Partition": "aws", "AWS::AccountId": account, "ResponderRoleName": role, "MemberRoleName": role,
              "EvidenceBucket": config.evidence.s3_bucket,
              "TrailBucket": config.intake.cloudtrail_s3_uri.removeprefix("s3://").partition("/")[0],
              "OrganizationsRoleArn": config.root.organizations_role_arn,
              "WorkerRole.Arn": f"arn:aws:iam::{account}:role/*"}
    out: dict[str, Any] = {}
    for pol in pols:
        statements = []
        for st in pol.statements:
            text = repr((st.resources, st.condition))
            if any(not values.get(v) for v in _VAR.findall(text)):
                continue
            doc = st.document(sub=False)
            statements.append(_fill(doc, values))
        if statements:
            out[pol.logical_id] = {"Version": "2012-10-17", "Statement": statements}
    return out


def _fill(doc: Any, values: dict[str, str]) -> Any:
    if isinstance(doc, str):
        return _VAR.sub(lambda m: values[m.group(1)], doc)
    if isinstance(doc, list):
        return [_fill(d, values) for d in doc]
    if isinstance(doc, dict):
        return {k: _fill(v, values) for k, v in doc.items()}
    return doc


def render_cloudformation(pols: list[Policy]) -> dict[str, Any]:
    """`Resources` entries (AWS::IAM::ManagedPolicy, long-form intrinsics) as the templates hold them."""
    return {p.logical_id: p.cloudformation() for p in pols}
