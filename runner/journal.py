"""The run journal: every run, step, change and approval, written before and after it happens.

`Journal` is the interface the engine uses; `SqliteJournal` is the default backend, one file
in the state directory. A shared backend (e.g. DynamoDB with conditional writes) implements
the same protocol (`runner.dynamo_journal.DynamoJournal`); `open_journal` picks one from the config.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from runner.audit import redact_value
from runner.errors import InputError, Problem, RefusedError, RunLockedError, UnknownRunError
from runner.status import RunStatus

if TYPE_CHECKING:
    from runner.config import Config, JournalSection

ACTIVE_STATUSES = tuple(str(s) for s in RunStatus.ACTIVE)


def _stored(value: Any) -> str:
    """JSON for the journal, secrets replaced by their SHA-256 (see runner.audit.redact_value)."""
    return json.dumps(redact_value(value))


def _text(value: str | None) -> str | None:
    return None if value is None else str(redact_value(value))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class RunRecord:
    run_id: str
    incident_id: str
    playbook: str
    status: str
    dry_run: bool
    created_at: str
    updated_at: str
    incident: dict[str, Any]
    options: dict[str, Any]
    result: dict[str, Any] | None = None


@dataclass
class StepRecord:
    run_id: str
    step_id: str
    status: str
    plan: dict[str, Any] | None
    error: str | None
    updated_at: str


@dataclass
class ChangeRecord:
    run_id: str
    step_id: str
    digest: str
    status: str
    change: dict[str, Any]
    error: str | None
    started_at: str | None
    finished_at: str | None


@dataclass
class ApprovalRecord:
    run_id: str
    step_id: str
    by: str
    reason: str
    at: str
    plan_digest: str
    change_digests: list[str]


@dataclass
class AnchorRecord:
    """What the journal remembers of the audit log and the evidence when a run (or an approval,
    a cancellation) ends: the audit head then, and the digest of the run's evidence manifest."""

    run_id: str
    at: str
    audit_seq: int
    audit_sha256: str
    manifest_sha256: str | None


class RunBusyError(RefusedError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is being executed by another stanch process (run, resume or worker); "
                         f"wait for it to finish, then `stanch status {run_id}`")


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Journal(Protocol):
    def create_run(self, run: RunRecord, lock: bool) -> None: ...
    def get_run(self, run_id: str) -> RunRecord: ...
    def list_runs(self, limit: int = 50) -> list[RunRecord]: ...
    def runs_of_incident(self, incident_id: str) -> list[RunRecord]:
        """Every run of one incident, newest first (a consistent read: the worker decides duplicates on it)."""
    def set_run_status(self, run_id: str, status: str, result: dict[str, Any] | None = None) -> None: ...
    def release(self, run_id: str) -> None: ...
    def save_step(self, run_id: str, step_id: str, status: str,
                  plan: dict[str, Any] | None, error: str | None = None) -> None: ...
    def steps(self, run_id: str) -> dict[str, StepRecord]: ...
    def change_started(self, run_id: str, step_id: str, digest: str, change: dict[str, Any]) -> bool:
        """Record that a change is about to be sent; False: another worker holds or finished it (do not send)."""
    def change_finished(self, run_id: str, step_id: str, digest: str, status: str,
                        error: str | None = None) -> None: ...
    def changes(self, run_id: str) -> list[ChangeRecord]: ...
    def add_approval(self, approval: ApprovalRecord) -> None: ...
    def approvals(self, run_id: str) -> list[ApprovalRecord]: ...
    def hold(self, run_id: str) -> AbstractContextManager[None]: ...
    def claim_incident(self, incident_id: str, owner: str, seconds: float) -> AbstractContextManager[bool]:
        """While held, `owner` alone decides about (and runs) a delivery of the incident; yields False
        when another holds it. `seconds`: how long a holder that dies keeps it (a shared journal)."""
    def add_anchor(self, anchor: AnchorRecord) -> None: ...
    def anchors(self, run_id: str | None = None) -> list[AnchorRecord]: ...
    def has_run(self, run_id: str) -> bool: ...
    def is_held(self, run_id: str) -> bool: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, incident_id TEXT NOT NULL, playbook TEXT NOT NULL,
    status TEXT NOT NULL, dry_run INTEGER NOT NULL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, incident TEXT NOT NULL, options TEXT NOT NULL, result TEXT);
CREATE TABLE IF NOT EXISTS locks (incident_id TEXT PRIMARY KEY, run_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, step_id TEXT NOT NULL, status TEXT NOT NULL, plan TEXT,
    error TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (run_id, step_id));
CREATE TABLE IF NOT EXISTS changes (
    run_id TEXT NOT NULL, step_id TEXT NOT NULL, digest TEXT NOT NULL, status TEXT NOT NULL,
    change TEXT NOT NULL, error TEXT, started_at TEXT, finished_at TEXT,
    PRIMARY KEY (run_id, step_id, digest));
CREATE TABLE IF NOT EXISTS approvals (
    run_id TEXT NOT NULL, step_id TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL,
    at TEXT NOT NULL, plan_digest TEXT NOT NULL, change_digests TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS anchors (
    run_id TEXT NOT NULL, at TEXT NOT NULL, audit_seq INTEGER NOT NULL, audit_sha256 TEXT NOT NULL,
    manifest_sha256 TEXT);
"""


#: what stanch keeps directly in a state directory; none of it may be a symlink
STATE_ENTRIES = ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm", "audit.jsonl",
                 "audit.jsonl.head", "audit.jsonl.head.tmp", "audit.jsonl.lock", "evidence", "locks", "rollback")


def secure_state_dir(state: Path) -> None:
    """Create the state directory owner-only (0700) and its journal 0600; tighten what is found looser,
    with a warning; refuse (exit 2) a state directory whose files are symlinks, which would make
    stanch write wherever they point."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    linked = [name for name in STATE_ENTRIES if (state / name).is_symlink()]
    if linked:
        raise InputError(str(state), [Problem(name, "is a symlink; stanch never writes through symlinks in its "
                                                    "state directory (replace it with the file itself)")
                                      for name in linked])
    for path in [state, *state.iterdir()]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        wanted = 0o700 if path.is_dir() else 0o600
        if mode & 0o077:
            path.chmod(mode & wanted)
            sys.stderr.write(f"stanch: warning: {path} was open to other users ({oct(mode)}); tightened to "
                             f"{oct(mode & wanted)}\n")
    # SQLite gives its -wal and -shm files the database file's mode. Created only when missing: closing
    # a descriptor of the database file drops every POSIX lock this process's SQLite connections hold
    # on it (another process could then write under them: a corrupt journal)
    with suppress(FileExistsError):
        os.close(os.open(state / "journal.sqlite3", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


def journal_settings(config: Config | None = None) -> JournalSection:
    """The `[journal]` section, overridden by STANCH_JOURNAL (`sqlite`, or `dynamodb://TABLE[?region=R]`)."""
    from pydantic import ValidationError

    from runner.config import JournalSection, load_config

    section = (config or load_config(None)).journal
    raw = os.environ.get("STANCH_JOURNAL", "").strip()
    if not raw:
        return section
    where = "STANCH_JOURNAL"
    if raw in ("sqlite", "sqlite://"):
        return section.model_copy(update={"backend": "sqlite"})
    url = urlsplit(raw)
    query = parse_qs(url.query)
    unknown = sorted(set(query) - {"region", "endpoint_url"})
    if url.scheme != "dynamodb" or not url.netloc or url.path not in ("", "/") or unknown:
        raise InputError(where, [Problem(raw, "not a journal: use sqlite or dynamodb://TABLE[?region=REGION]"
                                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))])
    try:
        return JournalSection.model_validate({**section.model_dump(), "backend": "dynamodb", "table": url.netloc,
                                              **{k: v[-1] for k, v in query.items()}})
    except ValidationError as exc:
        raise InputError(where, [Problem(".".join(map(str, e["loc"])) or raw, e["msg"])
                                 for e in exc.errors()]) from None


def open_journal(state: Path, config: Config | None = None) -> Journal:
    """The journal the configuration selects: SQLite in `state` (default), or the DynamoDB table
    shared by every machine with the same `[journal]` (or STANCH_JOURNAL)."""
    settings = journal_settings(config)
    if settings.backend == "sqlite":
        return SqliteJournal(state)
    from runner.dynamo_journal import DynamoJournal

    return DynamoJournal(settings.table, region=settings.region or None, endpoint_url=settings.endpoint_url or None,
                         lease_seconds=settings.lease_seconds, ttl_days=settings.ttl_days)


@dataclass
class _Write:
    """One journal write waiting for its commit."""

    work: Callable[[sqlite3.Connection], Any]
    done: bool = False
    error: BaseException | None = None


class SqliteJournal:
    """SQLite journal. One connection shared by the run's threads, serialised by a lock; every write
    is committed (WAL, synchronous=FULL) before it returns, and the step and change records that
    threads write at the same moment share one commit (group commit)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "journal.sqlite3"
        try:
            secure_state_dir(state_dir)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        except (OSError, sqlite3.OperationalError) as exc:
            raise InputError(str(state_dir), [Problem("", f"cannot use this state directory: {exc}; pass "
                                                          "--state-dir or set STANCH_STATE_DIR")]) from None
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Write] = []
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise InputError(str(self.path), [Problem("", f"not a stanch journal ({exc}); move it aside or use "
                                                          "another --state-dir")]) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        """Exclusive right to execute `run_id` (an OS file lock, released even by kill -9): two
        `stanch resume` of one run never send a change twice; the second is refused (exit 4)."""
        if not _RUN_ID.match(run_id):
            raise UnknownRunError(run_id)
        folder = self.path.parent / "locks"
        folder.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(folder / f"{run_id}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusyError(run_id) from None
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def claim_incident(self, incident_id: str, owner: str, seconds: float) -> Iterator[bool]:
        """An OS lock per incident in the state directory (workers sharing it: one machine), released
        when the process ends however it ends; `owner` and `seconds` are not needed for that."""
        folder = self.path.parent / "locks"
        folder.mkdir(mode=0o700, exist_ok=True)
        name = hashlib.sha256(incident_id.encode()).hexdigest()[:32]
        fd = os.open(folder / f"incident-{name}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _grouped(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        """Run `work` in a committed transaction; return once it is durable. Group commit: writes that
        threads make while a commit is under way go into the next transaction together (one fsync),
        each under its own savepoint, so one that fails is undone alone and fails only its caller."""
        pending = _Write(work)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if not pending.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for item in batch:
                        self._db.execute("SAVEPOINT one")
                        try:
                            item.work(self._db)
                        except Exception as exc:  # noqa: BLE001  (raised in the caller that made this write)
                            self._db.execute("ROLLBACK TO one")
                            item.error = exc
                        self._db.execute("RELEASE one")
                    self._db.execute("COMMIT")
                except BaseException as exc:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    for item in batch:
                        item.error = item.error or exc
                    raise
                finally:
                    for item in batch:
                        item.done = True
        if pending.error is not None:
            raise pending.error

    def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # -- runs ----------------------------------------------------------------------------
    def create_run(self, run: RunRecord, lock: bool) -> None:
        with self._tx() as db:
            if lock:
                held = db.execute("SELECT run_id FROM locks WHERE incident_id=?", (run.incident_id,)).fetchone()
                if held is not None:
                    raise RunLockedError(run.incident_id, held["run_id"])
                db.execute("INSERT INTO locks VALUES (?, ?)", (run.incident_id, run.run_id))
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run.run_id, run.incident_id, run.playbook, run.status, int(run.dry_run), run.created_at,
                 run.updated_at, _stored(run.incident), _stored(run.options), None),
            )

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            run_id=row["run_id"], incident_id=row["incident_id"], playbook=row["playbook"],
            status=row["status"], dry_run=bool(row["dry_run"]), created_at=row["created_at"],
            updated_at=row["updated_at"], incident=json.loads(row["incident"]),
            options=json.loads(row["options"]), result=json.loads(row["result"]) if row["result"] else None,
        )

    def get_run(self, run_id: str) -> RunRecord:
        rows = self._rows("SELECT * FROM runs WHERE run_id=?", run_id)
        if not rows:
            raise UnknownRunError(run_id)
        return self._run(rows[0])

    def has_run(self, run_id: str) -> bool:
        return bool(self._rows("SELECT 1 FROM runs WHERE run_id=?", run_id))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        return [self._run(r) for r in self._rows("SELECT * FROM runs ORDER BY created_at DESC LIMIT ?", limit)]

    def runs_of_incident(self, incident_id: str) -> list[RunRecord]:
        return [self._run(r) for r in self._rows(
            "SELECT * FROM runs WHERE incident_id=? ORDER BY created_at DESC, rowid DESC", incident_id)]

    def set_run_status(self, run_id: str, status: str, result: dict[str, Any] | None = None) -> None:
        at = now_iso()
        stored = None if result is None else _stored(result)

        def write(db: sqlite3.Connection) -> None:
            if stored is None:
                db.execute("UPDATE runs SET status=?, updated_at=? WHERE run_id=?", (status, at, run_id))
            else:
                db.execute("UPDATE runs SET status=?, updated_at=?, result=? WHERE run_id=?",
                           (status, at, stored, run_id))

        self._grouped(write)

    def release(self, run_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM locks WHERE run_id=?", (run_id,))

    # -- steps and changes ---------------------------------------------------------------
    def save_step(self, run_id: str, step_id: str, status: str,
                  plan: dict[str, Any] | None, error: str | None = None) -> None:
        row = (run_id, step_id, status, _stored(plan) if plan is not None else None, _text(error), now_iso())
        self._grouped(lambda db: db.execute(
            "INSERT INTO steps VALUES (?,?,?,?,?,?) ON CONFLICT(run_id, step_id) DO UPDATE SET "
            "status=excluded.status, plan=COALESCE(excluded.plan, steps.plan), error=excluded.error, "
            "updated_at=excluded.updated_at", row))

    def steps(self, run_id: str) -> dict[str, StepRecord]:
        return {
            r["step_id"]: StepRecord(run_id, r["step_id"], r["status"],
                                     json.loads(r["plan"]) if r["plan"] else None, r["error"], r["updated_at"])
            for r in self._rows("SELECT * FROM steps WHERE run_id=?", run_id)
        }

    def change_started(self, run_id: str, step_id: str, digest: str, change: dict[str, Any]) -> bool:
        """One process executes a run (`hold`), so the change is always this process's to send."""
        row = (run_id, step_id, digest, "applying", json.dumps(change), None, now_iso(), None)
        self._grouped(lambda db: db.execute(
            "INSERT INTO changes VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run_id, step_id, digest) DO UPDATE SET "
            "status=excluded.status, started_at=excluded.started_at, error=NULL", row))
        return True

    def change_finished(self, run_id: str, step_id: str, digest: str, status: str,
                        error: str | None = None) -> None:
        row = (status, _text(error), now_iso(), run_id, step_id, digest)
        self._grouped(lambda db: db.execute(
            "UPDATE changes SET status=?, error=?, finished_at=? WHERE run_id=? AND step_id=? AND digest=?", row))

    def changes(self, run_id: str) -> list[ChangeRecord]:
        return [
            ChangeRecord(r["run_id"], r["step_id"], r["digest"], r["status"], json.loads(r["change"]),
                         r["error"], r["started_at"], r["finished_at"])
            for r in self._rows("SELECT * FROM changes WHERE run_id=? ORDER BY started_at", run_id)
        ]

    # -- approvals -----------------------------------------------------------------------
    def add_approval(self, approval: ApprovalRecord) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO approvals VALUES (?,?,?,?,?,?,?)",
                       (approval.run_id, approval.step_id, approval.by, _text(approval.reason), approval.at,
                        approval.plan_digest, json.dumps(approval.change_digests)))

    def approvals(self, run_id: str) -> list[ApprovalRecord]:
        return [
            ApprovalRecord(r["run_id"], r["step_id"], r["by"], r["reason"], r["at"], r["plan_digest"],
                           json.loads(r["change_digests"]))
            for r in self._rows("SELECT * FROM approvals WHERE run_id=? ORDER BY at", run_id)
        ]

    def is_held(self, run_id: str) -> bool:
        """True while some process executes `run_id` (holds its lock)."""
        path = self.path.parent / "locks" / f"{run_id}.lock"
        if not _RUN_ID.match(run_id) or not path.is_file() or path.is_symlink():
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- tamper anchors --------------------------------------------------------------------
    def add_anchor(self, anchor: AnchorRecord) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO anchors VALUES (?,?,?,?,?)", (anchor.run_id, anchor.at, anchor.audit_seq,
                                                                 anchor.audit_sha256, anchor.manifest_sha256))

    def anchors(self, run_id: str | None = None) -> list[AnchorRecord]:
        rows = (self._rows("SELECT * FROM anchors WHERE run_id=? ORDER BY audit_seq", run_id) if run_id
                else self._rows("SELECT * FROM anchors ORDER BY audit_seq"))
        return [AnchorRecord(r["run_id"], r["at"], int(r["audit_seq"]), r["audit_sha256"], r["manifest_sha256"])
                for r in rows]
