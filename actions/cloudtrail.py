"""CloudTrail the attacker silenced: start logging again on a trail it stopped, and restore full
management-event logging on a trail whose event selectors it narrowed. A deleted trail is a
manual action (its settings are gone with it). Both changes are approval-gated in the playbook."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from actions.base import ActionContext, Change, Outcome, canonical
from actions.common import is_code, tolerant_call
from actions.registry import register
from actions.triage import UndoAction, Verdict, event_id, region_of
from runner.techniques import event_key, request

GONE = ("TrailNotFoundException",)
FULL = {"ReadWriteType": "All", "IncludeManagementEvents": True}


def _trail_arn(ctx: ActionContext, region: str, name: str) -> str:
    return name if name.startswith("arn:") else f"arn:aws:cloudtrail:{region}:{ctx.incident.account_id}:trail/{name}"


def _selectors(ct: Any, trail: str) -> dict[str, Any] | None:
    try:
        resp = ct.get_event_selectors(TrailName=trail)
    except ClientError as exc:
        if is_code(exc, *GONE):
            return None
        raise
    return {"EventSelectors": resp.get("EventSelectors") or [],
            "AdvancedEventSelectors": resp.get("AdvancedEventSelectors") or []}


def logs_all_management(sel: dict[str, Any]) -> bool:
    """True when a trail records every management event (no selectors at all is the default)."""
    basic, advanced = sel["EventSelectors"], sel["AdvancedEventSelectors"]
    if not basic and not advanced:
        return True
    return any(s.get("ReadWriteType", "All") == "All" and s.get("IncludeManagementEvents", True)
               and not s.get("ExcludeManagementEventSources") for s in basic)


def _deleted(name: str, e: dict[str, Any], region: str) -> Verdict:
    return Verdict(event_id(e), "manual", f"trail {name} no longer exists",
                   f"CloudTrail trail {name} in {region}, which the attacker {e.get('eventName')} at "
                   f"{e.get('eventTime')}, no longer exists. Re-create it with its previous bucket and settings "
                   "(aws cloudtrail create-trail ... then start-logging).")


@register
class RestoreLogging(UndoAction):
    """StartLogging where the attacker stopped a trail; all management events where it narrowed the selectors."""

    name = "cloudtrail.restore-logging"
    summary = "Start logging again on trails the attacker stopped; restore full management-event selectors"
    permissions = ("cloudtrail:GetTrailStatus", "cloudtrail:GetEventSelectors", "cloudtrail:StartLogging",
                   "cloudtrail:PutEventSelectors")
    reverts = {"cloudtrail:StartLogging": ("cloudtrail:StopLogging",),
               "cloudtrail:PutEventSelectors": ("cloudtrail:PutEventSelectors",)}

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        out = []
        for e in events:
            region, eid, req = region_of(e, ctx), event_id(e), request(e)
            ct = ctx.aws.client("cloudtrail", region)
            if event_key(e).endswith(":StopLogging"):
                name = str(req.get("name", ""))
                try:
                    logging = bool(ct.get_trail_status(Name=name)["IsLogging"])
                except ClientError as exc:
                    if not is_code(exc, *GONE):
                        raise
                    out.append(_deleted(name, e, region))
                    continue
                changes = [] if logging else [Change(
                    "cloudtrail:StartLogging", _trail_arn(ctx, region, name), {"Name": name},
                    previous={"IsLogging": False}, reason=f"the attacker stopped trail {name} at {e.get('eventTime')}")]
                why = f"trail {name} logs again" + ("" if changes else " (it was already logging)")
                out.append(Verdict(eid, "contained", why, changes=changes))
                continue
            name = str(req.get("trailName", ""))
            sel = _selectors(ct, name)
            if sel is None:
                out.append(_deleted(name, e, region))
            elif logs_all_management(sel):
                out.append(Verdict(eid, "contained", f"trail {name} records every management event"))
            elif sel["AdvancedEventSelectors"]:
                out.append(Verdict(eid, "manual", f"trail {name} uses advanced event selectors",
                                   f"The attacker changed the event selectors of trail {name} in {region} at "
                                   f"{e.get('eventTime')}. Restore selectors that record all management events "
                                   "(aws cloudtrail put-event-selectors)."))
            else:
                data = [r for s in sel["EventSelectors"] for r in s.get("DataResources", [])]
                wanted = [{**FULL, **({"DataResources": data} if data else {})}]
                out.append(Verdict(eid, "contained", f"trail {name} records all management events again (its data "
                                                     "event selectors kept)", changes=[Change(
                    "cloudtrail:PutEventSelectors", _trail_arn(ctx, region, name),
                    {"TrailName": name, "EventSelectors": wanted}, previous={"EventSelectors": sel["EventSelectors"]},
                    reason=f"the attacker narrowed the event selectors of {name} at {e.get('eventTime')}")]))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        ct = ctx.aws.client("cloudtrail", change.target.split(":")[3])
        call = {"cloudtrail:StartLogging": ct.start_logging, "cloudtrail:StopLogging": ct.stop_logging,
                "cloudtrail:PutEventSelectors": ct.put_event_selectors}[change.operation]
        return tolerant_call(call, change.params, *GONE)

    def inverse(self, change: dict[str, Any]) -> Change | None:
        p, prev = change["params"], change.get("previous") or {}
        if change["operation"] == "cloudtrail:StartLogging":
            return Change("cloudtrail:StopLogging", change["target"], dict(p), previous={"IsLogging": True},
                          reason=f"undo cloudtrail:StartLogging on {p['Name']}")
        if not prev.get("EventSelectors"):
            return None
        return Change("cloudtrail:PutEventSelectors", change["target"],
                      {"TrailName": p["TrailName"], "EventSelectors": prev["EventSelectors"]},
                      previous={"EventSelectors": p["EventSelectors"]},
                      reason=f"undo cloudtrail:PutEventSelectors on {p['TrailName']}")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        ct = ctx.aws.client("cloudtrail", change.target.split(":")[3])
        try:
            if change.operation == "cloudtrail:StopLogging":
                return not ct.get_trail_status(Name=change.params["Name"])["IsLogging"]
            sel = _selectors(ct, change.params["TrailName"])
        except ClientError as exc:
            if is_code(exc, *GONE):
                return True
            raise
        return sel is None or canonical(sel["EventSelectors"]) == canonical(change.params["EventSelectors"])
