"""Logging: structlog events to a JSON-lines audit log (hash-chained) and human progress on stderr.

Every event passes the redaction processor first, so secret access keys, session tokens and
passwords never reach stderr, the audit log or anything built from them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"(secret|password|passwd|session_?token|sessiontoken|credentials|private_?key)", re.I)
# AWS secret access keys: 40 chars of base64 with mixed case; session tokens: long base64 runs.
_SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
    r"|[A-Za-z0-9/+=]{100,}"
)
AUDIT_FIELDS = ("run_id", "incident_id", "playbook", "step", "action", "target", "operation",
                "dry_run", "outcome", "duration_ms")
GENESIS = "0" * 64


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v else redact_value(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: blank secret-named fields and secret-shaped strings, recursively."""
    return redact_value(event_dict)  # type: ignore[no-any-return]


def add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("ts", datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return event_dict


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


class AuditLog:
    """Append-only JSON lines; each line carries `seq` and `prev`, the SHA-256 of the line before it.

    Several processes may share one state directory (a run, `stanch approve`, a dry-run drill): each
    append takes an exclusive lock and continues the chain from the recorded head."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()

    def _tail(self) -> tuple[str, int]:
        head = head_path(self.path)
        if head.exists():
            try:
                doc = json.loads(head.read_text())
                return str(doc["sha256"]), int(doc["seq"])
            except (ValueError, KeyError, TypeError):
                pass  # rebuilt from the log below; verify_chain reports the damage
        if not self.path.exists():
            return GENESIS, 0
        last = ""
        with self.path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    last = raw.decode("utf-8", "replace").rstrip("\n")
        if not last:
            return GENESIS, 0
        try:
            seq = int(json.loads(last).get("seq", 0))
        except (ValueError, AttributeError):
            seq = 0
        return line_hash(last), seq

    def write(self, event: dict[str, Any]) -> None:
        with self._lock:
            lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                prev, seq = self._tail()
                record = {k: event.get(k) for k in AUDIT_FIELDS}
                record.update(event)
                record["seq"] = seq + 1
                record["prev"] = prev
                line = json.dumps(record, sort_keys=False, default=str, separators=(",", ":"))
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (line + "\n").encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                write_head(self.path, seq + 1, line_hash(line))
            finally:
                os.close(lock_fd)  # releases the flock


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def write_head(path: Path, seq: int, digest: str) -> None:
    """The last line's seq and hash, beside the log: lines cut from the end show against it."""
    tmp = head_path(path).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps({"seq": seq, "sha256": digest}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(head_path(path))


def verify_chain(path: Path) -> list[str]:
    """Problems with the audit log (empty: intact). Every line carries `seq` (1, 2, ...) and `prev`,
    the SHA-256 of the line before it, so an edit, a deletion and a reordering each show."""
    problems: list[str] = []
    lines = [raw for raw in path.read_text(encoding="utf-8", errors="replace").splitlines() if raw.strip()]
    by_seq: dict[int, tuple[int, str, str]] = {}  # seq -> (line number, prev, the line)
    highest = 0
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            seq, prev = int(rec["seq"]), str(rec["prev"])
        except (ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"line {n}: edited (not an audit record any more)")
            continue
        if seq < highest:
            problems.append(f"line {n}: reordered (seq {seq} comes after seq {highest})")
        highest = max(highest, seq)
        by_seq[seq] = (n, prev, line)
    head = head_path(path)
    if head.exists():
        try:
            last = json.loads(head.read_text())
            if int(last["seq"]) > highest:
                problems.append(f"seq {highest + 1}-{last['seq']}: lines cut from the end of the log")
            elif int(last["seq"]) == highest and highest in by_seq and line_hash(by_seq[highest][2]) != last["sha256"]:
                problems.append(f"line {by_seq[highest][0]} (seq {highest}): edited (the last line no longer matches "
                                "the recorded head)")
        except (ValueError, KeyError, TypeError):
            problems.append(f"{head.name}: unreadable")
    for seq in range(1, highest + 1):
        if seq not in by_seq:
            problems.append(f"seq {seq}: line deleted")
            continue
        n, prev, _ = by_seq[seq]
        expected = GENESIS if seq == 1 else (line_hash(by_seq[seq - 1][2]) if seq - 1 in by_seq else None)
        if expected is not None and prev != expected:
            what = "the chain's start" if seq == 1 else f"line {by_seq[seq - 1][0]} (seq {seq - 1})"
            problems.append(f"{what}: edited (its hash no longer matches what line {n} recorded)")
    return problems


_LABELS = {
    "run.started": "run", "run.status": "status", "run.finished": "done",
    "step.planned": "plan", "step.noop": "noop", "step.applied": "applied", "step.failed": "FAILED",
    "step.skipped": "skipped", "step.refused": "REFUSED", "step.manual": "MANUAL",
    "step.awaiting_approval": "waiting", "approval.recorded": "approved", "approval.stale": "drift",
    "change.planned": "  change", "change.started": "→", "change.applied": "✔", "change.already_done": "=",
    "change.failed": "✘",
    "verify.ok": "verified", "verify.failed": "UNVERIFIED",
}


def render_human(event: dict[str, Any]) -> str:
    name = str(event.get("event", ""))
    label = _LABELS.get(name, name)
    ts = str(event.get("ts", ""))[11:19]
    step = event.get("step") or ""
    parts = []
    for key in ("incident_id", "playbook", "identity", "operation", "target", "changes", "outcome", "status", "by",
                "message", "error"):
        if name != "run.started" and key in ("incident_id", "playbook", "identity"):
            continue
        if event.get(key) not in (None, "", []):
            val = event[key]
            parts.append(str(val) if key in ("operation", "target", "message") else f"{key}={val}")
    if event.get("duration_ms") is not None and name.startswith(("change.", "step.")):
        parts.append(f"({event['duration_ms']} ms)")
    return f"{ts} {label:<10} {step:<26} {' '.join(parts)}".rstrip()


class EventSink:
    """The final structlog 'logger': writes each event to the audit log and renders it on stderr."""

    def __init__(self, audit: AuditLog | None, stream: TextIO | None) -> None:
        self.audit = audit
        self.stream = stream
        self._lock = threading.Lock()

    def msg(self, event: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.write(event)
        if self.stream is not None and event.get("event") != "change.started":
            with self._lock:
                self.stream.write(render_human(event) + "\n")
                self.stream.flush()

    info = warning = error = debug = msg


def _dict_passthrough(_: WrappedLogger, __: str, event_dict: EventDict) -> Any:
    return (dict(event_dict),), {}


def make_logger(audit_path: Path | None, stream: TextIO | None = sys.stderr, **context: Any) -> Any:
    """A structlog logger bound to `context` (run_id, incident_id, playbook, dry_run)."""
    sink = EventSink(AuditLog(audit_path) if audit_path else None, stream)
    logger = structlog.wrap_logger(
        sink,
        processors=[add_timestamp, redact, _dict_passthrough],
        wrapper_class=structlog.BoundLogger,
    )
    return logger.bind(**context)
