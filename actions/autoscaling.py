"""Application Auto Scaling: disarm the scalable targets that would scale a contained ECS service
straight back up. Reversible: the previous MinCapacity and SuspendedState are recorded."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import ServiceRef, paginate
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


@register
class ScaleAttackerGroups(Action[GroupsParams]):
    """Auto Scaling groups the attacker created (for ECS capacity or directly): MinSize and
    DesiredCapacity 0, the previous sizes recorded. The group itself stays, for the investigation."""

    name = "autoscaling.scale-attacker-groups"
    summary = "Scale Auto Scaling groups the attacker created (or put behind an ECS capacity provider) to 0"
    params_model = GroupsParams
    permissions = ("autoscaling:DescribeAutoScalingGroups", "autoscaling:UpdateAutoScalingGroup")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: GroupsParams) -> Plan:
        wanted = attacker_groups(params.attacker_events)
        by_region: dict[str, list[str]] = defaultdict(list)
        for region, name in wanted:
            by_region[region or ctx.incident.region].append(name)

        def read(item: tuple[str, list[str]]) -> list[Change]:
            region, names = item
            client = ctx.aws.client("autoscaling", region)
            return [
                Change("autoscaling:UpdateAutoScalingGroup", g["AutoScalingGroupARN"],
                       {"AutoScalingGroupName": g["AutoScalingGroupName"], "MinSize": 0, "DesiredCapacity": 0},
                       previous={"MinSize": g["MinSize"], "DesiredCapacity": g["DesiredCapacity"],
                                 "MaxSize": g["MaxSize"]},
                       reason=f"Auto Scaling group {g['AutoScalingGroupName']} in {region}: "
                              f"{wanted.get((region, g['AutoScalingGroupName']), 'created by the attacker')}")
                for g in paginate(client, "describe_auto_scaling_groups", "AutoScalingGroups",
                                  AutoScalingGroupNames=sorted(names))
                if g["MinSize"] > 0 or g["DesiredCapacity"] > 0]

        return Plan(changes=[c for cs in ctx.fanout(read, sorted(by_region.items())) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        client = ctx.aws.client("autoscaling", change.target.split(":")[3])
        client.update_auto_scaling_group(**change.params)  # sets sizes: applying twice is harmless
        return "applied"
