"""Run notifications: an SNS topic and/or a signed webhook, when a run pauses for approval or ends.

The message is one JSON document (`stanch.notification/v1`): the run's status, what it changed, and
for a paused run the exact plan waiting for approval and the command that approves it. A webhook
POST carries `X-Stanch-Timestamp` (Unix seconds) and `X-Stanch-Signature: sha256=<hex>`, the
HMAC-SHA256 of `<timestamp>.<body>` under the configured secret; `verify_signature` is the check a
receiver makes. A notification that cannot be sent is logged and recorded, never fatal to the run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from runner.audit import redact_value
from runner.awserrors import describe_client_error
from runner.config import AwsSection, NotifySection
from runner.journal import now_iso

SCHEMA = "stanch.notification/v1"
SIGNATURE_HEADER = "X-Stanch-Signature"
TIMESTAMP_HEADER = "X-Stanch-Timestamp"
EVENT_HEADER = "X-Stanch-Event"
#: a receiver should refuse a signed request older than this (replay)
MAX_AGE_S = 300


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
                     max_age_s: float = MAX_AGE_S) -> bool:
    """What a webhook receiver checks: the signature (constant-time) and the timestamp's age."""
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    return abs(age) <= max_age_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def _run_url(template: str, doc: dict[str, Any]) -> str | None:
    if not template:
        return None
    return template.replace("{run_id}", str(doc.get("run_id", ""))).replace(
        "{incident_id}", str(doc.get("incident_id", "")))


def approve_flags(step: Any, plan_digest: Any) -> str:
    """`--step S --plan S=DIGEST`: the approval holds only for the plan shown next to it."""
    flags = f"--step {shlex.quote(str(step))}"
    return f"{flags} --plan {shlex.quote(f'{step}={plan_digest}')}" if plan_digest else flags


def message(doc: dict[str, Any], settings: NotifySection) -> dict[str, Any]:
    """The notification for a run document (already redacted by the caller; redacted again here)."""
    from runner.ui import change_line

    run_id = str(doc.get("run_id", ""))
    status = str(doc.get("status", ""))
    steps = doc.get("steps") or []
    pending = []
    for s in steps:
        if s.get("status") != "awaiting_approval":
            continue
        pending.append({
            "step": s.get("id"), "action": s.get("action"), "approval": s.get("approval", "required"),
            "plan_digest": s.get("plan_digest"),
            "notes": s.get("notes", []),
            "changes": [{"line": change_line(c), **{k: c.get(k) for k in ("operation", "target", "params",
                                                                          "previous")}}
                        for c in s.get("changes", []) if c.get("status") == "planned"],
        })
    applied = [{"step": s.get("id"), "line": change_line(c)} for s in steps for c in s.get("changes", [])
               if c.get("status") == "applied"]
    approve = None
    if pending:
        flags = " ".join(approve_flags(p["step"], p["plan_digest"]) for p in pending)
        approve = f"stanch approve {shlex.quote(run_id)} {flags} --by YOUR_NAME --reason 'WHY'"
    failed = [f"{s.get('id')}: {s.get('error')}" for s in steps if s.get("status") == "failed"]
    summary = {
        "awaiting_approval": f"run {run_id} is waiting for approval of {', '.join(str(p['step']) for p in pending)}",
        "contained": f"run {run_id} contained the incident ({len(applied)} change(s), verified)",
        "needs_manual_action": f"run {run_id} contained what it could; {len(doc.get('manual_actions') or [])} "
                               "manual action(s) remain",
        "partially_contained": f"run {run_id} is only partially contained",
        "failed": f"run {run_id} failed",
    }.get(status, f"run {run_id} is {status}")
    msg: dict[str, Any] = redact_value({
        "schema": SCHEMA, "event": status, "at": now_iso(), "summary": summary,
        "run_id": run_id, "incident_id": doc.get("incident_id"), "playbook": doc.get("playbook"),
        "status": status, "run_url": _run_url(settings.run_url, doc),
        "awaiting_approval": pending, "approve_command": approve, "applied": applied,
        "manual_actions": doc.get("manual_actions") or [], "failed_steps": failed, "error": doc.get("error"),
    })
    return msg


def text(msg: dict[str, Any]) -> str:
    """The same notification for people (SNS email subscribers)."""
    lines = [str(msg["summary"]), f"incident {msg['incident_id']}, playbook {msg['playbook']}"]
    if msg.get("run_url"):
        lines.append(str(msg["run_url"]))
    for p in msg["awaiting_approval"]:
        lines.append(f"\nStep {p['step']} ({p['action']}) waits for approval; it will make:")
        lines += [f"  - {c['line']}" for c in p["changes"]]
    if msg.get("approve_command"):
        lines.append(f"\nApprove (from any machine sharing the journal): {msg['approve_command']}")
    if msg["applied"]:
        lines.append("\nApplied:")
        lines += [f"  - {a['line']}" for a in msg["applied"]]
    for m in msg["manual_actions"]:
        lines.append(f"\nManual ({m.get('step')}): {m.get('instructions')}")
    for f in msg["failed_steps"]:
        lines.append(f"\nFailed: {f}")
    if msg.get("error"):
        lines.append(f"\n{msg['error']}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Channels:
    """Where to send, and with what AWS settings (SNS uses the runner's own credentials)."""

    settings: NotifySection
    aws: AwsSection
    profile: str | None = None
    endpoint_url: str | None = None


def _sns(channels: Channels, msg: dict[str, Any], body: str) -> str:
    from runner.aws import AwsSession

    topic = channels.settings.sns_topic_arn
    session = AwsSession(region=topic.split(":")[3], profile=channels.profile, endpoint_url=channels.endpoint_url,
                         settings=channels.aws)
    subject = f"stanch: {msg['status']} {msg['incident_id']} ({msg['run_id']})"[:100]
    resp = session.client("sns").publish(
        TopicArn=topic, Subject=subject, MessageStructure="json",
        Message=json.dumps({"default": body, "email": text(msg)}),
        MessageAttributes={k: {"DataType": "String", "StringValue": str(msg[k])}
                           for k in ("status", "incident_id", "run_id")})
    return str(resp.get("MessageId", ""))


def _webhook(settings: NotifySection, msg: dict[str, Any], body: bytes) -> str:
    secret = settings.secret()
    if not secret:
        where = f"environment variable {settings.webhook_secret_env}" if settings.webhook_secret_env \
            else "[notify] webhook_secret"
        raise ValueError(f"no signing secret ({where} is empty); not sent unsigned")
    last = ""
    for attempt in range(3):
        stamp = str(int(time.time()))
        request = urllib.request.Request(settings.webhook_url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "stanch", EVENT_HEADER: str(msg["status"]),
            TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, stamp, body)})
        try:
            with urllib.request.urlopen(request, timeout=settings.webhook_timeout) as resp:
                return f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code != 429:
                break  # the receiver refused it: sending it again will not help
        except (urllib.error.URLError, OSError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt < 2:
            time.sleep(0.5 * (attempt + 1))
    raise ValueError(last)


def _where(url: str) -> str:
    """Host and port of a webhook, never the user-info (`user:token@`) a URL may carry."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


def send(doc: dict[str, Any], channels: Channels, log: Any) -> list[dict[str, Any]]:
    """Send the run's notification to every configured channel; return what happened to each. Never
    raises for a channel's failure. The webhook is named by its host only (its URL may hold a token)."""
    settings = channels.settings
    if not settings.enabled or doc.get("dry_run") or doc.get("status") not in settings.on:
        return []
    msg = message(doc, settings)
    body = json.dumps(msg, sort_keys=True, default=str)
    records: list[dict[str, Any]] = []
    targets: list[tuple[str, str]] = []
    if settings.sns_topic_arn:
        targets.append(("sns", settings.sns_topic_arn))
    if settings.webhook_url:
        targets.append(("webhook", _where(settings.webhook_url)))
    for channel, where in targets:
        record: dict[str, Any] = {"channel": channel, "to": where, "event": msg["status"], "at": now_iso()}
        try:
            if channel == "sns":
                record["id"] = _sns(channels, msg, body)
            else:
                record["id"] = _webhook(settings, msg, body.encode())
            record["status"] = "sent"
            log.info("notify.sent", channel=channel, target=where, outcome="sent", status=msg["status"])
        except ClientError as exc:
            record.update(status="failed", error=describe_client_error(exc))
        except (BotoCoreError, ValueError, OSError) as exc:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        if record["status"] == "failed":
            log.info("notify.failed", channel=channel, target=where, outcome="failed", error=record["error"])
        records.append(record)
    return records
