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
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

REDACTED = "[REDACTED]"
#: dict keys whose values are secrets wherever they appear (API responses, events, documents)
_SECRET_KEY = re.compile(r"(secret|password|passwd|session_?token|sessiontoken|credentials|private_?key)", re.I)
#: names (of ECS environment variables, of tags) whose values are secrets
_SECRET_NAME = re.compile(r"(passw(or)?d|pwd|secret|token|api_?key|apikey|private_?key|access_?key|credential|"
                          r"auth|signing_?key|encryption_?key|conn(ection)?_?str)", re.I)
#: keys holding whole blobs that routinely carry secrets (EC2 user data)
_BLOB_KEYS = frozenset({"userData", "UserData", "user_data", "userdata"})
# AWS secret access keys: 40 chars of base64 with mixed case; session tokens: long base64 runs.
_SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
    r"|[A-Za-z0-9/+=]{100,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)"
    r"|\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|sk_live_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_-]{35}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
    re.S,
)
#: `password: x`, `token=x`, `"secret": "x"` in free text (an incident summary, an error message)
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b((?:[a-z0-9]+[_-])*(?:password|passwd|pwd|secret|token|api[_-]?key|private[_-]?key|access[_-]?key))"
    r"(\"?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;]+)"
)


AUDIT_FIELDS = ("run_id", "incident_id", "playbook", "step", "action", "target", "operation",
                "dry_run", "outcome", "duration_ms")
GENESIS = "0" * 64


def _secret_named(value: dict[Any, Any], key: Any) -> bool:
    """`key` holds a secret by its own name (Password, SecretAccessKey, UserData), or as the value of
    an environment variable or tag whose name says so (DB_PASSWORD, deploy_token)."""
    if isinstance(key, str) and (_SECRET_KEY.search(key) or key in _BLOB_KEYS):
        return True
    pair = _named_pair(value)
    return pair is not None and key == pair[1] and bool(_SECRET_NAME.search(str(value[pair[0]])))


def redacted(value: Any) -> str:
    """What replaces a secret: the marker and the SHA-256 of the value, so equality stays provable."""
    raw = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return f"{REDACTED} sha256={hashlib.sha256(raw.encode('utf-8')).hexdigest()}"


def _is_redacted(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REDACTED)


def _redact_text(text: str) -> str:
    def assignment(m: re.Match[str]) -> str:
        value = m.group(3)
        if value.startswith(REDACTED[:1]) or not value.strip("\"'"):
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{redacted(value.strip(chr(34) + chr(39)))}"

    text = _SECRET_VALUE.sub(lambda m: redacted(m.group(0)), text)
    return _SECRET_ASSIGNMENT.sub(assignment, text)


def _named_pair(value: dict[Any, Any]) -> tuple[str, str] | None:
    """(name key, value key) of an ECS environment entry or a tag: {name, value} or {Key, Value}."""
    for name_key, value_key in (("name", "value"), ("Key", "Value"), ("key", "value")):
        if isinstance(value.get(name_key), str) and value_key in value:
            return name_key, value_key
    return None


def redact_value(value: Any) -> Any:
    """A copy of `value` with every secret replaced by `[REDACTED] sha256=...`: secret-named keys,
    secret-named environment variables and tags, every ECS `secrets` entry, user data, and
    secret-shaped strings or `password: x` assignments anywhere in text."""
    if isinstance(value, str):
        return value if _is_redacted(value) else _redact_text(value)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if _is_redacted(v):
                out[k] = v
            elif k == "secrets" and isinstance(v, list):  # ECS: every secrets entry, whatever its name
                out[k] = [{**e, "valueFrom": redacted(e["valueFrom"])} if isinstance(e, dict) and e.get("valueFrom")
                          and not _is_redacted(e["valueFrom"]) else redact_value(e) for e in v]
            elif v and _secret_named(value, k):
                out[k] = redacted(v)
            else:
                out[k] = redact_value(v)
        return out
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

    Several processes may share one state directory (a run, `stanch approve`, a dry-run drill). An
    append is O(1): under an exclusive lock held only for the write, it continues the chain from the
    head file (`audit.jsonl.head`: last seq and hash), which it then rewrites. The log is read back
    only when the head file is missing or unreadable. Nothing is written through a symlink. Events
    written concurrently share one append and one fsync (group commit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()  # one append at a time (the flock serialises processes)
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._last: tuple[str, int] | None = None  # (hash, seq) of the last line this object wrote
        self._size = -1  # the log's size after that write

    def _tail(self, size: int) -> tuple[str, int]:
        recorded = read_head(self.path, size)
        if recorded is not None:
            seq, digest = recorded
            return digest, seq
        if self._last is not None and size == self._size:  # the head file vanished: continue our own chain
            return self._last
        seq, digest = scan_head(self.path)
        return digest, seq

    def write(self, event: dict[str, Any]) -> None:
        """Append `event`; return once it is on disk. Group commit: events that threads write while an
        append is under way go out together in the next one (one write, one fsync, one head update),
        in the order they arrived, each caller still returning only when its own line is durable."""
        pending = _Pending(event)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if pending.done:  # an earlier batch carried it
                if pending.error is not None:
                    raise pending.error
                return
            with self._queue_lock:
                batch, self._queue = self._queue, []
            try:
                self._append(batch)
            except BaseException as exc:
                for p in batch:
                    p.error, p.done = exc, True
                raise
            for p in batch:
                p.done = True

    def _append(self, batch: list[_Pending]) -> None:
        lock_fd = open_private(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY | os.O_CREAT)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                prev, seq = self._tail(os.fstat(fd).st_size)
                lines = []
                for pending in batch:
                    record = {k: pending.event.get(k) for k in AUDIT_FIELDS}
                    record.update(pending.event)
                    seq += 1
                    record["seq"] = seq
                    record["prev"] = prev
                    line = json.dumps(record, sort_keys=False, default=str, separators=(",", ":"))
                    lines.append(line)
                    prev = line_hash(line)
                os.write(fd, "".join(line + "\n" for line in lines).encode("utf-8"))
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            self._last, self._size = (prev, seq), size
            write_head(self.path, seq, prev, size)
        finally:
            os.close(lock_fd)  # releases the flock


@dataclass
class _Pending:
    """One event waiting for its append."""

    event: dict[str, Any]
    done: bool = False
    error: BaseException | None = None


class UnsafeFileError(OSError):
    """A state file is a symlink (or otherwise not ours to write)."""


def open_private(path: Path, flags: int) -> int:
    """Open a state file owner-only (0600), never through a symlink; a looser file is tightened."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if path.is_symlink():
            raise UnsafeFileError(exc.errno, "refusing to write through a symlink in the state directory",
                                  str(path)) from None
        raise
    mode = os.fstat(fd).st_mode & 0o777
    if mode & 0o077:
        os.fchmod(fd, 0o600)
        sys.stderr.write(f"stanch: warning: {path} was readable by others ({oct(mode)}); tightened to 0600\n")
    return fd


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def read_head(path: Path, log_size: int | None = None) -> tuple[int, str] | None:
    """(seq, sha256) from the head file, or None when it is missing, unreadable or (given the log's
    size) behind the log, e.g. after a process died between the append and the head write. A log
    shorter than the head says is not trusted: the chain continues from the head, so the cut shows."""
    head = head_path(path)
    if head.is_symlink():
        return None
    try:
        doc = json.loads(head.read_text())
        seq, digest = int(doc["seq"]), str(doc["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if log_size is not None and isinstance(doc.get("size"), int) and doc["size"] < log_size:
        return None
    return seq, digest


def scan_head(path: Path) -> tuple[int, str]:
    """(seq, sha256) of the log's last line, read from the log itself (the slow path)."""
    if not path.is_file() or path.is_symlink():
        return 0, GENESIS
    last = ""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                last = raw.decode("utf-8", "replace").rstrip("\n")
    if not last:
        return 0, GENESIS
    try:
        seq = int(json.loads(last).get("seq", 0))
    except (ValueError, AttributeError, TypeError):
        seq = 0
    return seq, line_hash(last)


def current_head(path: Path) -> tuple[int, str]:
    """The audit log's head now: what the journal anchors at the end of a run."""
    return read_head(path) or scan_head(path)


def write_head(path: Path, seq: int, digest: str, size: int) -> None:
    """The last line's seq and hash (and the log's size), beside the log: lines cut from the end show
    against it, and the next append continues from it without reading the log."""
    tmp = head_path(path).with_suffix(".tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, json.dumps({"seq": seq, "sha256": digest, "size": size}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(head_path(path))


@dataclass(frozen=True)
class Anchor:
    """An audit head recorded in the journal (a second store) when a run, approval or cancel ended."""

    run_id: str
    seq: int
    sha256: str


def verify_chain(path: Path, anchors: Sequence[Anchor] = (), *, runs: int = 0,
                 live_runs: Collection[str] = ()) -> list[str]:
    """Problems with the audit log (empty: intact). Every line carries `seq` (1, 2, ...) and `prev`,
    the SHA-256 of the line before it, so an edit, a deletion, a duplicate and a reordering each show.

    `anchors` (from the journal) catch what rewriting the log and its head file together hides: a
    truncated or emptied log, and forged lines appended after the last anchored head (unless the run
    they belong to is being executed right now: `live_runs`). `runs` is how many runs the journal
    holds: a log emptied of them all fails too."""
    if path.is_symlink():
        return [f"{path.name}: is a symlink; not followed"]
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    head = head_path(path)
    present = head.exists() or head.is_symlink()
    return verify_lines(text.splitlines(), read_head(path) if present else None, head_present=present,
                        head_name=head.name, anchors=anchors, runs=runs, live_runs=live_runs)


def verify_lines(raw_lines: Sequence[str], recorded: tuple[int, str] | None, *, head_present: bool,
                 head_name: str, anchors: Sequence[Anchor] = (), runs: int = 0,
                 live_runs: Collection[str] = ()) -> list[str]:
    """`verify_chain` over lines from anywhere (a file, a journal table): `recorded` is the head (seq,
    sha256) stored beside them, None when it is missing (`head_present` False) or unreadable."""
    problems: list[str] = []
    lines = [raw for raw in raw_lines if raw.strip()]
    by_seq: dict[int, tuple[int, str, str]] = {}  # seq -> (line number, prev, the line)
    run_of: dict[int, str] = {}
    highest = 0
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            seq, prev = int(rec["seq"]), str(rec["prev"])
        except (ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"line {n}: edited (not an audit record any more)")
            continue
        if seq in by_seq:
            problems.append(f"line {n} (seq {seq}): duplicated (seq {seq} is already line {by_seq[seq][0]})")
            continue
        if seq < highest:
            problems.append(f"line {n}: reordered (seq {seq} comes after seq {highest})")
        highest = max(highest, seq)
        by_seq[seq] = (n, prev, line)
        run_of[seq] = str(rec.get("run_id") or "")
    if not lines and (runs or any(a.seq for a in anchors)):
        problems.append(f"the log is empty, but the journal records {runs} run(s) and anchored "
                        f"{max((a.seq for a in anchors), default=0)} line(s): the log was emptied or replaced")
    if head_present:
        if recorded is None:
            problems.append(f"{head_name}: unreadable")
        elif recorded[0] > highest:
            problems.append(f"seq {highest + 1}-{recorded[0]}: lines cut from the end of the log")
        elif recorded[0] == highest and highest in by_seq and line_hash(by_seq[highest][2]) != recorded[1]:
            problems.append(f"line {by_seq[highest][0]} (seq {highest}): edited (the last line no longer matches "
                            "the recorded head)")
        elif recorded[0] < highest:
            problems.append(f"{_seqs(recorded[0] + 1, highest)}: lines after the recorded head (appended by "
                            "something other than stanch)")
    elif lines:
        problems.append(f"{head_name}: missing (deleted)")
    for seq in range(1, highest + 1):
        if seq not in by_seq:
            problems.append(f"seq {seq}: line deleted")
            continue
        n, prev, _ = by_seq[seq]
        expected = GENESIS if seq == 1 else (line_hash(by_seq[seq - 1][2]) if seq - 1 in by_seq else None)
        if expected is not None and prev != expected:
            what = "the chain's start" if seq == 1 else f"line {by_seq[seq - 1][0]} (seq {seq - 1})"
            problems.append(f"{what}: edited (its hash no longer matches what line {n} recorded)")
    problems += _check_anchors(anchors, by_seq, highest, run_of, live_runs)
    return list(dict.fromkeys(problems))


def _seqs(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


def _check_anchors(anchors: Sequence[Anchor], by_seq: dict[int, tuple[int, str, str]], highest: int,
                   run_of: dict[int, str], live_runs: Collection[str]) -> list[str]:
    problems: list[str] = []
    for a in anchors:
        if a.seq == 0:
            continue
        if a.seq > highest:
            problems.append(f"seq {highest + 1}-{a.seq}: lines cut from the end of the log (the journal "
                            f"anchored seq {a.seq} for run {a.run_id})")
        elif a.seq in by_seq and line_hash(by_seq[a.seq][2]) != a.sha256:
            problems.append(f"line {by_seq[a.seq][0]} (seq {a.seq}): rewritten (it does not match the head the "
                            f"journal anchored for run {a.run_id})")
    last = max((a.seq for a in anchors), default=None)
    if last is not None and highest > last:
        unanchored = [s for s in range(last + 1, highest + 1) if run_of.get(s, "") not in live_runs]
        if unanchored:
            problems.append(f"{_seqs(unanchored[0], unanchored[-1])}: appended after the last head the journal "
                            "anchored, by no run that is executing now (forged, or from a run killed before it "
                            "ended: `stanch resume` or `stanch cancel` it)")
    return problems


_LABELS = {
    "run.started": "run", "run.status": "status", "run.finished": "done",
    "step.planned": "plan", "step.noop": "noop", "step.applied": "applied", "step.failed": "FAILED",
    "step.skipped": "skipped", "step.refused": "REFUSED", "step.manual": "MANUAL",
    "step.awaiting_approval": "waiting", "approval.recorded": "approved", "approval.stale": "drift",
    "change.planned": "  change", "change.started": "→", "change.applied": "✔", "change.already_done": "=",
    "change.skipped": "≠", "change.failed": "✘",
    "verify.ok": "verified", "verify.failed": "UNVERIFIED", "discovery.search": "  search",
}


def render_human(event: dict[str, Any]) -> str:
    name = str(event.get("event", ""))
    label = _LABELS.get(name, name)
    ts = str(event.get("ts", ""))[11:19]
    step = event.get("step") or ""
    parts = []
    keys = ("region", "service", "state", "found", "error") if name == "discovery.search" else (
        "incident_id", "playbook", "identity", "operation", "target", "changes", "outcome", "status", "by", "message",
        "error")
    for key in keys:
        if name != "run.started" and key in ("incident_id", "playbook", "identity"):
            continue
        if event.get(key) not in (None, "", []):
            val = event[key]
            parts.append(str(val) if key in ("operation", "target", "message") else f"{key}={val}")
    if event.get("duration_ms") is not None and name.startswith(("change.", "step.")):
        parts.append(f"({event['duration_ms']} ms)")
    return f"{ts} {label:<10} {step:<26} {' '.join(parts)}".rstrip()


class AuditWriter(Protocol):
    """Where audit events go: `AuditLog` (a file) or the DynamoDB journal's per-run log."""

    def write(self, event: dict[str, Any]) -> None: ...


class EventSink:
    """The final structlog 'logger': writes each event to the audit log and renders it on stderr."""

    def __init__(self, audit: AuditWriter | None, stream: TextIO | None) -> None:
        self.audit = audit
        self.stream = stream
        self._lock = threading.Lock()

    def msg(self, event: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.write(event)
        if self.stream is not None and event.get("event") != "change.started":
            with self._lock:
                observe = getattr(self.stream, "observe", None)  # a terminal display of live progress
                if observe is not None:
                    observe(event)
                self.stream.write(render_human(event) + "\n")
                self.stream.flush()

    info = warning = error = debug = msg


def _dict_passthrough(_: WrappedLogger, __: str, event_dict: EventDict) -> Any:
    return (dict(event_dict),), {}


def make_logger(audit_path: Path | AuditWriter | None, stream: TextIO | None = sys.stderr, **context: Any) -> Any:
    """A structlog logger bound to `context` (run_id, incident_id, playbook, dry_run), writing to the audit
    log at `audit_path` (or to the writer given)."""
    audit = AuditLog(audit_path) if isinstance(audit_path, Path) else audit_path
    sink = EventSink(audit, stream)
    logger = structlog.wrap_logger(
        sink,
        processors=[add_timestamp, redact, _dict_passthrough],
        wrapper_class=structlog.BoundLogger,
    )
    return logger.bind(**context)
