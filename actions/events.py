"""EventBridge rules and EventBridge Scheduler schedules that would relaunch the miner: those whose
ECS targets run an in-scope task definition, and those the attacker's credentials created. They are
disabled (reversible: enable them again); a schedule running any other task definition is left alone."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.common import TaskDefinitionRef, is_code, paginate, tolerant_call
from actions.registry import register
from runner.regions import scan_regions


class RelaunchersParams(Params):
    task_definitions: list[TaskDefinitionRef] = []
    #: CloudTrail records attributed to the attacker (scope.attacker_events): rules and schedules it created
    attacker_events: list[dict[str, Any]] = []


def _family_arn(arn: str) -> str:
    """`arn:...:task-definition/miner:3` -> `arn:...:task-definition/miner` (an unversioned target runs the latest)."""
    head, _, last = arn.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}"


def _runs_in_scope(td_arn: str | None, wanted: set[str]) -> str | None:
    if not td_arn:
        return None
    if td_arn in wanted:
        return td_arn
    if td_arn == _family_arn(td_arn) and any(_family_arn(w) == td_arn for w in wanted):
        return td_arn  # unversioned: runs the newest revision of an in-scope family
    return None


def _created_by_attacker(events: list[dict[str, Any]], name: str) -> dict[tuple[str, str, str], str]:
    """(region, container, name) -> event id, for rules (PutRule) or schedules (CreateSchedule)."""
    out: dict[tuple[str, str, str], str] = {}
    for e in events:
        if e.get("eventName") != name or e.get("errorCode"):
            continue
        req = e.get("requestParameters") or {}
        container = req.get("eventBusName") or req.get("groupName") or "default"
        if "/" in container:  # an event bus may be given as its ARN
            container = container.rsplit("/", 1)[-1]
        if req.get("name"):
            out[(str(e.get("awsRegion", "")), str(container), str(req["name"]))] = str(e.get("eventID", ""))
    return out


def _event_buses(events: Any) -> list[dict[str, Any]]:
    """Every event bus of a region (ListEventBuses has no paginator)."""
    buses: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {}
    while True:
        page = events.list_event_buses(**kwargs)
        buses += page.get("EventBuses", [])
        if not page.get("NextToken"):
            return buses
        kwargs["NextToken"] = page["NextToken"]


def _regions(ctx: ActionContext, params: RelaunchersParams, created: dict[tuple[str, str, str], str]) -> list[str]:
    found = {ref.region or ref.arn.split(":")[3] for ref in params.task_definitions}
    found |= {region for region, _, _ in created if region}
    return sorted(found)


@register
class DisableEventRules(Action[RelaunchersParams]):
    """Disable EventBridge rules (every event bus) that run in-scope task definitions or that the attacker created."""

    name = "events.disable-relaunch-rules"
    summary = "Disable EventBridge rules that run the miner's task definitions or were created by the attacker"
    params_model = RelaunchersParams
    permissions = ("events:ListEventBuses", "events:ListRules", "events:ListTargetsByRule", "events:DisableRule")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: RelaunchersParams) -> Plan:
        wanted = {ref.arn for ref in params.task_definitions}
        created = _created_by_attacker(params.attacker_events, "PutRule")

        def scan(region: str) -> list[Change]:
            events = ctx.aws.client("events", region)
            changes = []
            for bus in _event_buses(events):
                for rule in paginate(events, "list_rules", "Rules", EventBusName=bus["Name"]):
                    if rule.get("State") != "ENABLED":
                        continue
                    reasons = []
                    if (event_id := created.get((region, bus["Name"], rule["Name"]))) is not None:
                        reasons.append(f"created by the attacker (CloudTrail {event_id})")
                    for t in paginate(events, "list_targets_by_rule", "Targets", Rule=rule["Name"],
                                      EventBusName=bus["Name"]):
                        hit = _runs_in_scope((t.get("EcsParameters") or {}).get("TaskDefinitionArn"), wanted)
                        if hit:
                            reasons.append(f"target {t.get('Id')} runs in-scope task definition {hit}")
                    if reasons:
                        changes.append(Change("events:DisableRule", rule["Arn"],
                                              {"Name": rule["Name"], "EventBusName": bus["Name"]},
                                              previous={"State": "ENABLED"},
                                              reason=f"rule {rule['Name']} in {region}: " + "; ".join(reasons)))
            return changes

        return Plan(changes=[c for cs in scan_regions(ctx, "events", scan, _regions(ctx, params, created)) for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return tolerant_call(ctx.aws.client("events", change.target.split(":")[3]).disable_rule, change.params,
                             "ResourceNotFoundException")


#: the fields of a schedule UpdateSchedule takes (it replaces the whole schedule: all are sent back)
SCHEDULE_FIELDS = ("ActionAfterCompletion", "Description", "EndDate", "FlexibleTimeWindow", "GroupName", "KmsKeyArn",
                   "Name", "ScheduleExpression", "ScheduleExpressionTimezone", "StartDate", "Target")


def set_schedule_state(ctx: ActionContext, region: str, name: str, group: str, state: str) -> Outcome:
    """Re-send a schedule unchanged but for its State (read at apply time: the target's input is not copied
    into the plan, the journal or the audit log)."""
    client = ctx.aws.client("scheduler", region)
    try:
        current = client.get_schedule(Name=name, GroupName=group)
    except ClientError as exc:
        if is_code(exc, "ResourceNotFoundException"):
            return "already_done"
        raise
    if current.get("State") == state:
        return "already_done"
    client.update_schedule(**{k: current[k] for k in SCHEDULE_FIELDS if current.get(k) is not None}, State=state)
    return "applied"


@register
class DisableSchedules(Action[RelaunchersParams]):
    """Disable EventBridge Scheduler schedules that run in-scope task definitions or that the attacker created."""

    name = "events.disable-relaunch-schedules"
    summary = "Disable EventBridge Scheduler schedules that run the miner's task definitions or were created by " \
              "the attacker"
    params_model = RelaunchersParams
    permissions = ("scheduler:ListSchedules", "scheduler:GetSchedule", "scheduler:UpdateSchedule", "iam:PassRole")
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: RelaunchersParams) -> Plan:
        wanted = {ref.arn for ref in params.task_definitions}
        created = _created_by_attacker(params.attacker_events, "CreateSchedule")

        def scan(region: str) -> list[Change]:
            client = ctx.aws.client("scheduler", region)
            changes = []
            for summary in paginate(client, "list_schedules", "Schedules", State="ENABLED"):
                group = summary.get("GroupName") or "default"
                sched = client.get_schedule(Name=summary["Name"], GroupName=group)
                reasons = []
                if (event_id := created.get((region, group, sched["Name"]))) is not None:
                    reasons.append(f"created by the attacker (CloudTrail {event_id})")
                target = sched.get("Target") or {}
                hit = _runs_in_scope((target.get("EcsParameters") or {}).get("TaskDefinitionArn"), wanted)
                if hit:
                    reasons.append(f"runs in-scope task definition {hit}")
                if reasons and sched.get("State") == "ENABLED":
                    changes.append(Change("scheduler:UpdateSchedule", sched["Arn"],
                                          {"Name": sched["Name"], "GroupName": group, "State": "DISABLED"},
                                          previous={"State": "ENABLED"},
                                          reason=f"schedule {group}/{sched['Name']} in {region} "
                                                 f"({sched.get('ScheduleExpression')}): " + "; ".join(reasons)))
            return changes

        return Plan(changes=[c for cs in scan_regions(ctx, "scheduler", scan, _regions(ctx, params, created))
                             for c in cs])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        p = change.params
        return set_schedule_state(ctx, change.target.split(":")[3], p["Name"], p["GroupName"], p["State"])

