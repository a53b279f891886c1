"""Lambda persistence the attacker left: resource-policy statements, functions and replaced code.

Each action reads the attributed CloudTrail events it handles, checks the function's live state
and undoes only what the attacker did: the statement with the Sid of the AddPermission event, a
reserved concurrency of 0 for functions the attacker created, aliases pinned back to the last
version published before the incident window. Nothing new is ever published."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from actions.base import ActionContext, Change, Outcome
from actions.common import is_code, paginate, tolerant_call
from actions.registry import register
from actions.triage import UndoAction, Verdict, event_id, region_of
from runner.techniques import request, response

GONE = "ResourceNotFoundException"
_LAST_MODIFIED = re.compile(
    r"(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?(?P<zone>Z|[+-]\d\d:?\d\d)?$")


def _function_arn(ctx: ActionContext, region: str, function: str) -> str:
    if function.startswith("arn:"):
        return function
    return f"arn:aws:lambda:{region}:{ctx.incident.account_id}:function:{function}"


def _region(target: str) -> str:
    return target.split(":")[3]


def _name(function: str) -> str:
    """`arn:aws:lambda:r:a:function:name[:qualifier]` or `name` -> `name`."""
    return function.split(":")[6] if function.startswith("arn:") else function


def _statements(client: Any, function: str, qualifier: str | None) -> list[dict[str, Any]] | None:
    """The function's resource-policy statements; None when the function (or its policy) is gone."""
    kwargs = {"FunctionName": function, **({"Qualifier": qualifier} if qualifier else {})}
    try:
        policy = json.loads(client.get_policy(**kwargs)["Policy"])
    except ClientError as exc:
        if is_code(exc, GONE):
            return None
        raise
    stmts = policy.get("Statement", [])
    return stmts if isinstance(stmts, list) else [stmts]


def add_permission_params(function: str, sid: str, statement: dict[str, Any],
                          qualifier: str | None) -> dict[str, Any]:
    """AddPermission parameters that recreate `statement` (used by rollback)."""
    principal = statement.get("Principal")
    if isinstance(principal, dict):
        principal = principal.get("Service") or principal.get("AWS") or "*"
    cond = statement.get("Condition") or {}
    params: dict[str, Any] = {"FunctionName": function, "StatementId": sid, "Action": statement.get("Action"),
                              "Principal": str(principal)}
    source_arn = (cond.get("ArnLike") or {}).get("AWS:SourceArn")
    source_account = (cond.get("StringEquals") or {}).get("AWS:SourceAccount")
    org = (cond.get("StringEquals") or {}).get("aws:PrincipalOrgID")
    params.update({k: v for k, v in (("SourceArn", source_arn), ("SourceAccount", source_account),
                                     ("PrincipalOrgID", org), ("Qualifier", qualifier)) if v})
    return params


@register
class RemoveAttackerPermissions(UndoAction):
    """Remove exactly the resource-policy statements the attacker added (by the Sid of its AddPermission)."""

    name = "lambda.remove-attacker-permissions"
    summary = "Remove Lambda resource-policy statements the attacker added (statement recorded)"
    permissions = ("lambda:GetPolicy", "lambda:RemovePermission")
    reverts = {"lambda:RemovePermission": ("lambda:AddPermission",)}

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        out = []
        for e in events:
            req, eid, region = request(e), event_id(e), region_of(e, ctx)
            function, sid, qualifier = str(req.get("functionName", "")), str(req.get("statementId", "")), \
                req.get("qualifier")
            client = ctx.aws.client("lambda", region)
            stmts = _statements(client, function, qualifier)
            found = [s for s in stmts or [] if s.get("Sid") == sid]
            if not found:
                out.append(Verdict(eid, "no_action_needed", f"statement {sid} is no longer in the resource policy "
                                                            f"of function {_name(function)}"))
                continue
            params = {"FunctionName": function, "StatementId": sid, **({"Qualifier": qualifier} if qualifier else {})}
            change = Change("lambda:RemovePermission", _function_arn(ctx, region, function), params,
                            previous={"Statement": found[0]},
                            reason=f"statement {sid} the attacker added to function {_name(function)} at "
                                   f"{e.get('eventTime')}")
            out.append(Verdict(eid, "contained", f"statement {sid} is removed from function {_name(function)}",
                               changes=[change]))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        client = ctx.aws.client("lambda", _region(change.target))
        if change.operation == "lambda:AddPermission":  # the statement is back already: nothing to do
            return tolerant_call(client.add_permission, change.params, "ResourceConflictException")
        return tolerant_call(client.remove_permission, change.params, GONE)

    def inverse(self, change: dict[str, Any]) -> Change | None:
        p, prev = change["params"], change.get("previous") or {}
        if not prev.get("Statement"):
            return None
        params = add_permission_params(p["FunctionName"], p["StatementId"], prev["Statement"], p.get("Qualifier"))
        return Change("lambda:AddPermission", change["target"], params, previous={"Statement": None},
                      reason=f"undo lambda:RemovePermission: statement {p['StatementId']} back")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        p = change.params
        stmts = _statements(ctx.aws.client("lambda", _region(change.target)), p["FunctionName"], p.get("Qualifier"))
        return stmts is None or any(s.get("Sid") == p["StatementId"] for s in stmts)


def _reserved(client: Any, function: str) -> tuple[bool, int | None]:
    """(exists, reserved concurrency or None)."""
    try:
        resp = client.get_function_concurrency(FunctionName=function)
    except ClientError as exc:
        if is_code(exc, GONE):
            return False, None
        raise
    value = resp.get("ReservedConcurrentExecutions")
    return True, int(value) if value is not None else None


@register
class ThrottleAttackerFunctions(UndoAction):
    """Functions the attacker created get a reserved concurrency of 0: nothing can invoke them, and
    the function stays for the investigation (the previous setting is recorded)."""

    name = "lambda.throttle-attacker-functions"
    summary = "Set reserved concurrency 0 on Lambda functions the attacker created (previous value recorded)"
    permissions = ("lambda:GetFunctionConcurrency", "lambda:PutFunctionConcurrency")
    reverts = {"lambda:PutFunctionConcurrency": ("lambda:PutFunctionConcurrency", "lambda:DeleteFunctionConcurrency")}

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        out = []
        for e in events:
            eid, region = event_id(e), region_of(e, ctx)
            function = str(request(e).get("functionName") or response(e).get("functionName") or "")
            exists, reserved = _reserved(ctx.aws.client("lambda", region), function)
            name = _name(function)
            if not exists:
                out.append(Verdict(eid, "no_action_needed", f"function {name} no longer exists"))
                continue
            changes = [] if reserved == 0 else [Change(
                "lambda:PutFunctionConcurrency", _function_arn(ctx, region, name),
                {"FunctionName": name, "ReservedConcurrentExecutions": 0},
                previous={"ReservedConcurrentExecutions": reserved},
                reason=f"function {name} created by the attacker at {e.get('eventTime')}")]
            out.append(Verdict(eid, "contained", f"function {name} is throttled to 0 concurrent executions (kept for "
                                                 "the investigation)", changes=changes))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        client = ctx.aws.client("lambda", _region(change.target))
        if change.operation == "lambda:DeleteFunctionConcurrency":
            return tolerant_call(client.delete_function_concurrency, change.params, GONE)
        return tolerant_call(client.put_function_concurrency, change.params, GONE)

    def inverse(self, change: dict[str, Any]) -> Change | None:
        name = change["params"]["FunctionName"]
        before = (change.get("previous") or {}).get("ReservedConcurrentExecutions")
        why = f"undo lambda:PutFunctionConcurrency: function {name} back to "
        if before is None:
            return Change("lambda:DeleteFunctionConcurrency", change["target"], {"FunctionName": name},
                          previous={"ReservedConcurrentExecutions": 0}, reason=why + "unreserved concurrency")
        return Change("lambda:PutFunctionConcurrency", change["target"],
                      {"FunctionName": name, "ReservedConcurrentExecutions": before},
                      previous={"ReservedConcurrentExecutions": 0}, reason=why + f"{before}")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        exists, reserved = _reserved(ctx.aws.client("lambda", _region(change.target)), change.params["FunctionName"])
        return not exists or reserved == change.params.get("ReservedConcurrentExecutions")


def _modified(value: Any) -> datetime | None:
    """Lambda's LastModified (`2026-11-20T10:14:00.000+0000`, moto: nanoseconds and `Z`) as an aware datetime."""
    if not isinstance(value, str):
        return None
    m = _LAST_MODIFIED.match(value.strip())
    if m is None:
        return None
    zone = (m.group("zone") or "Z").replace("Z", "+0000").replace(":", "")
    text = f"{m.group('base')}.{(m.group('fraction') or '0')[:6]}{zone}"
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


@register
class PinAliasesToEarlierVersions(UndoAction):
    """Code or layers replaced by the attacker: point every alias that now serves attacker code back to
    the last version published before the incident window. Publishes nothing. Without such a
    version, or without an alias, a person must redeploy the code (manual)."""

    name = "lambda.pin-aliases-to-earlier-versions"
    summary = "Point Lambda aliases back to the last version published before the incident window"
    permissions = ("lambda:ListVersionsByFunction", "lambda:ListAliases", "lambda:UpdateAlias")
    reverts = {"lambda:UpdateAlias": ("lambda:UpdateAlias",)}

    def verdicts(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        """A function the attacker created has no earlier code to return to: it is throttled instead."""
        created = {_name(str(request(e).get("functionName", ""))) for e in events
                   if str(e.get("eventName", "")).startswith("CreateFunction") and not e.get("errorCode")}
        mine = self.mine(events)
        theirs = [e for e in mine if _name(str(request(e).get("functionName", ""))) in created]
        out = [Verdict(event_id(e), "contained", f"function {_name(str(request(e)['functionName']))} was created by "
                                                 "the attacker: it is throttled to 0 (lambda.throttle-attacker-"
                                                 "functions), there is no earlier code to return to")
               for e in theirs]
        return out + self.assess(ctx, [e for e in mine if e not in theirs])

    def assess(self, ctx: ActionContext, events: list[dict[str, Any]]) -> list[Verdict]:
        start = ctx.incident.window_start_dt
        out = []
        for e in events:
            eid, region = event_id(e), region_of(e, ctx)
            name = _name(str(request(e).get("functionName", "")))
            client = ctx.aws.client("lambda", region)
            what = "layers" if request(e).get("layers") else "code or configuration"
            try:
                versions = list(paginate(client, "list_versions_by_function", "Versions", FunctionName=name))
                aliases = list(paginate(client, "list_aliases", "Aliases", FunctionName=name))
            except ClientError as exc:
                if is_code(exc, GONE):
                    out.append(Verdict(eid, "no_action_needed", f"function {name} no longer exists"))
                    continue
                raise
            when = {v["Version"]: _modified(v.get("LastModified")) for v in versions}
            before = [v for v, t in when.items() if v != "$LATEST" and t is not None and start is not None
                      and t < start]
            good = max(before, key=int) if before else None
            redeploy = (f"The attacker replaced the {what} of Lambda function {name} in {region} at "
                        f"{e.get('eventTime')}. Redeploy the function from your own source or pipeline "
                        f"(aws lambda update-function-code --function-name {name} ...), remove layers you did not "
                        "add, and check what it ran since.")
            if good is None:
                out.append(Verdict(eid, "manual", f"function {name} has no version published before the incident "
                                                  "window to return to", redeploy))
                continue
            if not aliases:
                out.append(Verdict(eid, "manual", f"function {name} has no alias to pin; its unqualified name runs "
                                                  f"the attacker's $LATEST (version {good} predates the window)",
                                   redeploy))
                continue
            changes = []
            for a in aliases:
                current = a["FunctionVersion"]
                tainted = current == "$LATEST" or (start is not None and (when.get(current) or start) >= start)
                if tainted and current != good:
                    changes.append(Change("lambda:UpdateAlias", str(a["AliasArn"]),
                                          {"FunctionName": name, "Name": a["Name"], "FunctionVersion": good},
                                          previous={"FunctionVersion": current},
                                          reason=f"alias {a['Name']} of {name} serves version {current}, published "
                                                 f"after the attacker changed the function"))
            out.append(Verdict(eid, "contained", f"the aliases of {name} serve version {good}, published before the "
                                                 "incident window ($LATEST still holds the attacker's change: "
                                                 "callers of the unqualified name run it)", changes=changes))
        return out

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        client = ctx.aws.client("lambda", _region(change.target))
        return tolerant_call(client.update_alias, change.params, GONE)

    def inverse(self, change: dict[str, Any]) -> Change | None:
        p, before = change["params"], (change.get("previous") or {}).get("FunctionVersion")
        if not before:
            return None
        return Change("lambda:UpdateAlias", change["target"], {**p, "FunctionVersion": before},
                      previous={"FunctionVersion": p["FunctionVersion"]},
                      reason=f"undo lambda:UpdateAlias: alias {p['Name']} of {p['FunctionName']} back to {before}")

    def restored(self, ctx: ActionContext, change: Change) -> bool:
        p = change.params
        try:
            alias = ctx.aws.client("lambda", _region(change.target)).get_alias(FunctionName=p["FunctionName"],
                                                                                 Name=p["Name"])
        except ClientError as exc:
            if is_code(exc, GONE):
                return True
            raise
        return bool(alias["FunctionVersion"] == p["FunctionVersion"])
