"""`stanch report`: the customer-facing report of an incident, across all its runs.

Given an incident id (or a run id, which names its incident) it reads the journal (every run,
change, approval, cancel and rollback), the latest run document and its evidence bundle, and
builds one typed document rendered as markdown, HTML or JSON. Nothing here calls AWS: the account
facts were read into the bundle (posture.json, account-summary.json) during the run.

The attack narrative, techniques and cost estimate live in runner/report_facts.py; this module
assembles the document and renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from actions.registry import builtin_registry
from runner.awserrors import clean_message, summarize_error
from runner.config import load_config
from runner.errors import InputError, Problem
from runner.journal import ApprovalRecord, ChangeRecord, RunRecord, open_journal
from runner.labels import operation_label
from runner.report_facts import (
    attacker_origins,
    attacker_steps,
    hardening_facts,
    mining_cost,
    recommendations,
)
from runner.status import ChangeStatus, StepStatus
from runner.ui import change_line, describe_change

APPLIED = ChangeStatus.DONE
#: actions that contain the root user's credentials (their manual part is the root key's hand-over)
ROOT_ACTIONS = ("iam.contain-root-credentials", "iam.delete-root-access-keys")


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ts(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class RunHistory:
    """One run of the incident as the journal holds it."""

    record: RunRecord
    changes: list[ChangeRecord]
    approvals: list[ApprovalRecord]

    @property
    def result(self) -> dict[str, Any]:
        return self.record.result or {}

    @property
    def is_rollback(self) -> bool:
        return self.record.playbook == "rollback"

    def step_actions(self) -> dict[str, str]:
        return {s["id"]: s.get("action", "") for s in self.result.get("steps", [])}


def load_history(ref: str, state: Path) -> tuple[str, list[RunHistory]]:
    """The incident id and every run of it, oldest first. `ref` is an incident id or a run id."""
    journal = open_journal(state)
    try:
        runs = journal.list_runs(limit=100_000)
        incident_id = next((r.incident_id for r in runs if r.run_id == ref), ref)
        mine = sorted((r for r in runs if r.incident_id == incident_id), key=lambda r: r.created_at)
        if not mine:
            raise InputError(ref, [Problem("", f"no run '{ref}' and no incident '{ref}' in {state}; "
                                               "`stanch status` lists the runs")])
        return incident_id, [RunHistory(r, journal.changes(r.run_id), journal.approvals(r.run_id)) for r in mine]
    finally:
        journal.close()


def build_report(ref: str, state: Path) -> dict[str, Any]:
    incident_id, history = load_history(ref, state)
    real = [h for h in history if not h.record.dry_run]
    containment = [h for h in real if not h.is_rollback]
    # the newest run with a scope and a bundle speaks for the account; a plan-only run if nothing else
    basis = next((h for h in reversed(containment) if h.result.get("scope")), None) or \
        next((h for h in reversed(history) if h.result.get("scope")), history[-1])
    incident = basis.record.incident
    result = basis.result
    scope = result.get("scope") or {}
    bundle = _bundle(result, state)
    config = load_config(basis.record.options.get("config"))
    registry = builtin_registry()

    def risk_of(h: RunHistory, step: str) -> str | None:
        cls = registry.get(h.step_actions().get(step, ""))
        return cls.risk if cls is not None else None

    actions: list[dict[str, Any]] = []
    for h in real:
        approvers = {a.step_id: a for a in h.approvals}
        for c in h.changes:
            obj, was, will = describe_change(c.change)
            appr = approvers.get(c.step_id)
            actions.append({
                "time": c.finished_at or c.started_at, "run_id": h.record.run_id,
                "kind": "rollback" if h.is_rollback else "containment", "step": c.step_id,
                "operation": c.change["operation"], "object": obj, "was": was, "will_be": will,
                "target": c.change["target"], "previous": c.change.get("previous", {}),
                "why": c.change.get("reason", ""), "result": c.status,
                "error": summarize_error(c.error) if c.error else None,
                "undo": operation_label(c.change["operation"], risk_of(h, c.step_id)),
                "approved_by": f"{appr.by} ({appr.reason})" if appr else "automatic",
            })
    actions.sort(key=lambda a: a["time"] or "")

    ecs_docs = _ecs_docs([_bundle(h.result, state) for h in containment] or [bundle])
    lookup = (_load(bundle / "cloudtrail" / "lookup-events.json") or {}) if bundle else {}
    activity = _activity(result)
    steps = attacker_steps(incident, scope, ecs_docs, activity)
    posture = _load(bundle / "posture.json") if bundle else None
    summary_map = (_load(bundle / "account-summary-after.json") or _load(bundle / "account-summary.json")) \
        if bundle else None
    facts = hardening_facts(summary_map, posture, scope, datetime.now(UTC))
    stopped = {a["target"]: a["time"] for a in actions if a["operation"] == "ecs:StopTask" and a["result"] in APPLIED}
    scaled = {a["target"]: a["time"] for a in actions
              if a["operation"] == "ecs:UpdateService" and a["result"] in APPLIED and a["kind"] == "containment"}
    cost = mining_cost(ecs_docs, scope, incident, stopped, scaled, config.pricing, datetime.now(UTC))

    runs = [_run_entry(h) for h in history]
    counts = _counts(history)
    images = sorted({img for s in scope.get("ecs_services", []) for img in s.get("images", [])})
    root_key = (scope.get("root") or {}).get("access_key_id")
    level, reasons = _risk(incident, scope, root_key, images)
    status = real[-1].record.status if real else history[-1].record.status
    now = datetime.now(UTC)
    return {
        "schema": "stanch.report/v2", "generated_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "incident_id": incident_id, "run_id": basis.record.run_id, "account_id": incident["account_id"],
        "region": incident["region"], "playbook": basis.record.playbook, "status": status,
        "summary_counts": counts, "runs": runs,
        "executive_summary": _executive(incident, scope, images, root_key, status, counts, actions, cost),
        "attacker_steps": steps, "attacker_activity": activity,
        "origins": attacker_origins(incident, lookup.get("events") or [], activity),
        "risk": {"level": level, "reasons": reasons},
        "timeline": _timeline(incident, scope, ecs_docs, history, actions, activity),
        "in_scope": {"users": [u["name"] for u in scope.get("users", [])],
                     "groups": [g["name"] for g in scope.get("groups", [])],
                     "roles": [r["name"] for r in scope.get("roles", [])],
                     "access_keys": [k["id"] for k in scope.get("access_keys", [])],
                     "ecs_services": [f"{s['cluster']}/{s['name']}" for s in scope.get("ecs_services", [])],
                     "root_access_key": root_key},
        "actions_taken": actions, "left_alone": scope.get("excluded", []),
        "manual_actions": result.get("manual_actions", []), "not_done": _not_done(result),
        "containment": _containment(actions, result, scope),
        "coverage": result.get("coverage") or {},
        "cost_estimate": cost, "hardening_facts": facts,
        "recommendations": recommendations(facts, root_key, bool(scope.get("ecs_services") or scope.get("ecs_tasks"))),
        "evidence": _evidence(result, bundle, actions),
    }


def _blind_periods(activity: list[dict[str, Any]], actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timeline entries for the time logging or detection was off because of the attacker: from its
    call until this run's change that restored it, or still open."""
    out = []
    for a in activity:
        blind = a.get("blind_period")
        if not blind:
            continue
        ended = [x["time"] for x in actions if blind.get("ended_by") and x["operation"] == blind["ended_by"]
                 and x["time"] and str(x["target"]).rsplit("/", 1)[-1] == str(a["resource"]).rsplit("/", 1)[-1]]
        until = f"until {min(ended)} (restored by this run)" if ended else "still open: a person must restore it" \
            if not blind.get("ended_by") else "still open: the step restoring it has not been applied"
        blind["until"] = min(ended) if ended else None
        what = f"BLIND PERIOD from {a['event'].split(':')[-1]} on {a['resource']}, {until}"
        out.append({"time": blind["from"], "who": "attacker", "source": "CloudTrail", "what": what})
        if ended:
            out.append({"time": min(ended), "who": "stanch", "source": "stanch",
                        "what": f"BLIND PERIOD ends: {a['resource']} restored"})
    return out


def _bundle(result: dict[str, Any], state: Path) -> Path | None:
    """The run's bundle as an absolute path (runs before 0.2 recorded it relative to the state directory's cwd)."""
    path = (result.get("evidence") or {}).get("path")
    if not path:
        return None
    bundle = Path(path)
    if not bundle.is_absolute():
        bundle = state.resolve() / "evidence" / str(result.get("incident_id")) / str(result.get("run_id"))
    return bundle


def _ecs_docs(bundles: list[Path | None]) -> list[dict[str, Any]]:
    """ECS evidence of every run, oldest first; a task described by several runs counts once, as
    first described (before containment stopped it)."""
    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for bundle in bundles:
        if bundle is None or not (bundle / "ecs").is_dir():
            continue
        for path in sorted((bundle / "ecs").rglob("*.json")):
            doc = _load(path)
            if not isinstance(doc, dict):
                continue
            tasks = [t for t in doc.get("tasks", []) if t.get("taskArn") not in seen]
            seen.update(str(t.get("taskArn")) for t in tasks)
            docs.append({**doc, "tasks": tasks})
    return docs


def _activity(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Attacker activity another part of stanch may attach to the run document (CloudTrail attribution)."""
    raw = result.get("attacker_activity")
    if isinstance(raw, dict):
        raw = raw.get("events") or raw.get("activity") or []
    return [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []


def _run_entry(h: RunHistory) -> dict[str, Any]:
    r = h.record
    applied = [c for c in h.changes if c.status in APPLIED]
    kind = "dry run" if r.dry_run else ("rollback" if h.is_rollback else "containment")
    entry: dict[str, Any] = {
        "run_id": r.run_id, "kind": kind, "playbook": r.playbook, "status": r.status, "started": r.created_at,
        "updated": r.updated_at, "changes_applied": len(applied),
        "changes_failed": sum(1 for c in h.changes if c.status == "failed"),
        "approvals": [{"step": a.step_id, "by": a.by, "reason": a.reason, "at": a.at} for a in h.approvals],
        "cancelled": h.result.get("cancelled"),
    }
    if h.is_rollback:
        steps = h.result.get("steps") or []
        entry["reverts"] = next((n.split("run ", 1)[1] for s in steps for n in s.get("notes") or []
                                 if "of run " in n), None)
    return entry


def _counts(history: list[RunHistory]) -> dict[str, Any]:
    """Counts straight from the journal: the summary quotes these and nothing else."""
    real = [h for h in history if not h.record.dry_run]
    by_status: dict[str, int] = {}
    for h in history:
        by_status[h.record.status] = by_status.get(h.record.status, 0) + 1
    contain = [c for h in real if not h.is_rollback for c in h.changes if c.status in APPLIED]
    undone = [c for h in real if h.is_rollback for c in h.changes if c.status in APPLIED]
    return {
        "runs": len(history), "runs_by_status": by_status,
        "dry_runs": sum(1 for h in history if h.record.dry_run),
        "rollbacks": sum(1 for h in real if h.is_rollback),
        "cancelled": by_status.get("cancelled", 0),
        "changes_applied": len(contain),
        "credential_changes": sum(1 for c in contain if c.change["operation"].startswith(("iam:", "organizations:",
                                                                                             "sts:"))),
        "workload_changes": sum(1 for c in contain if c.change["operation"].startswith(("ecs:", "ec2:",
                                                                                           "autoscaling:"))),
        "evidence_uploads": sum(1 for c in contain if c.change["operation"].startswith("s3:")),
        "changes_rolled_back": len(undone),
        "changes_failed": sum(1 for h in real for c in h.changes if c.status == "failed"),
        "approvals": sum(len(h.approvals) for h in history),
    }


def _risk(incident: dict[str, Any], scope: dict[str, Any], root_key: str | None,
          images: list[str]) -> tuple[str, list[str]]:
    root = bool(root_key) or any(p.get("type") == "root" for p in incident.get("principals", []))
    admin = bool(scope.get("groups")) or any(u.get("attached_policies") for u in scope.get("users", []))
    reasons = []
    if root:
        reasons.append("Root credentials were used" + (f" (access key {root_key})" if root_key else "") +
                       ": the highest privilege in the account, which no policy inside the account can limit.")
    if admin:
        reasons.append("The attacker created identities with administrator rights: persistence and privilege "
                       "escalation that outlive the leaked key.")
    if scope.get("ecs_services") or scope.get("ecs_tasks"):
        reasons.append(f"A cryptocurrency miner was deployed ({', '.join(images) or 'see the ECS evidence'}): "
                       "the bill grows with every running task, and crews scale it across regions.")
    if any(not u.get("created_in_window") for u in scope.get("users", [])):
        reasons.append("An existing user is in scope: legitimate credentials may be compromised.")
    level = "critical" if root else ("high" if reasons else str(incident.get("severity") or "medium"))
    return level, reasons


def _executive(incident: dict[str, Any], scope: dict[str, Any], images: list[str], root_key: str | None,
               status: str, counts: dict[str, Any], actions: list[dict[str, Any]], cost: dict[str, Any]) -> str:
    users = [u["name"] for u in scope.get("users", [])]
    groups = [g["name"] for g in scope.get("groups", [])]
    services = [f"{s['cluster']}/{s['name']}" for s in scope.get("ecs_services", [])]
    how = f"a root-level access key ({root_key})" if root_key else "stolen credentials"
    text = f"Someone gained unauthorized access to your AWS environment using {how}."
    made = []
    if users:
        made.append(f"created the IAM user{'s' if len(users) > 1 else ''} {', '.join(users)}")
    if groups:
        made.append(f"the group{'s' if len(groups) > 1 else ''} {', '.join(groups)}")
    if made:
        text += " They " + " and ".join(made) + ", and granted themselves administrator rights."
    if services:
        text += (f" They then ran a cryptocurrency miner ({', '.join(images) or 'unrecognised image'}) as the ECS "
                 f"service{'s' if len(services) > 1 else ''} {', '.join(services)}, under names chosen to look "
                 "like ordinary workloads. This is cryptojacking: it uses your computing power for the attacker's "
                 "profit, at your expense.")
    if cost.get("total") is not None and cost.get("items"):
        amount = f"about {cost['currency']} {cost['total']:.2f}" if cost["total"] >= 0.01 else \
            f"less than {cost['currency']} 0.01"
        text += (f" We estimate the mining cost {amount} so far, from the miner's size and running time "
                 "(see 'Estimated cost of the mining'; your bill is authoritative).")
    parts = []
    if counts["credential_changes"]:
        parts.append(f"{counts['credential_changes']} change(s) cut off the attacker's credentials")
    if counts["workload_changes"]:
        parts.append(f"{counts['workload_changes']} change(s) stopped the malicious workload")
    if status in ("contained", "needs_manual_action"):
        text += (" We have contained it: " + (" and ".join(parts) or "no change was needed") +
                 ", each recorded with the value it replaced so it can be reversed.")
    else:
        text += f" Containment is not complete (status: {status})" + (f"; so far {' and '.join(parts)}" if parts
                                                                       else "") + "."
    if counts["cancelled"]:
        text += f" {counts['cancelled']} run(s) were cancelled along the way (see the timeline)."
    if counts["changes_rolled_back"]:
        text += (f" {counts['changes_rolled_back']} change(s) were later rolled back on purpose (see 'Actions "
                 "taken').")
    if status == "needs_manual_action":
        text += " One step needs a person: see 'Manual actions still required'."
    text += (" We will work with your team to find how the credentials were exposed and to keep it from "
             "happening again.")
    return text


def _timeline(incident: dict[str, Any], scope: dict[str, Any], ecs_docs: list[dict[str, Any]],
              history: list[RunHistory], actions: list[dict[str, Any]],
              activity: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = list(_blind_periods(activity, actions))

    def add(time: Any, who: str, what: str, source: str) -> None:
        if _ts(time):
            rows.append({"time": time, "who": who, "what": clean_message(what, limit=400), "source": source})

    for e in incident.get("evidence", []):
        add(e["time"], e["actor"], e.get("detail") or e["event"], "CloudTrail")
    if incident.get("window_start"):
        add(incident["window_start"], "-", "earliest known malicious activity (start of the incident window)",
            "incident")
    start = _ts(incident.get("window_start"))
    for u in scope.get("users", []):
        if u.get("created_in_window"):
            add(u.get("created"), "attacker", f"IAM user {u['name']} created", "IAM")
    for g in scope.get("groups", []):
        created = _ts(g.get("created"))
        if created and start and created >= start:
            add(g["created"], "attacker", f"IAM group {g['name']} created", "IAM")
    for k in scope.get("access_keys", []):
        add(k.get("created"), "attacker", f"access key {k['id']} created for {k['user']}", "IAM")
    for doc in ecs_docs:
        for svc in doc.get("services", []):
            add(svc.get("createdAt"), svc.get("createdBy") or "attacker",
                f"ECS service {svc.get('serviceName')} created (desired count {svc.get('desiredCount')})", "ECS")
    add(incident["detected_at"], "detector", f"detected: {incident.get('summary') or incident['kind']}",
        (incident.get("source") or {}).get("format", "incident"))
    for h in history:
        r = h.record
        kind = "dry run" if r.dry_run else ("rollback run" if h.is_rollback else "run")
        add(r.created_at, str(r.options.get("by") or "stanch"), f"{kind} {r.run_id} started ({r.playbook})", "stanch")
        for a in h.approvals:
            add(a.at, a.by, f"approved step {a.step_id} of {r.run_id}: {a.reason}", "stanch")
        cancelled = h.result.get("cancelled")
        if cancelled:
            add(cancelled.get("at"), str(cancelled.get("by")), f"run {r.run_id} cancelled: {cancelled.get('reason')}",
                "stanch")
        elif r.status not in ("pending", "planning", "applying", "verifying", "awaiting_approval"):
            add(r.updated_at, "stanch", f"{kind} {r.run_id} finished: {r.status}", "stanch")
        elif r.status == "awaiting_approval":
            add(r.updated_at, "stanch", f"{kind} {r.run_id} paused: awaiting approval", "stanch")
    for act in actions:
        verb = "undone" if act["kind"] == "rollback" else "changed"
        what = f"{verb}: {act['operation']} {act['object']}: {act['was']} -> {act['will_be']}"
        if act["result"] == "failed":
            what = f"FAILED {act['operation']} {act['object']}: {act['error']}"
        add(act["time"], "stanch", what, "stanch")
    rows.sort(key=lambda t: _ts(t["time"]) or datetime.min.replace(tzinfo=UTC))
    return list({(t["time"], t["what"]): t for t in rows}.values())


def _containment(actions: list[dict[str, Any]], result: dict[str, Any], scope: dict[str, Any]) -> list[dict[str, Any]]:
    """The client's immediate-containment checklist, each item with what was done and what is left."""
    done = [a for a in actions if a["result"] in APPLIED and a["kind"] == "containment"]
    undone = [a for a in actions if a["result"] in APPLIED and a["kind"] == "rollback"]
    # steps are known by the action they run, never by a playbook's step ids
    action_of = {s["id"]: s.get("action", "") for s in result.get("steps", [])}
    left = {s["id"] for s in result.get("steps", [])
            if s["status"] in (StepStatus.AWAITING_APPROVAL, StepStatus.FAILED, StepStatus.SKIPPED)}

    def count(*ops: str) -> int:
        return sum(1 for a in done if a["operation"] in ops)

    def item(what: str, parts: list[str], needed: bool, acts: tuple[str, ...], extra: str = "") -> dict[str, Any]:
        waiting = sorted(s for s in left if action_of[s] in acts)
        status = "not needed" if not needed else ("pending" if waiting or not parts else "done")
        detail = "; ".join(parts) + (f"; not done: {', '.join(waiting)}" if waiting else "") + extra
        return {"item": what, "status": status, "detail": detail or "nothing in scope"}

    keys = count("iam:UpdateAccessKey")
    root = scope.get("root") or {}
    root_manual = any(action_of.get(m["step"]) in ROOT_ACTIONS for m in result.get("manual_actions", []))
    parts = tally((keys, "attacker access key(s) deactivated"))
    if count("organizations:AttachPolicy"):
        parts.append("an SCP denies the root user")
    if count("iam:DeleteAccessKey"):
        parts.append(f"{count('iam:DeleteAccessKey')} root access key(s) deleted")
    root_item = item("Revoke all AWS keys, including root", parts, bool(keys or root.get("access_keys_present")),
                     ("iam.deactivate-access-keys", "iam.delete-root-access-keys"))
    if root_manual:
        root_item.update(status="pending", detail=root_item["detail"] + "; root key: a manual action for a person")
    reverted = sum(1 for a in undone if a["operation"] == "ecs:UpdateService")
    principals = bool(scope.get("users") or scope.get("groups") or scope.get("roles"))
    return [
        root_item,
        item("Disable all newly created IAM users and roles", tally(
            (count("iam:PutUserPolicy", "iam:PutRolePolicy"), "quarantined with deny-all"),
            (count("iam:DeleteLoginProfile"), "console password(s) deleted"),
            (count("iam:DeactivateMFADevice"), "MFA device(s) deactivated"),
            (count("iam:RemoveUserFromGroup"), "group membership(s) removed")),
             principals, ("iam.quarantine-principals", "iam.delete-login-profiles", "iam.remove-from-groups")),
        item("Detach AdministratorAccess", tally(
            (count("iam:DetachUserPolicy", "iam:DetachGroupPolicy", "iam:DetachRolePolicy"), "attachment(s) removed")),
             principals, ("iam.detach-admin-policies",)),
        item("Stop ECS services and tasks running unauthorized workloads", tally(
            (count("ecs:UpdateService"), "service(s) scaled to 0"), (count("ecs:StopTask"), "task(s) stopped")),
             bool(scope.get("ecs_services") or scope.get("ecs_tasks")),
             ("ecs.scale-services-to-zero", "ecs.stop-tasks"),
             f"; {reverted} service(s) scaled back up by a rollback" if reverted else ""),
    ]


def tally(*counted: tuple[int, str]) -> list[str]:
    """'3 task(s) stopped' for each non-zero count."""
    return [f"{n} {what}" for n, what in counted if n]


def _not_done(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"step": s["id"], "action": s.get("action", ""), "status": s["status"], "changes": len(s["changes"]),
             "error": summarize_error(s.get("error")) if s.get("error") else None}
            for s in result.get("steps", []) if s["status"] in (StepStatus.AWAITING_APPROVAL, *StepStatus.STOPPED)]


def _evidence(result: dict[str, Any], bundle: Path | None, actions: list[dict[str, Any]]) -> dict[str, Any]:
    ev = dict(result.get("evidence") or {})
    manifest = _load(bundle / "manifest.json") if bundle else None
    uploads = [a for a in actions if a["operation"] == "s3:PutObject" and a["result"] in APPLIED]
    s3_uri = ev.get("s3_uri")
    if not s3_uri and uploads:
        bucket, _, key = uploads[0]["target"].removeprefix("arn:aws:s3:::").partition("/")
        s3_uri = f"s3://{bucket}/{key.rsplit('/', 1)[0]}/"
    return {
        "path": str(bundle) if bundle else None, "manifest_sha256": ev.get("manifest_sha256"),
        "s3_uri": s3_uri,
        "gaps": [{"source": g.get("source", ""), "reason": summarize_error(g.get("reason", ""))}
                 for g in (manifest or {}).get("gaps", [])],
    }


# ------------------------------------------------------------------ rendering

def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(r: dict[str, Any]) -> str:
    c = r["summary_counts"]
    out = [f"# Incident report {r['incident_id']}", "",
           f"Account {r['account_id']} ({r['region']}) · status **{r['status']}** · {c['runs']} run(s) · "
           f"generated {r['generated_at']}", "",
           *[line for m in r["manual_actions"] if m.get("first")
             for line in ("## Do this first", "", f"step `{m['step']}`:", "", "```", m["instructions"], "```", "")],
           "## Executive summary", "", r["executive_summary"], "",
           "| runs | cancelled | rollbacks | changes applied | credential | workload | rolled back | failed | "
           "approvals |", "|---|---|---|---|---|---|---|---|---|",
           f"| {c['runs']} | {c['cancelled']} | {c['rollbacks']} | {c['changes_applied']} | "
           f"{c['credential_changes']} | {c['workload_changes']} | {c['changes_rolled_back']} | "
           f"{c['changes_failed']} | {c['approvals']} |", ""]
    out += ["## What the attacker did", ""]
    for i, s in enumerate(r["attacker_steps"], 1):
        when = f" ({s['time']})" if s.get("time") else ""
        techniques = ", ".join(f"{t['id']} {t['name']}" for t in s["techniques"])
        out.append(f"{i}. **{_md(s['what'])}**{when}. {_md(s['meaning'])} *ATT&CK: {techniques}*")
    if not r["attacker_steps"]:
        out.append("No attacker activity is recorded in the incident or its evidence.")
    o = r["origins"]
    out += ["", "### Where it came from", ""]
    out += [f"- Source IP addresses: {', '.join(o['source_ips']) or 'not in the evidence'}",
            f"- User agents: {'; '.join(o['user_agents']) or 'not in the evidence'}",
            f"- Locations: {'; '.join(o['locations']) or 'not in the evidence'}"]
    out += ["", "## Timeline", "", "| time (UTC) | who | what | source |", "|---|---|---|---|"]
    out += [f"| {t['time']} | {_md(t['who'])} | {_md(t['what'])} | {t['source']} |" for t in r["timeline"]]
    out += ["", "## Runs", "", "| started (UTC) | run | kind | status | changes | approvals | note |",
            "|---|---|---|---|---|---|---|"]
    for run in r["runs"]:
        note = f"cancelled: {run['cancelled']['reason']}" if run.get("cancelled") else (
            f"reverts {run['reverts']}" if run.get("reverts") else "")
        out.append(f"| {run['started']} | {run['run_id']} | {run['kind']} | {run['status']} | "
                   f"{run['changes_applied']} | {len(run['approvals'])} | {_md(note)} |")
    out += _attacker_section(r.get("attacker_activity") or [])
    out += ["", f"## Risk level: {r['risk']['level'].capitalize()}", ""]
    out += [f"- {x}" for x in r["risk"]["reasons"]] or ["- no aggravating factors found"]
    out += ["", "## Actions taken", ""]
    if r["actions_taken"]:
        out += ["| time (UTC) | run | action | object | was → now | undo | result | approved by |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {a['time'] or '-'} | {a['run_id']} | {a['operation']} | {_md(a['object'])} | "
                f"{_md(a['was'])} → {_md(a['will_be'])} | {a['undo']} | {a['result']} | {_md(a['approved_by'])} |"
                for a in r["actions_taken"]]
    else:
        out.append("No change was made.")
    cov = r.get("coverage") or {}
    out += ["", "## What was searched", ""]
    out += [f"- {len(cov.get('regions', []))} region(s): {', '.join(cov.get('regions', [])) or 'not recorded'}"]
    out += [f"- **not searched**: {g['service']} in {g['region']} ({_md(g['error'])})"
            for g in cov.get("gaps", []) if g.get("blocking", True)]
    out += ["", "## Estimated cost of the mining", ""]
    out += _cost_md(r["cost_estimate"])
    out += ["", "## Deliberately left alone", ""]
    out += [f"- **{e['kind']} {_md(e['name'])}**: {_md(e['reason'])}" for e in r["left_alone"]] or ["- nothing"]
    out += ["", "## Manual actions still required", ""]
    out += [f"- step `{m['step']}`:\n\n```\n{m['instructions']}\n```" for m in r["manual_actions"]] or ["- none"]
    if r["not_done"]:
        out += ["", "### Not done", ""]
        out += [f"- `{n['step']}` ({n['action']}): {n['status']}, {n['changes']} change(s)"
                + (f": {_md(n['error'])}" if n.get("error") else "") for n in r["not_done"]]
    out += ["", "## Immediate containment", "", "| | status | what was done |", "|---|---|---|"]
    out += [f"| {c['item']} | {c['status']} | {_md(c['detail'])} |" for c in r["containment"]]
    out += ["", "## Recommended remediation"]
    for group in r["recommendations"]:
        out += ["", f"### {group['group']}", ""]
        out += [f"{i}. {x}" for i, x in enumerate(group["items"], 1)]
    out += ["", "### Account facts", "", "| check | finding |", "|---|---|"]
    marks = {"ok": "✅", "warn": "⚠️", "review": "🔎"}
    out += [f"| {f['fact']} | {marks[f['state']]} {_md(f['value'])} |" for f in r["hardening_facts"]]
    ev = r["evidence"]
    out += ["", "## Evidence", "", f"Bundle `{ev.get('path') or '-'}`, manifest SHA-256 "
            f"`{ev.get('manifest_sha256') or '-'}`; S3 copy: {ev.get('s3_uri') or 'none (not configured)'}. "
            f"Check it with `stanch evidence verify {r['run_id']}`."]
    out += [f"- gap: {g['source']}: {_md(g['reason'])}" for g in ev.get("gaps", [])]
    return "\n".join(out) + "\n"


def _attacker_section(activity: list[dict[str, Any]]) -> list[str]:
    """What the attacker did: every attributed call in time order, its outcome and ATT&CK id."""
    out = ["", "## Every attacker call and its outcome", ""]
    if not activity:
        return [*out, "No attributed attacker activity beyond the timeline above."]
    counts: dict[str, int] = {}
    for a in activity:
        counts[a.get("outcome", "listed")] = counts.get(a.get("outcome", "listed"), 0) + 1
    out += [", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(counts.items())) + ".", "",
            "| time (UTC) | call | resource | ATT&CK | outcome | why / what to do | event |",
            "|---|---|---|---|---|---|---|"]
    defaults = {"time": "", "event": "", "resource": "", "technique_id": "", "technique": "", "outcome": "listed",
                "why": "", "event_id": ""}  # older run documents carry fewer keys
    for given in activity:
        a = {**defaults, **given}
        text = a["instruction"] if a["outcome"] in ("manual", "exposed") and a.get("instruction") else a["why"]
        if a.get("blind_period"):
            blind = a["blind_period"]
            text += f" Blind period from {blind['from']} until {blind.get('until') or 'now (still open)'}."
        out.append(f"| {a['time']} | {_md(a['event'])} | {_md(a['resource'] or '-')} | "
                   f"{a['technique_id'] or '-'} {_md(a['technique'])} | **{a['outcome'].replace('_', ' ')}** | "
                   f"{_md(text)} | {_md(a['event_id'])} |")
    return out


def _cost_md(cost: dict[str, Any]) -> list[str]:
    if not cost["items"]:
        return [cost["note"]]
    lines = [cost["note"], "", "| workload | vCPU | memory (GB) | count | from | to | hours | estimate |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {_md(i['what'])} | {i['vcpu']} | {i['memory_gb']} | {i['count']} | {i['from']} | {i['to']} | "
              f"{i['hours']} | {cost['currency']} {i['cost']:.2f} |" for i in cost["items"]]
    lines += ["", f"Total: about **{cost['currency']} {cost['total']:.2f}**. Prices as of {cost['prices']['as_of']}: "
                  + ", ".join(f"{k} {v}" for k, v in cost["prices"].items() if k != "as_of") + "."]
    return lines


def render_html(r: dict[str, Any]) -> str:
    """One self-contained page; every value is autoescaped."""
    from importlib import resources

    from jinja2 import Environment

    template = resources.files("runner").joinpath("report_templates/report.html.j2").read_text(encoding="utf-8")
    env = Environment(autoescape=True, keep_trailing_newline=True)
    return env.from_string(template).render(r=r)


__all__ = ["build_report", "change_line", "render_html", "render_markdown"]
