"""Rollback: undo a run's containment from the values its changes recorded.

Every containment change records what it replaced; this action plans the inverse of each applied
change that can be inverted, skips what is already back, and lists what cannot be undone by an
API call (a deleted console password, a deactivated MFA device, stopped tasks, deletions)."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import is_code, method_for, paginate, tolerant_call
from actions.iam_undo import as_doc
from actions.registry import register
from actions.triage import UndoAction

NOT_REVERSIBLE = {
    "iam:DeleteLoginProfile": "the console password of {UserName} was deleted; if the user is legitimate, create a "
                              "new login profile (with a password reset) for it",
    "iam:DeactivateMFADevice": "MFA device {SerialNumber} of {UserName} was deactivated; its owner must enable it "
                               "again with two codes",
    "ecs:StopTask": None,  # the service starts new tasks once its desired count is restored
    "ecs:DeleteService": "service {service} of cluster {cluster} was deleted (a DAEMON service cannot be scaled); "
                         "recreate it from its task definition if it was legitimate",
    "organizations:CreatePolicy": None,  # detaching the SCP restores access; the policy itself is harmless
    "s3:PutObject": None,  # evidence stays
    "iam:CreatePolicy": None,  # the managed quarantine policy is harmless once detached
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
    if op in ("iam:DeleteUserPolicy", "iam:DeleteRolePolicy", "iam:DeleteGroupPolicy") and prev.get("PolicyDocument"):
        doc = prev["PolicyDocument"]
        return Change(op.replace("Delete", "Put"), target,
                      {**p, "PolicyDocument": doc if isinstance(doc, str) else json.dumps(doc)},
                      previous={"PolicyDocument": None}, reason=f"{why}: restore inline policy {p['PolicyName']}")
    if op in ("iam:AttachUserPolicy", "iam:AttachRolePolicy", "iam:AttachGroupPolicy"):
        return Change(op.replace("Attach", "Detach"), target, dict(p), previous={"Attached": p["PolicyArn"]},
                      reason=f"{why}: detach {p['PolicyArn'].rsplit('/', 1)[-1]}")
    if op in ("iam:PutUserPolicy", "iam:PutRolePolicy", "iam:PutGroupPolicy"):
        key = {"iam:PutUserPolicy": "UserName", "iam:PutRolePolicy": "RoleName", "iam:PutGroupPolicy": "GroupName"}[op]
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
    if op == "ecs:UpdateService" and "taskDefinition" in prev:
        return (f"service {p['service']} of cluster {p['cluster']} was rolled back from hijacked revision "
                f"{prev['taskDefinition']} to {p['taskDefinition']}; it is not rolled forward to the miner again")
    if op == "ecs:UpdateService" and "desiredCount" in prev:
        return Change(op, target, {**p, "desiredCount": prev["desiredCount"]}, previous={"desiredCount": 0},
                      reason=f"{why}: {p['service']} back to {prev['desiredCount']} task(s)")
    if op == "application-autoscaling:RegisterScalableTarget" and "MinCapacity" in prev:
        restored = {**p, "MinCapacity": prev["MinCapacity"], "SuspendedState": prev.get("SuspendedState") or {}}
        return Change(op, target, restored, previous={"MinCapacity": p["MinCapacity"]},
                      reason=f"{why}: auto scaling of {p['ResourceId']} back to min {prev['MinCapacity']}, "
                             f"activities resumed as they were")
    if op == "events:DisableRule":
        return Change("events:EnableRule", target, dict(p), previous={"State": "DISABLED"},
                      reason=f"{why}: enable rule {p['Name']} again")
    if op == "scheduler:UpdateSchedule" and "State" in prev:
        return Change(op, target, {**p, "State": prev["State"]}, previous={"State": p["State"]},
                      reason=f"{why}: schedule {p['GroupName']}/{p['Name']} back to {prev['State']}")
    if op == "ec2:StopInstances" and prev.get("State") in ("running", "pending"):
        return Change("ec2:StartInstances", target, dict(p), previous={"State": "stopped"},
                      reason=f"{why}: start {', '.join(p['InstanceIds'])} again")
    if op == "ecs:UpdateTaskSet" and "scale" in prev:
        return Change(op, target, {**p, "scale": prev["scale"]}, previous={"scale": p["scale"]},
                      reason=f"{why}: task set back to {prev['scale'].get('value')} {prev['scale'].get('unit')}")
    if op == "autoscaling:UpdateAutoScalingGroup" and "MinSize" in prev:
        return Change(op, target, {**p, "MinSize": prev["MinSize"], "DesiredCapacity": prev["DesiredCapacity"]},
                      previous={"MinSize": 0, "DesiredCapacity": 0},
                      reason=f"{why}: {p['AutoScalingGroupName']} back to min {prev['MinSize']}, desired "
                             f"{prev['DesiredCapacity']}")
    if op == "autoscaling:SuspendProcesses":
        return Change("autoscaling:ResumeProcesses", target, dict(p), previous={"Suspended": p["ScalingProcesses"]},
                      reason=f"{why}: {p['AutoScalingGroupName']} runs {', '.join(p['ScalingProcesses'])} again "
                             "(it may launch instances from its launch template: review it first)")
    if op in ("ec2:CancelSpotInstanceRequests", "ec2:CancelSpotFleetRequests", "ec2:DeleteFleets"):
        ids = p.get("SpotInstanceRequestIds") or p.get("SpotFleetRequestIds") or p.get("FleetIds") or []
        kind = {"ec2:CancelSpotInstanceRequests": "spot request", "ec2:CancelSpotFleetRequests": "spot fleet",
                "ec2:DeleteFleets": "EC2 Fleet"}[op]
        return (f"{kind} {', '.join(ids)} ({target.split(':')[3]}) was cancelled and cannot be re-created by "
                f"rollback; if it was legitimate, create a new one from its description in the run's instance "
                f"evidence (its instances were kept)")
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
                   "iam:GetGroupPolicy", "iam:DeleteGroupPolicy", "iam:PutGroupPolicy", "iam:DetachUserPolicy",
                   "iam:DetachRolePolicy", "iam:DetachGroupPolicy",
                   "iam:ListGroupsForUser", "iam:AddUserToGroup", "iam:ListAttachedUserPolicies",
                   "iam:ListAttachedGroupPolicies", "iam:ListAttachedRolePolicies", "iam:AttachUserPolicy",
                   "iam:AttachGroupPolicy", "iam:AttachRolePolicy", "ecs:DescribeServices", "ecs:UpdateService",
                   "ecs:DescribeTaskSets", "ecs:UpdateTaskSet",
                   "sts:AssumeRole", "organizations:ListPolicies", "organizations:ListPoliciesForTarget",
                   "organizations:DetachPolicy", "iam:GetRole", "iam:UpdateAssumeRolePolicy",
                   "application-autoscaling:DescribeScalableTargets",
                   "application-autoscaling:RegisterScalableTarget", "events:DescribeRule", "events:EnableRule",
                   "scheduler:GetSchedule", "scheduler:UpdateSchedule", "iam:PassRole", "ec2:DescribeInstances",
                   "ec2:StartInstances", "autoscaling:DescribeAutoScalingGroups",
                   "autoscaling:UpdateAutoScalingGroup", "autoscaling:ResumeProcesses", *UNDO_PERMISSIONS)
    permission_paths = {p: "org" for p in permissions if p.startswith(("sts:AssumeRole", "organizations:"))}
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
            if c.operation in ("iam:DeleteUserPolicy", "iam:DeleteRolePolicy", "iam:DeleteGroupPolicy"):
                kind = c.operation.removeprefix("iam:Delete").removesuffix("Policy")
                getattr(iam, f"get_{kind.lower()}_policy")(**{f"{kind}Name": p[f"{kind}Name"]},
                                                           PolicyName=p["PolicyName"])
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
            if c.operation.startswith("iam:Detach"):
                kind = c.operation.removeprefix("iam:Detach").removesuffix("Policy")
                attached = paginate(iam, f"list_attached_{kind.lower()}_policies", "AttachedPolicies",
                                    **{f"{kind}Name": p[f"{kind}Name"]})
                return not any(a["PolicyArn"] == p["PolicyArn"] for a in attached)
            if c.operation == "iam:AddUserToGroup":
                groups = paginate(iam, "list_groups_for_user", "Groups", UserName=p["UserName"])
                return any(g["GroupName"] == p["GroupName"] for g in groups)
            if c.operation.startswith("iam:Attach"):
                kind = c.operation.removeprefix("iam:Attach").removesuffix("Policy")
                key = f"{kind}Name"
                attached = paginate(iam, f"list_attached_{kind.lower()}_policies", "AttachedPolicies", **{key: p[key]})
                return any(a["PolicyArn"] == p["PolicyArn"] for a in attached)
            if c.operation == "ecs:UpdateTaskSet":
                ecs = ctx.aws.client("ecs", c.target.split(":")[3])
                sets = ecs.describe_task_sets(cluster=p["cluster"], service=p["service"],
                                              taskSets=[p["taskSet"]])["taskSets"]
                return not sets or float(sets[0]["scale"]["value"]) == float(p["scale"]["value"])
            if c.operation == "ecs:UpdateService":
                ecs = ctx.aws.client("ecs", c.target.split(":")[3])
                found = ecs.describe_services(cluster=p["cluster"], services=[p["service"]])["services"]
                return not found or found[0].get("status") != "ACTIVE" or found[0]["desiredCount"] == p["desiredCount"]
            if c.operation == "application-autoscaling:RegisterScalableTarget":
                aas = ctx.aws.client("application-autoscaling", c.target.split(":")[3])
                found = aas.describe_scalable_targets(ServiceNamespace=p["ServiceNamespace"],
                                                      ResourceIds=[p["ResourceId"]],
                                                      ScalableDimension=p["ScalableDimension"])["ScalableTargets"]
                return not found or (found[0]["MinCapacity"] == p["MinCapacity"] and {
                    k: bool(v) for k, v in (found[0].get("SuspendedState") or {}).items()} == {
                    k: bool(v) for k, v in p["SuspendedState"].items()})
            if c.operation == "autoscaling:UpdateAutoScalingGroup":
                groups = ctx.aws.client("autoscaling", c.target.split(":")[3]).describe_auto_scaling_groups(
                    AutoScalingGroupNames=[p["AutoScalingGroupName"]])["AutoScalingGroups"]
                return not groups or (groups[0]["MinSize"], groups[0]["DesiredCapacity"]) == (
                    p["MinSize"], p["DesiredCapacity"])
            if c.operation == "autoscaling:ResumeProcesses":
                groups = ctx.aws.client("autoscaling", c.target.split(":")[3]).describe_auto_scaling_groups(
                    AutoScalingGroupNames=[p["AutoScalingGroupName"]])["AutoScalingGroups"]
                return not groups or not {x["ProcessName"] for x in groups[0].get("SuspendedProcesses") or []} & set(
                    p["ScalingProcesses"])
            if c.operation == "events:EnableRule":
                events = ctx.aws.client("events", c.target.split(":")[3])
                return str(events.describe_rule(Name=p["Name"], EventBusName=p["EventBusName"]).get("State")) \
                    == "ENABLED"
            if c.operation == "scheduler:UpdateSchedule":
                sched = ctx.aws.client("scheduler", c.target.split(":")[3])
                return str(sched.get_schedule(Name=p["Name"], GroupName=p["GroupName"]).get("State")) == str(p["State"])
            if c.operation == "ec2:StartInstances":
                ec2 = ctx.aws.client("ec2", c.target.split(":")[3])
                states = [i["State"]["Name"] for r in ec2.describe_instances(InstanceIds=p["InstanceIds"])[
                    "Reservations"] for i in r["Instances"]]
                return all(st in ("running", "pending", "terminated", "shutting-down") for st in states)
            if c.operation == "organizations:DetachPolicy":
                orgs = ctx.aws.assume_role(ctx.config.root.organizations_role_arn).client("organizations")
                pols = paginate(orgs, "list_policies_for_target", "Policies", TargetId=p["TargetId"],
                                Filter="SERVICE_CONTROL_POLICY")
                return not any(x["Name"] == p["PolicyName"] for x in pols)
        except ClientError as exc:
            if is_code(exc, "NoSuchEntity", "ResourceNotFoundException", "InvalidInstanceID.NotFound"):
                return True  # the principal, policy, rule, schedule or instance is gone: nothing to put back
            raise
        return False

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        op, p = change.operation, change.params
        undo = undo_actions(forward=False).get(op)
        if undo is not None:
            return undo.apply(ctx, change)
        region = change.target.split(":")[3]
        if op == "application-autoscaling:RegisterScalableTarget":
            ctx.aws.client("application-autoscaling", region).register_scalable_target(**p)
            return "applied"
        if op == "autoscaling:UpdateAutoScalingGroup":
            return tolerant_call(ctx.aws.client("autoscaling", region).update_auto_scaling_group, p, "ValidationError")
        if op == "autoscaling:ResumeProcesses":
            from actions.autoscaling import suspend_or_resume

            return suspend_or_resume(ctx, change)
        if op == "events:EnableRule":
            return tolerant_call(ctx.aws.client("events", region).enable_rule, p, "ResourceNotFoundException")
        if op == "scheduler:UpdateSchedule":
            from actions.events import set_schedule_state

            return set_schedule_state(ctx, region, p["Name"], p["GroupName"], p["State"])
        if op == "ec2:StartInstances":
            return tolerant_call(ctx.aws.client("ec2", region).start_instances, p, "InvalidInstanceID.NotFound")
        if op == "ecs:UpdateTaskSet":
            return tolerant_call(ctx.aws.client("ecs", region).update_task_set, p, "TaskSetNotFoundException",
                                 "ServiceNotFoundException", "ServiceNotActiveException")
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
        method = method_for(iam, op)
        return tolerant_call(method, p, "NoSuchEntity")
