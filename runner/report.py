"""`stanch report`: the customer-facing incident report (markdown, HTML or JSON) built from the
journal, the run document and the evidence bundle. Nothing here calls AWS: the account facts were
read into the bundle (posture.json, account-summary.json) during the run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from actions.base import Change
from runner.errors import InputError, Problem
from runner.journal import SqliteJournal

STALE_DAYS = 90
ADMIN_NAME = "AdministratorAccess"


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ts(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return None


def build_report(run_id: str, state: Path) -> dict[str, Any]:
    journal = SqliteJournal(state)
    try:
        run = journal.get_run(run_id)
        changes = journal.changes(run_id)
        approvals = journal.approvals(run_id)
    finally:
        journal.close()
    result = run.result or {}
    if not result:
        raise InputError(run_id, [Problem("", f"run {run_id} has no result yet (status {run.status}); "
                                              f"resume it first")])
    incident = run.incident
    bundle = Path(result["evidence"]["path"]) if result.get("evidence") else None
    posture = _load(bundle / "posture.json") if bundle else None
    summary_map = (_load(bundle / "account-summary-after.json") or _load(bundle / "account-summary.json")) \
        if bundle else None
    ecs_files = sorted((bundle / "ecs").rglob("*.json")) if bundle and (bundle / "ecs").exists() else []
    ecs_docs = [d for d in (_load(p) for p in ecs_files) if d]
    scope = result.get("scope") or {}

    approvers = {a.step_id: a for a in approvals}
    finished = {(c.step_id, c.digest): c for c in changes}
    actions = []
    for step in result.get("steps", []):
        for c in step["changes"]:
            if c["status"] not in ("applied", "already_done"):
                continue
            digest = Change.from_json(c).digest
            rec = finished.get((step["id"], digest))
            appr = approvers.get(step["id"])
            actions.append({
                "time": rec.finished_at if rec else None, "step": step["id"], "operation": c["operation"],
                "target": c["target"], "what": c.get("reason", ""), "previous": c.get("previous", {}),
                "result": c["status"], "approved_by": f"{appr.by} ({appr.reason})" if appr else "automatic",
            })
    pending = [{"step": s["id"], "action": s["action"], "status": s["status"], "changes": len(s["changes"])}
               for s in result.get("steps", []) if s["status"] in ("awaiting_approval", "failed", "skipped")]

    # ---- what happened: one timeline from the incident, the evidence and the run
    now_ = datetime.now(UTC)
    timeline: list[dict[str, Any]] = []
    for e in incident.get("evidence", []):
        timeline.append({"time": e["time"], "who": e["actor"], "what": e.get("detail") or e["event"],
                         "source": "CloudTrail"})
    if incident.get("window_start"):
        timeline.append({"time": incident["window_start"], "who": "-", "what": "earliest known malicious activity "
                         "(start of the incident window)", "source": "incident"})
    root = scope.get("root") or {}
    for u in scope.get("users", []):
        if u.get("created_in_window"):
            timeline.append({"time": u.get("created"), "who": "attacker", "what": f"IAM user {u['name']} created",
                             "source": "IAM"})
    for g in scope.get("groups", []):
        if g.get("created") and incident.get("window_start") and (_ts(g["created"]) or now_) >= (
                _ts(incident["window_start"]) or now_):
            timeline.append({"time": g["created"], "who": "attacker", "what": f"IAM group {g['name']} created",
                             "source": "IAM"})
    for k in scope.get("access_keys", []):
        timeline.append({"time": k.get("created"), "who": "attacker", "what": f"access key {k['id']} created for "
                         f"{k['user']}", "source": "IAM"})
    for doc in ecs_docs:
        for svc in doc.get("services", []):
            timeline.append({"time": svc.get("createdAt"), "who": svc.get("createdBy") or "attacker",
                             "what": f"ECS service {svc.get('serviceName')} created (desired count "
                                     f"{svc.get('desiredCount')})", "source": "ECS"})
    timeline.append({"time": incident["detected_at"], "who": "detector",
                     "what": f"detected: {incident.get('summary') or incident['kind']}",
                     "source": (incident.get("source") or {}).get("format", "incident")})
    for a in actions:
        timeline.append({"time": a["time"], "who": "stanch", "what": f"{a['operation']}: {a['what'] or a['target']}",
                         "source": "stanch"})
    timeline = sorted((t for t in timeline if _ts(t["time"])), key=lambda t: _ts(t["time"]))  # type: ignore[arg-type,return-value]
    timeline = list({(t["time"], t["what"]): t for t in timeline}.values())

    # ---- risk
    images = sorted({img for s in scope.get("ecs_services", []) for img in s.get("images", [])})
    admin_in_scope = any(ADMIN_NAME in json.dumps(u.get("attached_policies", [])) for u in scope.get("users", [])) \
        or any("AdministratorAccess" in json.dumps(s) for s in result.get("steps", []) if s["id"].startswith("detach"))
    reasons = []
    root_key = root.get("access_key_id")
    if root_key or any(p.get("type") == "root" for p in incident.get("principals", [])):
        reasons.append(f"Root credentials were used{f' (access key {root_key})' if root_key else ''}: the highest "
                       "privilege in the account.")
    if admin_in_scope:
        reasons.append("Full administrator rights (AdministratorAccess) were granted to identities the attacker "
                       "created: persistence and privilege escalation.")
    if scope.get("ecs_services") or scope.get("ecs_tasks"):
        reasons.append(f"A cryptocurrency miner was deployed ({', '.join(images) or 'see the ECS evidence'}): "
                       "financial damage grows with every running task.")
    if any(not u.get("created_in_window") for u in scope.get("users", [])):
        reasons.append("An existing user is in scope: legitimate credentials may be compromised.")
    level = "critical" if root_key or any(p.get("type") == "root" for p in incident.get("principals", [])) else \
        ("high" if reasons else (incident.get("severity") or "medium"))

    # ---- hardening facts
    now = datetime.now(UTC)
    facts: list[dict[str, Any]] = []
    if summary_map is not None:
        facts.append({"fact": "Root user MFA", "value": "enabled" if summary_map.get("AccountMFAEnabled") else
                      "NOT enabled", "ok": bool(summary_map.get("AccountMFAEnabled"))})
        present = int(summary_map.get("AccountAccessKeysPresent", 0))
        facts.append({"fact": "Root access keys", "value": "present" if present else "none", "ok": not present})
    if posture:
        no_mfa = [u["name"] for u in posture["users"] if not u["mfa"]]
        facts.append({"fact": "IAM users without MFA", "value": ", ".join(no_mfa) or "none", "ok": not no_mfa})
        stale = []
        for u in posture["users"]:
            for k in u["keys"]:
                if k["status"] != "Active":
                    continue
                created, used = _ts(k.get("created")), _ts(k.get("last_used"))
                if created and now - created > timedelta(days=STALE_DAYS):
                    stale.append(f"{k['id']} ({u['name']}, older than {STALE_DAYS} days)")
                elif used is None:
                    stale.append(f"{k['id']} ({u['name']}, never used)")
                elif now - used > timedelta(days=STALE_DAYS):
                    stale.append(f"{k['id']} ({u['name']}, unused for {STALE_DAYS}+ days)")
        facts.append({"fact": "Active access keys that are old or unused", "value": "; ".join(stale) or "none",
                      "ok": not stale})
        holders = posture.get("admin_holders", {})
        named = [f"user {n}" for n in holders.get("users", [])] + [f"group {n}" for n in holders.get("groups", [])] \
            + [f"role {n}" for n in holders.get("roles", [])]
        facts.append({"fact": "Principals holding AdministratorAccess", "value": ", ".join(named) or "none",
                      "ok": len(named) <= 1})
        patterns = " ".join(str(r.get("pattern") or "") for r in posture.get("eventbridge_rules", [])
                            if r.get("state") == "ENABLED")
        facts.append({"fact": "EventBridge rule watching root use", "value": "yes" if '"Root"' in patterns else "no",
                      "ok": '"Root"' in patterns})
        facts.append({"fact": "EventBridge rule watching IAM changes", "value": "yes" if "iam.amazonaws.com" in
                      patterns or '"aws.iam"' in patterns else "no",
                      "ok": "iam.amazonaws.com" in patterns or '"aws.iam"' in patterns})
    gaps = []
    if bundle and (manifest := _load(bundle / "manifest.json")):
        gaps = manifest.get("gaps", [])

    users = [u["name"] for u in scope.get("users", [])]
    groups = [g["name"] for g in scope.get("groups", [])]
    services = [f"{s['cluster']}/{s['name']}" for s in scope.get("ecs_services", [])]
    contained = result.get("status") in ("contained", "needs_manual_action")
    executive = _executive(root_key, users, groups, services, images, admin_in_scope, contained, result, actions)
    return {
        "schema": "stanch.report/v1", "generated_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "run_id": run_id, "incident_id": run.incident_id, "account_id": incident["account_id"],
        "region": incident["region"], "playbook": run.playbook, "status": result.get("status"),
        "executive_summary": executive, "risk": {"level": level, "reasons": reasons},
        "timeline": timeline,
        "in_scope": {"users": users, "groups": groups, "roles": [r["name"] for r in scope.get("roles", [])],
                     "access_keys": [k["id"] for k in scope.get("access_keys", [])],
                     "ecs_services": services, "root_access_key": root_key},
        "actions_taken": actions, "left_alone": scope.get("excluded", []),
        "manual_actions": result.get("manual_actions", []), "not_done": pending,
        "coverage": result.get("coverage") or {},
        "hardening_facts": facts, "evidence": {**(result.get("evidence") or {}), "gaps": gaps},
        "recommendations": _recommendations(facts, root_key),
    }


def _executive(root_key: str | None, users: list[str], groups: list[str], services: list[str], images: list[str],
               admin: bool, contained: bool, result: dict[str, Any], actions: list[dict[str, Any]]) -> str:
    how = "a root-level access key" + (f" ({root_key})" if root_key else "") if root_key else "stolen credentials"
    made = []
    if users:
        made.append(f"created the IAM user{'s' if len(users) > 1 else ''} {', '.join(users)}")
    if groups:
        made.append(f"the group{'s' if len(groups) > 1 else ''} {', '.join(groups)}")
    text = f"Someone gained unauthorized access to your AWS environment using {how}."
    if made:
        text += " They " + " and ".join(made) + (", and granted full administrator rights" if admin else "") + "."
    if services:
        text += (f" They then ran a cryptocurrency miner ({', '.join(images) or 'unrecognised image'}) as the ECS "
                 f"service{'s' if len(services) > 1 else ''} {', '.join(services)}. This is cryptojacking: it steals "
                 "your computing power for profit and your bill grows with every running task.")
    if contained:
        text += (f" We have contained it: {len(actions)} change(s) revoked the attacker's credentials and stopped the "
                 "malicious workload, each recorded with the value it replaced so it can be reversed.")
    else:
        text += f" Containment is not complete (status: {result.get('status')}); see 'Not done' below."
    if result.get("manual_actions"):
        text += " One step needs a person: see 'Manual actions still required'."
    text += (" We will work with your team to understand how the credentials were exposed and to prevent it from "
             "happening again.")
    return text


def _recommendations(facts: list[dict[str, Any]], root_key: str | None) -> list[str]:
    bad = {f["fact"] for f in facts if not f["ok"]}
    recs = [
        "Identify the source of exposure of the root key" + (f" {root_key}" if root_key else "") +
        " (public repositories, .env files, CI logs, vendors) using the CloudTrail events in the evidence bundle.",
        "Delete every root access key; use IAM roles for automation.",
        "Rotate all secrets the attacker could have read (AWS Secrets Manager, SSM parameters, task definitions).",
    ]
    if "Root user MFA" in bad:
        recs.append("Enable MFA on the root user now.")
    if "IAM users without MFA" in bad:
        recs.append("Enforce MFA for every IAM user (deny actions without aws:MultiFactorAuthPresent).")
    if "Active access keys that are old or unused" in bad:
        recs.append(f"Deactivate unused access keys and rotate keys older than {STALE_DAYS} days.")
    if "Principals holding AdministratorAccess" in bad:
        recs.append("Apply least privilege: replace blanket AdministratorAccess with scoped policies.")
    if "EventBridge rule watching root use" in bad:
        recs.append("Alert on any root credential use (EventBridge rule on userIdentity.type = Root, including "
                    "GetCallerIdentity).")
    if "EventBridge rule watching IAM changes" in bad:
        recs.append("Alert on IAM create/attach events (CreateUser, CreateAccessKey, Attach*Policy) for "
                    "anomaly review.")
    recs.append("When the investigation is done, run the cryptojacking-eradicate playbook to delete the miner's "
                "services, task definitions and empty clusters (each step approval-gated).")
    return recs


# ------------------------------------------------------------------ rendering

def render_markdown(r: dict[str, Any]) -> str:
    out = [f"# Incident report {r['incident_id']}", "",
           f"Account {r['account_id']} ({r['region']}) · run {r['run_id']} · playbook {r['playbook']} · "
           f"status **{r['status']}** · generated {r['generated_at']}", "",
           *[line for m in r["manual_actions"] if m.get("first")
             for line in ("## Do this first", "", f"step `{m['step']}`:", "", "```", m["instructions"], "```", "")],
           "## Executive summary", "", r["executive_summary"], "",
           "## What happened", "", "| time (UTC) | who | what | source |", "|---|---|---|---|"]
    out += [f"| {t['time']} | {_md(t['who'])} | {_md(t['what'])} | {t['source']} |" for t in r["timeline"]]
    out += ["", f"## Risk level: {r['risk']['level'].capitalize()}", ""]
    out += [f"- {x}" for x in r["risk"]["reasons"]] or ["- no aggravating factors found"]
    out += ["", "## Actions taken", ""]
    if r["actions_taken"]:
        out += ["| time (UTC) | action | target | replaced | result | approved by |", "|---|---|---|---|---|---|"]
        out += [f"| {a['time'] or '-'} | {a['operation']} | {_md(a['target'])} | {_md(json.dumps(a['previous']))} | "
                f"{a['result']} | {_md(a['approved_by'])} |" for a in r["actions_taken"]]
    else:
        out.append("No change was made.")
    cov = r.get("coverage") or {}
    out += ["", "## What was searched", ""]
    out += [f"- {len(cov.get('regions', []))} region(s): {', '.join(cov.get('regions', [])) or 'not recorded'}"]
    out += [f"- **not searched**: {g['service']} in {g['region']} ({_md(g['error'])})"
            for g in cov.get("gaps", []) if g.get("blocking", True)]
    out += ["", "## Deliberately left alone", ""]
    out += [f"- **{e['kind']} {_md(e['name'])}**: {_md(e['reason'])}" for e in r["left_alone"]] or ["- nothing"]
    out += ["", "## Manual actions still required", ""]
    out += [f"- step `{m['step']}`:\n\n```\n{m['instructions']}\n```" for m in r["manual_actions"]] or ["- none"]
    if r["not_done"]:
        out += ["", "### Not done", ""]
        out += [f"- `{n['step']}` ({n['action']}): {n['status']}, {n['changes']} change(s)" for n in r["not_done"]]
    out += ["", "## Recommended remediation", ""]
    out += [f"{i}. {x}" for i, x in enumerate(r["recommendations"], 1)]
    out += ["", "### Account facts", "", "| check | finding |", "|---|---|"]
    out += [f"| {f['fact']} | {'✅' if f['ok'] else '⚠️'} {_md(f['value'])} |" for f in r["hardening_facts"]]
    ev = r["evidence"]
    out += ["", "## Evidence", "", f"Bundle `{ev.get('path', '-')}`, manifest SHA-256 "
            f"`{ev.get('manifest_sha256', '-')}`. Check it with `stanch evidence verify PATH`."]
    out += [f"- gap: {g['source']}: {_md(g['reason'])}" for g in ev.get("gaps", [])]
    return "\n".join(out) + "\n"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")




def render_html(r: dict[str, Any]) -> str:
    """One self-contained page; every value is autoescaped."""
    from importlib import resources

    from jinja2 import Environment

    template = resources.files("runner").joinpath("report_templates/report.html.j2").read_text(encoding="utf-8")
    env = Environment(autoescape=True, keep_trailing_newline=True)
    return env.from_string(template).render(r=r)
