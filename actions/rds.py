"""RDS snapshot shares the attacker added: remove exactly those account ids (or `all`) from the
snapshot's `restore` attribute; other shares stay. The removed value is recorded for rollback."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from actions.base import ActionContext, Change, Outcome
from actions.common import is_code, tolerant_call
from actions.ec2_exposure import whom
from actions.registry import register
from actions.triage import UndoAction, Verdict, event_id, region_of
from runner.techniques import event_key, request

#: event name -> (requestParameters key, boto3 parameter, describe method, result keys, modify method, kind)
KINDS = {
    "ModifyDBSnapshotAttribute": ("dBSnapshotIdentifier", "DBSnapshotIdentifier", "describe_db_snapshot_attributes",
                                  ("DBSnapshotAttributesResult", "DBSnapshotAttributes"),
                                  "modify_db_snapshot_attribute", "snapshot"),
    "ModifyDBClusterSnapshotAttribute": ("dBClusterSnapshotIdentifier", "DBClusterSnapshotIdentifier",
                                         "describe_db_cluster_snapshot_attributes",
                                         ("DBClusterSnapshotAttributesResult", "DBClusterSnapshotAttributes"),
                                         "modify_db_cluster_snapshot_attribute", "cluster-snapshot"),
}
GONE = ("DBSnapshotNotFound", "DBSnapshotNotFoundFault", "DBClusterSnapshotNotFoundFault")


def _kind(operation_or_event: str) -> str:
    return operation_or_event.rsplit(":", 1)[-1]


def restore_values(rds: Any, event_name: str, identifier: str) -> set[str] | None:
    """Who may restore the snapshot (account ids or `all`); None when the snapshot is gone."""
    _, param, describe, (outer, inner), _, _ = KINDS[event_name]
    try:
        result = getattr(rds, describe)(**{param: identifier})[outer]
    except ClientError as exc:
        if is_code(exc, *GONE):
            return None
        raise
    return {v for a in result.get(inner, []) if a.get("AttributeName") == "restore"
            for v in a.get("AttributeValues", [])}


@register
class UnshareAttackerDbSnapshots(UndoAction):
    """Remove the outside accounts (or public access) the attacker added to RDS (cluster) snapshots."""

    name = "rds.unshare-attacker-snapshots"
    summary = "Remove the outside accounts (or public access) the attacker added to RDS snapshot shares"
    permissions = ("rds:DescribeDBSnapshotAttributes", "rds:DescribeDBClusterSnapshotAttributes",
                   "rds:ModifyDBSnapshotAttribute", "rds:ModifyDBClusterSnapshotAttribute")
    reverts = {"rds:ModifyDBSnapshotAttribute": ("rds:ModifyDBSnapshotAttribute",),
               "rds:ModifyDBClusterSnapshotAttribute": ("rds:ModifyDBClusterSnapshotAttribute",)}

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        out = []
        for e in events:
            req, eid, region = request(e), event_id(e), region_of(e, ctx)
            event_name = event_key(e).split(":", 1)[1]
            key, param, _, _, _, kind = KINDS[event_name]
            ident = str(req.get(key, ""))
            added = [str(v) for v in req.get("valuesToAdd") or [] if str(v) != ctx.incident.account_id]
            if req.get("attributeName", "restore") != "restore" or not added:
                out.append(Verdict(eid, "no_action_needed", f"the call shared {kind} {ident} with no outside account"))
                continue
            live = restore_values(ctx.aws.client("rds", region), event_name, ident)
            if live is None:
                out.append(Verdict(eid, "no_action_needed", f"{kind} {ident} no longer exists"))
                continue
            present = [v for v in added if v in live]
            if not present:
                out.append(Verdict(eid, "no_action_needed", f"{kind} {ident} is no longer shared with "
                                                            f"{', '.join(added)}"))
                continue
            arn = f"arn:aws:rds:{region}:{ctx.incident.account_id}:{kind}:{ident}"
            changes = [Change(f"rds:{event_name}", arn, {param: ident, "AttributeName": "restore",
                                                          "ValuesToRemove": [v]},
                              previous={"restore": v},
                              reason=f"{kind} {ident} shared with {whom(v)} by the attacker at {e.get('eventTime')}")
                       for v in present]
            out.append(Verdict(eid, "contained", f"{kind} {ident} is no longer shared with {', '.join(present)}",
                               changes=changes))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        rds = ctx.aws.client("rds", change.target.split(":")[3])
        return tolerant_call(getattr(rds, KINDS[_kind(change.operation)][4]), change.params, *GONE)

    def inverse(self, change: dict[str, Any]) -> Change | None:
        value = (change.get("previous") or {}).get("restore")
        if not value:
            return None
        params = {k: v for k, v in change["params"].items() if k != "ValuesToRemove"}
        return Change(change["operation"], change["target"], {**params, "ValuesToAdd": [value]},
                      previous={"restore": None}, reason=f"undo {change['operation']}: shared with {value} again")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        event_name = _kind(change.operation)
        param = KINDS[event_name][1]
        live = restore_values(ctx.aws.client("rds", change.target.split(":")[3]), event_name, change.params[param])
        return live is None or set(change.params.get("ValuesToAdd", [])) <= live
