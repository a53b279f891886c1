"""Relaunchers in Auto Scaling: the Application Auto Scaling targets that would scale a contained ECS
service straight back up, the EC2 Auto Scaling groups the attacker created, and legitimate groups
holding miner instances (which would replace a stopped instance). Reversible: previous values are
recorded (MinCapacity and SuspendedState; sizes; the processes already suspended)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import ServiceRef, paginate, tolerant_call
from actions.ec2 import InstanceRef
from actions.registry import register

#: the three activities; all suspended means nothing scales the target in or out
SUSPENDED = {"DynamicScalingInSuspended": True, "DynamicScalingOutSuspended": True,
             "ScheduledScalingSuspended": True}
DESIRED = "ecs:service:DesiredCount"


class ScalableTargetsParams(Params):
    services: list[ServiceRef]


def target_arn(account: str, region: str, resource_id: str, found: dict[str, Any]) -> str:
    """The scalable target's ARN (older API responses have none: one is built with the region in it)."""
    arn = found.get("ScalableTargetARN")
    return str(arn) if arn else f"arn:aws:application-autoscaling:{region}:{account}:scalable-target/{resource_id}"


@register
class SuspendScalableTargets(Action[ScalableTargetsParams]):
    """Suspend every scaling activity of the in-scope services' scalable targets and set MinCapacity 0."""

    name = "autoscaling.suspend-scalable-targets"
    summary = "Suspend Application Auto Scaling of in-scope ECS services, MinCapacity 0 (previous values recorded)"
    params_model = ScalableTargetsParams
    permissions = ("application-autoscaling:DescribeScalableTargets", "application-autoscaling:RegisterScalableTarget")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: ScalableTargetsParams) -> Plan:
        by_region: dict[str, list[str]] = defaultdict(list)
        for s in params.services:
            by_region[s.region or ctx.incident.region].append(f"service/{s.cluster}/{s.name}")

        def read(item: tuple[str, list[str]]) -> list[Change]:
            region, resource_ids = item
            client = ctx.aws.client("application-autoscaling", region)
            changes = []
            for i in range(0, len(resource_ids), 50):
                for t in paginate(client, "describe_scalable_targets", "ScalableTargets", ServiceNamespace="ecs",
                                  ResourceIds=resource_ids[i:i + 50], ScalableDimension=DESIRED):
                    state = {k: bool((t.get("SuspendedState") or {}).get(k, False)) for k in SUSPENDED}
                    if state == SUSPENDED and t["MinCapacity"] == 0:
                        continue
                    changes.append(Change(
                        "application-autoscaling:RegisterScalableTarget",
                        target_arn(ctx.incident.account_id, region, t["ResourceId"], t),
                        {"ServiceNamespace": "ecs", "ResourceId": t["ResourceId"], "ScalableDimension": DESIRED,
                         "MinCapacity": 0, "SuspendedState": dict(SUSPENDED)},
                        previous={"MinCapacity": t["MinCapacity"], "MaxCapacity": t["MaxCapacity"],
                                  "SuspendedState": state},
                        reason=f"auto scaling of in-scope service {t['ResourceId']} in {region} (min "
                               f"{t['MinCapacity']}) would start the miner again"))
            return changes

        return Plan(changes=[c for cs in ctx.fanout(read, sorted(by_region.items())) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        client = ctx.aws.client("application-autoscaling", change.target.split(":")[3])
        client.register_scalable_target(**change.params)  # an upsert: applying twice is harmless
        return "applied"


class GroupsParams(Params):
    #: CloudTrail records attributed to the attacker (scope.attacker_events)
    attacker_events: list[dict[str, Any]] = []


def attacker_groups(events: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(region, Auto Scaling group name) -> why: groups the attacker created, directly or as the
    capacity provider of an ECS cluster."""
    out: dict[tuple[str, str], str] = {}
    for e in events:
        req = e.get("requestParameters") or {}
        region = str(e.get("awsRegion", ""))
        if e.get("errorCode"):
            continue
        if e.get("eventName") == "CreateAutoScalingGroup" and req.get("autoScalingGroupName"):
            out[(region, str(req["autoScalingGroupName"]))] = f"created by the attacker (CloudTrail {e.get('eventID')})"
        elif e.get("eventName") == "CreateCapacityProvider":
            arn = str((req.get("autoScalingGroupProvider") or {}).get("autoScalingGroupArn", ""))
            if "autoScalingGroupName/" in arn:
                out[(region, arn.rsplit("autoScalingGroupName/", 1)[-1])] = (
                    f"behind capacity provider {req.get('name')} the attacker created (CloudTrail {e.get('eventID')})")
    return out


#: what keeps a group's capacity up: suspended, it neither launches nor replaces a stopped instance
ATTACKER_PROCESSES = ("Launch", "ReplaceUnhealthy", "HealthCheck")
#: a legitimate group the attacker hijacked keeps serving (no scale to 0), but launches nothing new
HIJACKED_PROCESSES = ("Launch", "ReplaceUnhealthy")


def _suspend(region: str, group: dict[str, Any], processes: tuple[str, ...], why: str) -> Change | None:
    """SuspendProcesses for those of `processes` the group still runs (None: all already suspended)."""
    suspended = {p["ProcessName"] for p in group.get("SuspendedProcesses") or []}
    missing = [p for p in processes if p not in suspended]
    if not missing:
        return None
    name = group["AutoScalingGroupName"]
    return Change("autoscaling:SuspendProcesses", group["AutoScalingGroupARN"],
                  {"AutoScalingGroupName": name, "ScalingProcesses": missing},
                  previous={"SuspendedProcesses": sorted(suspended & set(processes))},
                  reason=f"Auto Scaling group {name} in {region} would launch instances again "
                         f"({', '.join(missing)} not suspended): {why}")


def suspend_or_resume(ctx: ActionContext, change: Change) -> Outcome:
    """Apply a SuspendProcesses or ResumeProcesses change (both are idempotent; a deleted group is done)."""
    client = ctx.aws.client("autoscaling", change.target.split(":")[3])
    call = client.suspend_processes if change.operation == "autoscaling:SuspendProcesses" else client.resume_processes
    return tolerant_call(call, change.params, "ValidationError")


def _groups(client: Any, names: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(0, len(names), 50):
        out += paginate(client, "describe_auto_scaling_groups", "AutoScalingGroups",
                        AutoScalingGroupNames=names[i:i + 50])
    return out


@register
class ScaleAttackerGroups(Action[GroupsParams]):
    """Auto Scaling groups the attacker created (for ECS capacity or directly): their Launch,
    ReplaceUnhealthy and HealthCheck processes suspended, MinSize and DesiredCapacity 0, the previous
    values recorded. The group itself stays, for the investigation."""

    name = "autoscaling.scale-attacker-groups"
    summary = ("Suspend launches of Auto Scaling groups the attacker created (or put behind an ECS capacity "
               "provider) and scale them to 0")
    params_model = GroupsParams
    permissions = ("autoscaling:DescribeAutoScalingGroups", "autoscaling:UpdateAutoScalingGroup",
                   "autoscaling:SuspendProcesses")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: GroupsParams) -> Plan:
        wanted = attacker_groups(params.attacker_events)
        by_region: dict[str, list[str]] = defaultdict(list)
        for region, name in wanted:
            by_region[region or ctx.incident.region].append(name)

        def read(item: tuple[str, list[str]]) -> list[Change]:
            region, names = item
            changes: list[Change] = []
            for g in _groups(ctx.aws.client("autoscaling", region), sorted(names)):
                why = wanted.get((region, g["AutoScalingGroupName"]), "created by the attacker")
                suspend = _suspend(region, g, ATTACKER_PROCESSES, why)
                if suspend is not None:
                    changes.append(suspend)
                if g["MinSize"] > 0 or g["DesiredCapacity"] > 0:
                    changes.append(Change(
                        "autoscaling:UpdateAutoScalingGroup", g["AutoScalingGroupARN"],
                        {"AutoScalingGroupName": g["AutoScalingGroupName"], "MinSize": 0, "DesiredCapacity": 0},
                        previous={"MinSize": g["MinSize"], "DesiredCapacity": g["DesiredCapacity"],
                                  "MaxSize": g["MaxSize"]},
                        reason=f"Auto Scaling group {g['AutoScalingGroupName']} in {region}: {why}"))
            return changes

        return Plan(changes=[c for cs in ctx.fanout(read, sorted(by_region.items())) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        if change.operation != "autoscaling:UpdateAutoScalingGroup":
            return suspend_or_resume(ctx, change)
        client = ctx.aws.client("autoscaling", change.target.split(":")[3])
        client.update_auto_scaling_group(**change.params)  # sets sizes: applying twice is harmless
        return "applied"


class HijackedParams(Params):
    #: in-scope EC2 instances (compute.ec2_instances)
    instances: list[InstanceRef] = []
    #: CloudTrail records attributed to the attacker: groups it created are scaled to 0 elsewhere
    attacker_events: list[dict[str, Any]] = []


@register
class SuspendHijackedGroups(Action[HijackedParams]):
    """Auto Scaling groups NOT created by the attacker that hold in-scope (miner) instances, e.g. a
    production group whose launch template the attacker changed: their Launch and ReplaceUnhealthy
    processes are suspended, so a stopped miner instance is not replaced, and nothing is scaled down
    (its healthy instances keep serving). The membership is read live, so a group the attacker
    attached an instance to later is found too, and `stanch verify` flags a group that would relaunch."""

    name = "autoscaling.suspend-hijacked-groups"
    summary = "Suspend Launch/ReplaceUnhealthy of Auto Scaling groups holding miner instances (no scale-down)"
    params_model = HijackedParams
    permissions = ("autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeAutoScalingGroups",
                   "autoscaling:SuspendProcesses")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: HijackedParams) -> Plan:
        attacker = attacker_groups(params.attacker_events)
        by_region: dict[str, list[str]] = defaultdict(list)
        for ref in params.instances:
            by_region[ref.region].append(ref.id)

        def read(item: tuple[str, list[str]]) -> tuple[list[Change], list[dict[str, Any]]]:
            region, ids = item
            client = ctx.aws.client("autoscaling", region)
            holding: dict[str, list[str]] = defaultdict(list)
            for i in range(0, len(ids), 50):
                for m in paginate(client, "describe_auto_scaling_instances", "AutoScalingInstances",
                                  InstanceIds=ids[i:i + 50]):
                    holding[m["AutoScalingGroupName"]].append(m["InstanceId"])
            names = sorted(n for n in holding if (region, n) not in attacker)
            changes, groups = [], []
            for g in _groups(client, names) if names else []:
                name = g["AutoScalingGroupName"]
                why = (f"not created by the attacker, but holds in-scope instance(s) "
                       f"{', '.join(sorted(holding[name]))} (a hijacked group: launch template "
                       f"{_template(g)}); it is not scaled down")
                groups.append({"name": name, "region": region, "arn": g["AutoScalingGroupARN"],
                               "instances": sorted(holding[name]), "launch_template": _template(g), "reason": why})
                change = _suspend(region, g, HIJACKED_PROCESSES, why)
                if change is not None:
                    changes.append(change)
            return changes, groups

        found = ctx.fanout(read, sorted(by_region.items()))
        groups = [g for _, gs in found for g in gs]
        notes = [f"Auto Scaling group {g['name']} ({g['region']}) holds miner instances: review its launch "
                 f"template {g['launch_template']} before resuming its processes" for g in groups]
        return Plan(changes=[c for cs, _ in found for c in cs], outputs={"groups": groups}, notes=notes)

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return suspend_or_resume(ctx, change)


def _template(group: dict[str, Any]) -> str:
    spec = group.get("LaunchTemplate") or (group.get("MixedInstancesPolicy") or {}).get(
        "LaunchTemplate", {}).get("LaunchTemplateSpecification") or {}
    if spec:
        name = spec.get("LaunchTemplateName") or spec.get("LaunchTemplateId")
        return f"{name} (version {spec.get('Version', '$Default')})"
    return str(group.get("LaunchConfigurationName") or "?")
