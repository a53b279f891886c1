"""ECS containment (reversible: scale to zero, stop tasks) and eradication (irreversible)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import (
    ClusterRef,
    ServiceRef,
    TaskDefinitionRef,
    TaskRef,
    is_code,
    matches_miner,
    paginate,
    tolerant_call,
)
from actions.registry import register

GONE = ("ServiceNotFoundException", "ServiceNotActiveException", "ClusterNotFoundException")


class ServicesParams(Params):
    services: list[ServiceRef]


def _region(ctx: ActionContext, ref_region: str) -> str:
    return ref_region or ctx.incident.region


def _by_cluster(ctx: ActionContext, services: Sequence[ServiceRef]) -> dict[tuple[str, str], list[ServiceRef]]:
    grouped: dict[tuple[str, str], list[ServiceRef]] = defaultdict(list)
    for s in services:
        grouped[(_region(ctx, s.region), s.cluster)].append(s)
    return grouped


def _describe_services(ecs: Any, cluster: str, names: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(0, len(names), 10):
        try:
            out += ecs.describe_services(cluster=cluster, services=names[i:i + 10])["services"]
        except ClientError as exc:
            if not is_code(exc, *GONE):
                raise
    return out


def _task_set_changes(cluster: str, svc: dict[str, Any], region: str) -> list[Change]:
    """Task sets (EXTERNAL / CODE_DEPLOY controllers) scaled to 0 percent, the previous scale recorded."""
    return [Change("ecs:UpdateTaskSet", ts["taskSetArn"],
                   {"cluster": cluster, "service": svc["serviceName"], "taskSet": ts["taskSetArn"],
                    "scale": {"value": 0, "unit": "PERCENT"}},
                   previous={"scale": {"value": ts["scale"].get("value"), "unit": ts["scale"].get("unit", "PERCENT")}},
                   reason=f"task set {ts.get('id')} of service {cluster}/{svc['serviceName']} in {region}")
            for ts in svc.get("taskSets") or []
            if ts.get("status") in ("PRIMARY", "ACTIVE") and (ts.get("scale") or {}).get("value", 0) > 0]


class ScopedServiceRef(ServiceRef):
    #: the task definition the service ran when discovery saw it
    task_definition: str = ""


class ScaleParams(Params):
    services: list[ScopedServiceRef]


@register
class ScaleServicesToZero(Action[ScaleParams]):
    """Set desiredCount to 0 and scale any task set to 0 percent (the previous values are recorded for
    rollback). A DAEMON service has no desired count: it is left to the gated ecs.delete-daemon-services."""

    name = "ecs.scale-services-to-zero"
    summary = "Scale ECS services and their task sets to 0 (previous desiredCount / scale recorded)"
    params_model = ScaleParams
    permissions = ("ecs:DescribeServices", "ecs:UpdateService", "ecs:UpdateTaskSet")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: ScaleParams) -> Plan:
        notes: list[str] = []
        seen = {(r.region or ctx.incident.region, r.cluster, r.name): r.task_definition for r in params.services}

        def read(key: tuple[tuple[str, str], list[ServiceRef]]) -> list[Change]:
            (region, cluster), refs = key
            ecs = ctx.aws.client("ecs", region)
            changes = []
            for svc in _describe_services(ecs, cluster, [r.name for r in refs]):
                if svc.get("status") != "ACTIVE":
                    continue
                was = seen.get((region, cluster, svc["serviceName"]))
                if was and svc["taskDefinition"] != was and _rolled_back(ecs, svc["taskDefinition"], was):
                    notes.append(f"service {cluster}/{svc['serviceName']} in {region} was rolled back to "
                                 f"{svc['taskDefinition'].rsplit('/', 1)[-1]}: production keeps running")
                    continue
                if svc.get("schedulingStrategy") == "DAEMON":
                    notes.append(f"DAEMON service {cluster}/{svc['serviceName']} in {region} has no desired count: "
                                 "the gated step ecs.delete-daemon-services deletes it")
                    continue
                if svc.get("desiredCount", 0) > 0:
                    changes.append(Change("ecs:UpdateService", svc["serviceArn"],
                                          {"cluster": cluster, "service": svc["serviceName"], "desiredCount": 0},
                                          previous={"desiredCount": svc["desiredCount"]},
                                          reason=f"service {cluster}/{svc['serviceName']} in {region}"))
                changes += _task_set_changes(cluster, svc, region)
            return changes

        changes = [c for cs in ctx.fanout(read, list(_by_cluster(ctx, params.services).items())) for c in cs]
        return Plan(changes=changes, notes=sorted(notes))

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        ecs = ctx.aws.client("ecs", change.target.split(":")[3])
        call = ecs.update_task_set if change.operation == "ecs:UpdateTaskSet" else ecs.update_service
        return tolerant_call(call, change.params, "TaskSetNotFoundException", *GONE)

    def narrow(self, params: ScaleParams, changes: Sequence[Change]) -> ScaleParams:
        changed = {(c.target.split(":")[3], c.params["cluster"], c.params["service"]) for c in changes}
        return params.model_copy(update={"services": [
            r for r in params.services
            if any((cl, n) == (r.cluster, r.name) and (not r.region or rg == r.region) for rg, cl, n in changed)]})


def _rolled_back(ecs: Any, now: str, was: str) -> bool:
    """True when a service moved from revision `was` to an older revision `now` of the same family."""
    same_family = now.rsplit(":", 1)[0] == was.rsplit(":", 1)[0]
    return same_family and _revision(now) < _revision(was)


class HijackParams(Params):
    services: list[ServiceRef]


def _revision(arn: str) -> int:
    return int(arn.rsplit(":", 1)[-1])


@register
class RollBackHijackedServices(Action[HijackParams]):
    """A legitimate service (created before the incident window, where AWS reports createdAt) that the
    attacker pointed at a new, miner revision of its task definition family is rolled back to the
    newest earlier revision whose images match no miner pattern (and, where AWS reports registeredAt,
    registered before the window), instead of scaling production to 0. A service with no such
    revision is left to scale-to-zero. The step is gated: a responder confirms the revision."""

    name = "ecs.roll-back-hijacked-services"
    summary = "Roll hijacked legitimate services back to their last clean task definition revision"
    params_model = HijackParams
    permissions = ("ecs:DescribeServices", "ecs:DescribeTaskDefinition", "ecs:ListTaskDefinitions",
                   "ecs:UpdateService")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: HijackParams) -> Plan:
        start = ctx.incident.window_start_dt
        patterns = [*ctx.incident.indicators.images, *ctx.config.discovery.miner_patterns]
        if start is None:
            return Plan(notes=["no window_start in the incident: a hijack cannot be told from a deployment"])

        def clean(td: dict[str, Any]) -> bool:
            return not any(matches_miner(c.get("image", ""), patterns) for c in td.get("containerDefinitions", []))

        def read(key: tuple[tuple[str, str], list[ServiceRef]]) -> list[Change]:
            (region, cluster), refs = key
            ecs = ctx.aws.client("ecs", region)
            changes = []
            for svc in _describe_services(ecs, cluster, [r.name for r in refs]):
                created = svc.get("createdAt")
                if svc.get("status") != "ACTIVE" or (isinstance(created, datetime) and created >= start):
                    continue  # created inside the window: the attacker's own service, not a hijack
                current = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
                if clean(current):
                    continue  # already runs a clean revision (rolled back, or in scope for another reason)
                family_arns = list(paginate(ecs, "list_task_definitions", "taskDefinitionArns",
                                            familyPrefix=current["family"], status="ACTIVE"))
                older = sorted((a for a in family_arns if _revision(a) < current["revision"]
                                and a.split("/")[-1].rsplit(":", 1)[0] == current["family"]), key=_revision,
                               reverse=True)
                for arn in older:
                    td = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
                    registered = td.get("registeredAt")
                    if clean(td) and (not isinstance(registered, datetime) or registered < start):
                        changes.append(Change(
                            "ecs:UpdateService", svc["serviceArn"],
                            {"cluster": cluster, "service": svc["serviceName"], "taskDefinition": arn},
                            previous={"taskDefinition": current["taskDefinitionArn"]},
                            reason=f"legitimate service {cluster}/{svc['serviceName']} in {region} was switched to "
                                   f"miner revision {current['family']}:{current['revision']}; back to "
                                   f"{td['family']}:{td['revision']}"))
                        break
            return changes

        return Plan(changes=[c for cs in ctx.fanout(read, list(_by_cluster(ctx, params.services).items()))
                             for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("ecs", change.target.split(":")[3]).update_service, change.params,
                             *GONE)


@register
class DeleteDaemonServices(Action[ServicesParams]):
    """DAEMON services run one task per container instance and cannot be scaled: containment deletes
    them, as a gated step after the evidence (service and task definition) is captured."""

    name = "ecs.delete-daemon-services"
    summary = "Delete in-scope DAEMON services, which cannot be scaled to 0 (irreversible; gate it)"
    params_model = ServicesParams
    permissions = ("ecs:DescribeServices", "ecs:DeleteService")
    risk = "irreversible"

    def plan(self, ctx: ActionContext, params: ServicesParams) -> Plan:
        def read(key: tuple[tuple[str, str], list[ServiceRef]]) -> list[Change]:
            (region, cluster), refs = key
            ecs = ctx.aws.client("ecs", region)
            return [Change("ecs:DeleteService", svc["serviceArn"],
                           {"cluster": cluster, "service": svc["serviceName"], "force": True},
                           previous={"status": "ACTIVE", "schedulingStrategy": "DAEMON",
                                     "taskDefinition": svc.get("taskDefinition")},
                           reason=f"DAEMON service {cluster}/{svc['serviceName']} in {region} cannot be scaled to 0")
                    for svc in _describe_services(ecs, cluster, [r.name for r in refs])
                    if svc.get("status") == "ACTIVE" and svc.get("schedulingStrategy") == "DAEMON"]

        return Plan(changes=[c for cs in ctx.fanout(read, list(_by_cluster(ctx, params.services).items())) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("ecs", change.target.split(":")[3]).delete_service, change.params,
                             *GONE)


class TasksParams(Params):
    services: list[ServiceRef] = []
    tasks: list[TaskRef] = []


@register
class StopTasks(Action[TasksParams]):
    """Stop the running tasks of in-scope services and in-scope standalone tasks.

    A task belongs to a service only when its `group` is `service:NAME` (moto's list_tasks does
    not filter by serviceName, and neither does this action trust it)."""

    name = "ecs.stop-tasks"
    summary = "Stop running tasks of in-scope services and standalone miner tasks (reason names the incident)"
    params_model = TasksParams
    permissions = ("ecs:ListTasks", "ecs:DescribeTasks", "ecs:StopTask")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: TasksParams) -> Plan:
        reason = f"stanch containment of incident {ctx.incident.id}"
        clusters: dict[tuple[str, str], tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
        for s in params.services:
            clusters[(_region(ctx, s.region), s.cluster)][0].add(s.name)
        for t in params.tasks:
            clusters[(_region(ctx, t.region), t.cluster)][1].add(t.arn.rsplit("/", 1)[-1])

        def read(item: tuple[tuple[str, str], tuple[set[str], set[str]]]) -> list[Change]:
            (region, cluster), (services, task_ids) = item
            ecs = ctx.aws.client("ecs", region)
            try:
                arns = list(paginate(ecs, "list_tasks", "taskArns", cluster=cluster, desiredStatus="RUNNING"))
            except ClientError as exc:
                if is_code(exc, *GONE):
                    return []
                raise
            changes = []
            for i in range(0, len(arns), 100):
                for task in ecs.describe_tasks(cluster=cluster, tasks=arns[i:i + 100])["tasks"]:
                    group = task.get("group", "")
                    tid = task["taskArn"].rsplit("/", 1)[-1]
                    owner = group.split(":", 1)[1] if group.startswith("service:") else None
                    if task.get("desiredStatus") != "RUNNING" or not (owner in services or tid in task_ids):
                        continue
                    why = f"task of service {cluster}/{owner}" if owner in services else "in-scope standalone task"
                    changes.append(Change("ecs:StopTask", task["taskArn"],
                                          {"cluster": cluster, "task": task["taskArn"], "reason": reason},
                                          previous={"desiredStatus": "RUNNING", "group": group}, reason=why))
            return changes

        return Plan(changes=[c for cs in ctx.fanout(read, list(clusters.items())) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("ecs", change.target.split(":")[3]).stop_task, change.params,
                             "InvalidParameterException", *GONE)


# ------------------------------------------------------------------ eradication (irreversible)

@register
class DeleteServices(Action[ServicesParams]):
    name = "ecs.delete-services"
    summary = "Delete ECS services (eradication, irreversible)"
    params_model = ServicesParams
    permissions = ("ecs:DescribeServices", "ecs:DeleteService")
    risk = "irreversible"

    def plan(self, ctx: ActionContext, params: ServicesParams) -> Plan:
        def read(key: tuple[tuple[str, str], list[ServiceRef]]) -> list[Change]:
            (region, cluster), refs = key
            ecs = ctx.aws.client("ecs", region)
            return [Change("ecs:DeleteService", svc["serviceArn"],
                           {"cluster": cluster, "service": svc["serviceName"], "force": True},
                           previous={"status": svc["status"], "taskDefinition": svc.get("taskDefinition"),
                                     "desiredCount": svc.get("desiredCount")},
                           reason=f"eradicate service {cluster}/{svc['serviceName']}")
                    for svc in _describe_services(ecs, cluster, [r.name for r in refs])
                    if svc.get("status") == "ACTIVE"]

        return Plan(changes=[c for cs in ctx.fanout(read, list(_by_cluster(ctx, params.services).items())) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("ecs", change.target.split(":")[3]).delete_service, change.params,
                             *GONE)


class TaskDefinitionsParams(Params):
    task_definitions: list[TaskDefinitionRef]


@register
class DeregisterTaskDefinitions(Action[TaskDefinitionsParams]):
    name = "ecs.deregister-task-definitions"
    summary = "Deregister task definitions (eradication, irreversible)"
    params_model = TaskDefinitionsParams
    permissions = ("ecs:DescribeTaskDefinition", "ecs:DeregisterTaskDefinition")
    risk = "irreversible"

    def plan(self, ctx: ActionContext, params: TaskDefinitionsParams) -> Plan:
        def read(ref: TaskDefinitionRef) -> Change | None:
            region = ref.region or ref.arn.split(":")[3]
            try:
                td = ctx.aws.client("ecs", region).describe_task_definition(taskDefinition=ref.arn)["taskDefinition"]
            except ClientError as exc:
                if is_code(exc, "ClientException"):
                    return None
                raise
            if td.get("status") != "ACTIVE":
                return None
            return Change("ecs:DeregisterTaskDefinition", td["taskDefinitionArn"],
                          {"taskDefinition": td["taskDefinitionArn"]}, previous={"status": "ACTIVE"},
                          reason="eradicate the miner's task definition")

        unique = list({r.arn: r for r in params.task_definitions}.values())
        return Plan(changes=[c for c in ctx.fanout(read, unique) if c])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        ctx.aws.client("ecs", change.target.split(":")[3]).deregister_task_definition(**change.params)
        return "applied"


class ClustersParams(Params):
    clusters: list[ClusterRef]


@register
class DeleteClusters(Action[ClustersParams]):
    """Delete clusters that hold no other active service (a shared cluster is left alone)."""

    name = "ecs.delete-clusters"
    summary = "Delete ECS clusters left empty by eradication (irreversible)"
    params_model = ClustersParams
    permissions = ("ecs:DescribeClusters", "ecs:ListServices", "ecs:DescribeServices", "ecs:DeleteCluster")
    risk = "irreversible"
    ordered = True

    def plan(self, ctx: ActionContext, params: ClustersParams) -> Plan:
        changes, notes = [], []
        for ref in {(c.region, c.name): c for c in params.clusters}.values():
            ecs = ctx.aws.client("ecs", _region(ctx, ref.region))
            found = ecs.describe_clusters(clusters=[ref.name])["clusters"]
            if not found or found[0].get("status") != "ACTIVE":
                continue
            arns = list(paginate(ecs, "list_services", "serviceArns", cluster=ref.name))
            active = [s["serviceName"] for s in _describe_services(ecs, ref.name, arns) if s.get("status") == "ACTIVE"]
            if active:
                notes.append(f"cluster {ref.name} still has active services ({', '.join(active)}): left in place")
                continue
            changes.append(Change("ecs:DeleteCluster", found[0]["clusterArn"], {"cluster": ref.name},
                                  previous={"status": "ACTIVE"}, reason=f"eradicate empty cluster {ref.name}"))
        return Plan(changes=changes, notes=notes)

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("ecs", change.target.split(":")[3]).delete_cluster, change.params,
                             "ClusterNotFoundException")
