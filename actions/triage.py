"""What the attacker did, and where each of it ends.

`attacker.triage` walks the CloudTrail events attributed to the attacker and publishes
`attacker_activity`: every write in exactly one of contained / manual / no_action_needed (with
why), and every read of a secret as exposed. Its manual instructions become the run's manual
actions, so a run cannot end `contained` while one remains.

`UndoAction` is the base of the small actions that undo one kind of attacker write (a Lambda
permission, a security-group rule, a snapshot share...). Each one *assesses* the events it handles
against live state; the same assessment gives triage its verdict and the action its plan, so the
two never disagree.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Params, Plan
from actions.common import AccessKeyRef, GroupRef, Ref, RoleRef, UserRef, is_code
from actions.registry import builtin_registry, register
from runner.techniques import Technique, classify, event_key, fill, request, resource_of, response

Outcome = Literal["contained", "manual", "no_action_needed"]


class EventsParams(Params):
    events: list[dict[str, Any]] = []


@dataclass
class Verdict:
    """Where one attacker event ends: its outcome, why, a person's step if any, and the changes."""

    event_id: str
    outcome: Outcome
    why: str
    instruction: str = ""
    changes: list[Change] = field(default_factory=list)


def event_id(event: dict[str, Any]) -> str:
    return str(event.get("eventID") or f"{event.get('eventTime')}:{event.get('eventName')}")


def region_of(event: dict[str, Any], ctx: ActionContext) -> str:
    return str(event.get("awsRegion") or ctx.incident.region)


class UndoAction(Action[EventsParams]):
    """An action that undoes one kind of attacker write, found in the attributed events."""

    params_model = EventsParams
    risk = "reversible"
    #: operation this action applies -> the operations that roll it back (applied by this action too,
    #: but only on behalf of rollback.revert, which declares their permissions: containment never needs them)
    reverts: ClassVar[dict[str, tuple[str, ...]]] = {}

    def mine(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events this action handles (by the catalogue), failed calls left out."""
        out = []
        for e in events:
            category, technique = classify(e)
            if category == "known" and technique is not None and technique.handler == self.name \
                    and not e.get("errorCode") and resource_of(e, technique):
                out.append(e)
        return out

    @abstractmethod
    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        """One verdict per event (reads only): contained with the changes, manual, or nothing to do."""

    def verdicts(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        """Verdicts for the events this action handles, among all the attacker's events."""
        return self.assess(ctx, self.mine(events))

    def plan(self, ctx: ActionContext, params: EventsParams) -> Plan:
        verdicts = self.verdicts(ctx, params.events)
        changes: dict[str, Change] = {}
        for v in verdicts:
            for c in v.changes:
                changes.setdefault(c.digest, c)
        notes = [v.why for v in verdicts if v.outcome != "contained"]
        return Plan(changes=list(changes.values()), notes=notes)

    # ---- rollback support: the inverse of an applied change, and whether live state already has it
    def inverse(self, change: dict[str, Any]) -> Change | None:
        return None

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        return False


# ------------------------------------------------------------------ triage

class ServiceItem(Ref):
    cluster: str = ""
    name: str = ""
    task_definition: str = ""


class TriageParams(Params):
    events: list[dict[str, Any]] = []
    users: list[UserRef] = []
    groups: list[GroupRef] = []
    roles: list[RoleRef] = []
    access_keys: list[AccessKeyRef] = []
    ecs_services: list[ServiceItem] = []
    #: discovery's precise reversals of attacker changes to identities it does not own (and the
    #: escalated ones, applied by a gated step): the events they undo are contained
    reversals: list[dict[str, Any]] = []
    #: attributed identities named like protected ones: contained by the gated contain-escalated step
    escalated: dict[str, Any] = {}
    #: attacker EC2 instances discovery found: stopped by the gated stop-attacker-instances step
    ec2_instances: list[dict[str, Any]] = []
    #: attacker spot requests and fleets discovery found: cancelled by the gated cancel-spot-requests step
    spot_requests: list[dict[str, Any]] = []


@dataclass
class _Scope:
    users: set[str]
    groups: set[str]
    roles: set[str]
    keys: set[str]
    services: list[ServiceItem]
    reversed: dict[str, str] = field(default_factory=dict)


#: attacker calls that create spot requests or fleets (cancelled by ec2.cancel-spot-requests)
SPOT_CALLS = ("RequestSpotInstances", "RequestSpotFleet", "CreateFleet")

#: attacker calls that blind the account's logging or detection -> the operation that ends the blind period
BLINDING = {"StopLogging": "cloudtrail:StartLogging", "PutEventSelectors": "cloudtrail:PutEventSelectors",
            "DeleteTrail": None, "DeleteFlowLogs": None, "DeleteDetector": None,
            "StopConfigurationRecorder": "config:StartConfigurationRecorder"}


@register
class TriageAttackerActivity(Action[TriageParams]):
    """List every attributed attacker call with its outcome; hand the rest to a person."""

    name = "attacker.triage"
    summary = "Every write the attacker made: contained, manual (with the step) or no action needed; secrets exposed"
    params_model = TriageParams
    risk = "read-only"
    publishes = "attacker_activity"
    permissions = ("iam:GetUser", "iam:GetRole", "iam:GetGroup", "iam:GetLoginProfile", "lambda:GetPolicy",
                   "lambda:GetFunctionConcurrency", "lambda:ListAliases", "lambda:ListVersionsByFunction",
                   "ec2:DescribeSecurityGroups", "ec2:DescribeImages", "ec2:DescribeImageAttribute",
                   "ec2:DescribeSnapshotAttribute", "rds:DescribeDBSnapshotAttributes",
                   "rds:DescribeDBClusterSnapshotAttributes", "s3:GetBucketPolicy", "cloudtrail:GetTrailStatus",
                   "cloudtrail:GetEventSelectors", "guardduty:GetDetector",
                   "config:DescribeConfigurationRecorderStatus")

    def plan(self, ctx: ActionContext, params: TriageParams) -> Plan:
        esc = params.escalated
        scope = _Scope(users={u.name for u in params.users} | {str(u.get("name")) for u in esc.get("users", [])},
                       groups={g.name for g in params.groups} | {str(g.get("name")) for g in esc.get("groups", [])},
                       roles={r.name for r in params.roles} | {str(r.get("name")) for r in esc.get("roles", [])},
                       keys={k.id for k in params.access_keys} | {str(k.get("id")) for k in esc.get("access_keys", [])},
                       services=list(params.ecs_services),
                       reversed={str(r["event_id"]): str(r["op"]) for r in params.reversals
                                 if r.get("event_id") and r.get("op") != "manual"}
                       | {str(r["event_id"]): str(r["op"]) for r in esc.get("reversals", [])
                          if r.get("event_id") and r.get("op") != "manual"})
        events = sorted(params.events, key=lambda e: str(e.get("eventTime", "")))
        stopped = {str(i.get("id")) for i in params.ec2_instances}
        cancelled = {str(s.get("id")) for s in params.spot_requests}
        verdicts: dict[str, Verdict] = {}
        by_handler: dict[str, list[dict[str, Any]]] = {}
        listed: list[tuple[dict[str, Any], Technique | None, str]] = []
        for e in events:
            category, technique = classify(e)
            if category == "ignored_read":
                continue
            resource = resource_of(e, technique)
            listed.append((e, technique, resource))
            eid = event_id(e)
            if e.get("errorCode"):
                verdicts[eid] = Verdict(eid, "no_action_needed", f"the call failed ({e['errorCode']}): it changed "
                                                                 "nothing")
            elif technique is None:
                verdicts[eid] = Verdict(eid, "manual", "not a technique stanch knows how to undo", _review(e, resource))
            elif technique.kind == "undo" and technique.handler and resource:
                by_handler.setdefault(technique.handler, []).append(e)
            elif technique.kind == "undo":  # a record without the resource cannot be assessed
                verdicts[eid] = Verdict(eid, "manual", "the event does not name the resource", _review(e, resource))
            elif technique.kind in ("identity", "session", "ecs"):
                verdicts[eid] = _decide_scoped(ctx, e, technique, resource, scope)
            elif technique.kind == "manual" and _name(e) == "RunInstances" and resource in stopped:
                verdicts[eid] = Verdict(eid, "contained", f"instance {resource} is stopped by the gated "
                                                          "stop-attacker-instances step, after its evidence")
            elif technique.kind == "manual" and _name(e) in SPOT_CALLS and resource in cancelled:
                verdicts[eid] = Verdict(eid, "contained", f"{resource} is cancelled (instances kept) by the gated "
                                                          "cancel-spot-requests step, after its evidence; its "
                                                          "instances are stopped by stop-attacker-instances")
            elif technique.kind == "manual" and _name(e) == "CreateAutoScalingGroup" and resource:
                verdicts[eid] = Verdict(eid, "contained", f"Auto Scaling group {resource}: launches suspended and "
                                                          "scaled to 0 by scale-attacker-groups (previous values "
                                                          "recorded; the group stays for the investigation)")
            elif technique.kind == "manual":
                verdicts[eid] = Verdict(eid, "manual", "no safe automatic undo: a person must act",
                                        fill(technique.instruction, e, resource))
        registry = builtin_registry()
        for handler, handled in by_handler.items():
            cls = registry.get(handler)
            if cls is None or not issubclass(cls, UndoAction):
                for e in handled:
                    verdicts[event_id(e)] = Verdict(event_id(e), "manual", f"no action {handler} is registered",
                                                    _review(e, resource_of(e)))
                continue
            action = cls()
            for v in action.verdicts(ctx, events):
                verdicts[v.event_id] = Verdict(v.event_id, v.outcome, v.why, v.instruction)
                if v.outcome == "contained":
                    verdicts[v.event_id].why = f"{v.why} (action {handler})"

        activity = [_item(ctx, e, t, resource, verdicts.get(event_id(e))) for e, t, resource in listed]
        manual = [a["instruction"] for a in activity if a["outcome"] in ("manual", "exposed") and a["instruction"]]
        counts: dict[str, int] = {}
        for a in activity:
            counts[a["outcome"]] = counts.get(a["outcome"], 0) + 1
        notes = [f"{len(activity)} attacker call(s): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))] \
            if activity else ["no attributed attacker activity to triage"]
        return Plan(outputs={"activity": activity, "counts": counts}, manual=list(dict.fromkeys(manual)), notes=notes)


def _item(ctx: ActionContext, e: dict[str, Any], t: Technique | None, resource: str,
          verdict: Verdict | None) -> dict[str, Any]:
    if t is not None and t.kind == "exposed" and not e.get("errorCode"):
        outcome, why, instruction = "exposed", "the attacker read a secret", fill(t.instruction, e, resource)
    elif verdict is None:  # every path above gives a verdict; this keeps "nothing silent" true regardless
        outcome, why, instruction = "manual", "not assessed", _review(e, resource)
    else:
        outcome, why, instruction = verdict.outcome, verdict.why, verdict.instruction
    identity = e.get("userIdentity") if isinstance(e.get("userIdentity"), dict) else {}
    item: dict[str, Any] = {
        "time": e.get("eventTime"), "event_id": event_id(e), "event": f"{e.get('eventSource')}:{e.get('eventName')}",
        "region": e.get("awsRegion"), "source_ip": e.get("sourceIPAddress"), "user_agent": e.get("userAgent"),
        "actor": (identity or {}).get("arn") or (identity or {}).get("type"),
        "technique_id": t.attack_id if t else None, "technique": t.attack_name if t else "unknown write",
        "resource": resource, "outcome": outcome, "why": why, "instruction": instruction,
    }
    name = str(e.get("eventName"))
    if name in BLINDING and outcome != "no_action_needed":
        # the report ends the period at the time this run applied `ended_by` on the resource, if it did
        item["blind_period"] = {"from": e.get("eventTime"), "ended_by": BLINDING[name] if outcome == "contained"
                                else None}
    return item


def _review(e: dict[str, Any], resource: str) -> str:
    return (f"Review {e.get('eventSource')}:{e.get('eventName')} by the attacker at {e.get('eventTime')} in "
            f"{e.get('awsRegion')} on {resource or 'the resource in its request parameters'} (event "
            f"{event_id(e)}), and undo it if it is not legitimate.")


def _exists(ctx: ActionContext, kind: str, name: str) -> bool:
    iam = ctx.aws.client("iam")
    try:
        {"user": iam.get_user, "role": iam.get_role, "group": iam.get_group}[kind](**{f"{kind.capitalize()}Name": name})
    except ClientError as exc:
        if is_code(exc, "NoSuchEntity"):
            return False
        raise
    return True


def _decide_scoped(ctx: ActionContext, e: dict[str, Any], t: Technique, resource: str, scope: _Scope) -> Verdict:
    """Identities, sessions and ECS work: contained when the containment steps cover them."""
    eid, name, req, when = event_id(e), _name(e), request(e), e.get("eventTime")
    contained: Outcome = "contained"

    def manual(why: str, step: str) -> Verdict:
        return Verdict(eid, "manual", why, step)

    def gone(kind: str, who: str) -> Verdict | None:
        if who and not _exists(ctx, kind, who):
            return Verdict(eid, "no_action_needed", f"{kind} {who} no longer exists")
        return None

    if eid in scope.reversed:
        return Verdict(eid, contained, f"undone precisely ({scope.reversed[eid]}) by the undo-attacker-changes "
                                       "step; the identity's own access is left as it was")

    if name in ("CreateUser", "CreateAccessKey", "UpdateLoginProfile", "AddUserToGroup", "AttachUserPolicy",
                "PutUserPolicy"):
        user = str(req.get("userName") or _dig_key(e) or "")
        key_id = str(((response(e).get("accessKey") or {}) if isinstance(response(e).get("accessKey"), dict)
                      else {}).get("accessKeyId", ""))
        if user in scope.users:
            return Verdict(eid, contained, f"user {user} is in scope: its keys are deactivated, its console password "
                                           "removed and a deny-all quarantine policy attached")
        if key_id and key_id in scope.keys:
            return Verdict(eid, contained, f"access key {key_id} that the attacker created for {user} is deactivated; "
                                           "the user's own keys are left alone")
        if (v := gone("user", user)) is not None:
            return v
        steps = {
            "CreateUser": f"The attacker created IAM user {user} at {when} and it is not in scope: deactivate its "
                          f"access keys and delete the user once the investigation is done (aws iam delete-user "
                          f"--user-name {user}).",
            "CreateAccessKey": f"The attacker created access key {key_id or '(id in the event)'} for user {user} at "
                               f"{when}: deactivate it (aws iam update-access-key --user-name {user} --access-key-id "
                               f"{key_id or 'KEY'} --status Inactive), then delete it.",
            "UpdateLoginProfile": f"The attacker changed the console password of user {user} at {when}. Its owner "
                                  f"must set a new password now (aws iam update-login-profile --user-name {user} "
                                  f"--password-reset-required) and check the account's recent console sign-ins.",
            "AddUserToGroup": f"The attacker added user {user} to group {req.get('groupName')} at {when}: remove it "
                              f"(aws iam remove-user-from-group --user-name {user} --group-name "
                              f"{req.get('groupName')}) unless that membership is legitimate.",
            "AttachUserPolicy": f"The attacker attached {req.get('policyArn')} to user {user} at {when}: detach it "
                                f"(aws iam detach-user-policy --user-name {user} --policy-arn {req.get('policyArn')}).",
            "PutUserPolicy": f"The attacker wrote the inline policy {req.get('policyName')} of user {user} at {when}: "
                             f"delete it (aws iam delete-user-policy --user-name {user} --policy-name "
                             f"{req.get('policyName')}) or restore its earlier version.",
        }
        return manual(f"user {user} is not in scope, so no containment step covers it", steps[name])
    if name in ("CreateRole", "UpdateAssumeRolePolicy", "AttachRolePolicy", "PutRolePolicy"):
        role = str(req.get("roleName", ""))
        if role in scope.roles:
            return Verdict(eid, contained, f"role {role} is in scope: a deny-all quarantine policy (also revoking "
                                           "sessions issued before it) is attached")
        if (v := gone("role", role)) is not None:
            return v
        steps = {
            "CreateRole": f"The attacker created role {role} at {when} and it is not in scope: attach a deny-all "
                          f"policy or delete the role (aws iam delete-role --role-name {role}).",
            "UpdateAssumeRolePolicy": f"The attacker replaced the trust policy of role {role} at {when} (new policy "
                                      f"in event {eid}): restore the earlier trust policy (aws iam "
                                      f"update-assume-role-policy --role-name {role}) and revoke the role's active "
                                      f"sessions.",
            "AttachRolePolicy": f"The attacker attached {req.get('policyArn')} to role {role} at {when}: detach it "
                                f"(aws iam detach-role-policy --role-name {role} --policy-arn {req.get('policyArn')}).",
            "PutRolePolicy": f"The attacker wrote the inline policy {req.get('policyName')} of role {role} at {when}: "
                             f"delete it (aws iam delete-role-policy --role-name {role} --policy-name "
                             f"{req.get('policyName')}) or restore its earlier version.",
        }
        return manual(f"role {role} is not in scope, so no containment step covers it", steps[name])
    if name in ("CreateGroup", "AttachGroupPolicy", "PutGroupPolicy"):
        group = str(req.get("groupName", ""))
        admin = {*ctx.config.discovery.admin_policy_arns, *ctx.incident.indicators.policy_arns}
        if group in scope.groups and (name == "CreateGroup" or req.get("policyArn") in admin):
            return Verdict(eid, contained, f"group {group} is in scope: its administrator policies are detached and "
                                           "the in-scope users removed from it")
        if (v := gone("group", group)) is not None:
            return v
        steps = {
            "CreateGroup": f"The attacker created group {group} at {when}: remove its members and policies, then "
                           f"delete it (aws iam delete-group --group-name {group}).",
            "AttachGroupPolicy": f"The attacker attached {req.get('policyArn')} to group {group} at {when}: detach it "
                                 f"(aws iam detach-group-policy --group-name {group} --policy-arn "
                                 f"{req.get('policyArn')}).",
            "PutGroupPolicy": f"The attacker wrote the inline policy {req.get('policyName')} of group {group} at "
                              f"{when}: delete it (aws iam delete-group-policy --group-name {group} --policy-name "
                              f"{req.get('policyName')}).",
        }
        return manual(f"no containment step removes this from group {group}", steps[name])
    if t.kind == "session":
        return _decide_session(e, name, scope)
    if t.kind == "ecs":
        cluster = str(req.get("cluster") or req.get("clusterName") or "default").rsplit("/", 1)[-1]
        covered = any(s.name == resource or (s.cluster == cluster and name in ("RunTask", "CreateCluster"))
                      or (name == "RegisterTaskDefinition" and f"/{resource}:" in s.task_definition)
                      for s in scope.services)
        if covered:
            return Verdict(eid, contained, f"ECS {resource or cluster} belongs to an in-scope service, scaled to "
                                           "zero and its tasks stopped")
        return manual("no in-scope ECS service covers it",
                      f"The attacker called {name} at {when} in {e.get('awsRegion')} ({resource or cluster}): stop "
                      f"what it started and deregister or delete it once the investigation is done.")
    return manual("not covered by a containment step", _review(e, resource))


def _decide_session(e: dict[str, Any], name: str, scope: _Scope) -> Verdict:
    eid, when = event_id(e), e.get("eventTime")
    raw = e.get("userIdentity")
    ident: dict[str, Any] = raw if isinstance(raw, dict) else {}
    issuer_type = ident.get("type")
    issuer = str(ident.get("userName") or "")
    if name == "AssumeRole":
        role_arn = str(request(e).get("roleArn", ""))
        role = role_arn.rsplit("/", 1)[-1]
        if role in scope.roles:
            return Verdict(eid, "contained", f"sessions of role {role} are revoked by the aws:TokenIssueTime deny of "
                                             "its quarantine policy (quarantine-principals)")
        return Verdict(eid, "manual", f"role {role} is not in scope: its sessions are still valid",
                       f"The attacker assumed role {role_arn} at {when}. Revoke the role's active sessions (IAM "
                       f"console > Roles > {role} > Revoke active sessions, which adds an aws:TokenIssueTime deny) and "
                       "review what the session did.")
    kind = "federation token" if name == "GetFederationToken" else "session token"
    if issuer_type == "IAMUser" and issuer in scope.users:
        return Verdict(eid, "contained", f"the {kind} inherits the permissions of user {issuer}, whose quarantine "
                                         "policy denies every call and (aws:TokenIssueTime) every session issued "
                                         "before containment")
    if issuer_type == "Root":
        return Verdict(eid, "manual", f"a {kind} issued to the root user is not revoked by IAM policies",
                       f"The attacker obtained a {kind} as the root user at {when}. Delete the root access keys (see "
                       "the root-credentials step); temporary root sessions last at most 1 hour (36 hours for "
                       "federation tokens): keep the deny-root SCP in place until then.")
    who = issuer or str(ident.get("arn") or "an unknown principal")
    return Verdict(eid, "manual", f"the issuer {who} is not in scope",
                   f"The attacker obtained a {kind} from {who} at {when}. Attach a policy to {who} denying every "
                   "action when aws:TokenIssueTime is earlier than now, then rotate its access keys.")


def _name(e: dict[str, Any]) -> str:
    return event_key(e).split(":", 1)[1]


def _dig_key(e: dict[str, Any]) -> str:
    key = response(e).get("accessKey")
    return str(key.get("userName", "")) if isinstance(key, dict) else ""
