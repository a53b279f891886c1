"""Queue workers: findings (and resume requests) from SQS become runs, each exactly once.

A message is one of:

- a finding or incident, in any form `stanch run` reads (a GuardDuty or Security Hub EventBridge
  event, a bare finding, a native incident), optionally inside an SNS envelope;
- `{"stanch": "resume", "run_id": "r-..."}`, sent by `stanch approve` after recording an approval.

`handle_body` decides what a message means against the journal and runs it; the SQS `Worker` (and
`runner.lambda_handler`) only decide what happens to the message afterwards: it is deleted when the
run reaches a resting state (contained, needs_manual_action, awaiting_approval, refused) or when it
is a duplicate; otherwise it is left on the queue to come back after `[worker] retry_delay` (a failed
or partially contained run, bad input) until the queue's redrive policy moves it to the DLQ.

Duplicates: the same GuardDuty finding is one incident (`GD-<finding id>`) whatever its form or
`service.count`. A finding whose incident already has a run that is paused for approval, executing
in another process, or ended contained / needs_manual_action / refused (or a rollback) is refused as
a duplicate: no second run. A run left unfinished by a killed process is resumed instead, and an
incident whose last run failed, was partially contained or was cancelled gets a new run (a retry).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from runner.awserrors import describe_client_error
from runner.config import Config, WorkerSection, load_config
from runner.errors import InputError, Problem, RefusedError, StanchError, UnknownRunError
from runner.lifecycle import ACTIVE

#: a run in one of these statuses is done with its message (needs a person, or nothing more to do)
RESTING = ("contained", "needs_manual_action", "awaiting_approval", "refused")
#: a later delivery of an incident whose last run ended so is a duplicate, not a new run
SETTLED = ("contained", "needs_manual_action", "refused")
RESUME = "resume"

Fate = Literal["delete", "retry", "release"]


@dataclass
class Handled:
    """What became of one message: `fate` is delete (done), retry (back after the retry delay, towards
    the DLQ) or release (back at once: this process is stopping, another worker continues)."""

    fate: Fate
    kind: str  # finding | resume | poison
    reason: str
    incident_id: str | None = None
    run_id: str | None = None
    status: str | None = None
    message_id: str | None = None
    receive_count: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(doc.pop("extra"))
        return {k: v for k, v in doc.items() if v is not None}


@dataclass(frozen=True)
class Context:
    """What every message of a worker (or a Lambda invocation) runs with."""

    state: Path
    config_path: str | None = None
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    by: str = "stanch-worker"


# ------------------------------------------------------------------ one message

def parse_body(body: str) -> Any:
    """The JSON document a message carries, unwrapped from an SNS envelope if it is in one."""
    try:
        doc = json.loads(body)
    except RecursionError:  # nested deeper than the parser goes: no finding looks like that
        raise InputError("message", [Problem("", "not a finding: JSON nested too deeply")]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError("message", [Problem("", f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                                             if isinstance(exc, json.JSONDecodeError) else "not JSON")]) from None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_body(doc["Message"])  # SNS -> SQS delivery without raw message delivery
    return doc


_RUN_ID = re.compile(r"^r-[A-Za-z0-9._-]{1,120}$")


def resume_request(run_id: str, by: str) -> str:
    """The message `stanch approve` sends: it names the run only. It approves nothing: a worker that
    resumes the run opens exactly the gates the journal holds approvals for."""
    return json.dumps({"stanch": RESUME, "run_id": run_id, "requested_by": by,
                       "requested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def handle_body(body: str, ctx: Context, stop: threading.Event | None = None,
                stream: TextIO | None = None) -> Handled:
    """Run what one message asks for and say what should become of the message. Bad input (not JSON,
    not a finding, an unroutable type, a sample finding) changes nothing and is `retry` (towards the DLQ)."""
    try:
        doc = parse_body(body)
        if isinstance(doc, dict) and "stanch" in doc:
            return _resume(doc, ctx, stop, stream)
        return _finding(doc, ctx, stop, stream)
    except InputError as exc:
        return Handled("retry", "poison", f"bad input: {exc.message}")


def _resume(doc: dict[str, Any], ctx: Context, stop: threading.Event | None, stream: TextIO | None) -> Handled:
    from runner.engine import RunOptions
    from runner.service import get_run, resume_run

    run_id = doc.get("run_id")
    if doc.get("stanch") != RESUME or not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise InputError("message", [Problem("stanch", 'expected {"stanch": "resume", "run_id": "r-..."}')])
    try:
        record = get_run(ctx.state, run_id)
    except UnknownRunError:
        raise InputError("message", [Problem("run_id", f"no run {run_id} in the journal ({ctx.state})")]) from None
    if record.status not in ACTIVE:  # resumed already (by another request, or by hand)
        return Handled("delete", "resume", f"run {run_id} is already {record.status}; nothing to resume",
                       record.incident_id, run_id, record.status)
    try:
        outcome = resume_run(run_id, options=RunOptions(by=ctx.by), state=ctx.state, stream=stream, stop=stop)
    except RefusedError as exc:  # another process executes it now; it ends the run (or pauses it) itself
        return Handled("delete", "resume", f"not resumed: {exc.message}", record.incident_id, run_id,
                       record.status)
    return _after_run(outcome, "resume", record.incident_id, f"resumed run {run_id}")


def _finding(doc: Any, ctx: Context, stop: threading.Event | None, stream: TextIO | None) -> Handled:
    from runner.intake import IntakeOptions, settle_window, to_incident

    config = load_config(ctx.config_path)
    incident = settle_window(to_incident("message", doc, config, IntakeOptions()), config)
    with incident_claim(ctx, config, incident.id) as claimed:
        if not claimed:  # another worker holds a delivery of this incident and will finish it
            return Handled("delete", "finding", f"duplicate: another worker is taking incident {incident.id} now",
                           incident.id)
        return _claimed(incident, ctx, stop, stream)


def _claimed(incident: Any, ctx: Context, stop: threading.Event | None, stream: TextIO | None) -> Handled:
    from runner.engine import RunOptions
    from runner.service import AwsOptions, incident_runs, resume_run, run_is_executing, start_run

    runs = [r for r in incident_runs(ctx.state, incident.id) if not r.dry_run]
    latest = runs[0] if runs else None
    if latest is not None:
        def dup(why: str) -> Handled:
            return Handled("delete", "finding", f"duplicate of run {latest.run_id}: {why}", incident.id,
                           latest.run_id, latest.status, extra={"duplicate": True})
        if latest.status == "awaiting_approval":
            return dup("it waits for approval (stanch approve)")
        if latest.status in ACTIVE and run_is_executing(ctx.state, latest.run_id):
            return dup("another process is executing it")
        if latest.status in ACTIVE:  # its process died mid-run: finish it, never start a second one
            try:
                outcome = resume_run(latest.run_id, options=RunOptions(by=ctx.by), state=ctx.state, stream=stream,
                                     stop=stop)
            except RefusedError:
                return dup("another process is executing it")
            return _after_run(outcome, "finding", incident.id, f"resumed interrupted run {latest.run_id}")
        if latest.status in SETTLED or latest.playbook == "rollback":
            return dup(f"it ended {latest.status}" + (" (a rollback)" if latest.playbook == "rollback" else ""))
    try:
        outcome = start_run(incident, playbook_ref=None, config_path=ctx.config_path, options=RunOptions(by=ctx.by),
                            aws_opts=AwsOptions(ctx.region, ctx.profile, ctx.endpoint_url), state=ctx.state,
                            stream=stream, stop=stop)
    except RefusedError as exc:  # e.g. a `stanch run` of the same incident started in between
        return Handled("delete", "finding", f"duplicate: {exc.message}", incident.id, extra={"duplicate": True})
    return _after_run(outcome, "finding", incident.id, "new run")


def _after_run(outcome: Any, kind: str, incident_id: str, what: str) -> Handled:
    status = str(outcome.result.get("status"))
    run_id = outcome.result.get("run_id")
    if outcome.interrupted:
        return Handled("release", kind, f"{what}: stopped before it finished; another worker resumes it",
                       incident_id, run_id, status)
    if status in RESTING:
        return Handled("delete", kind, f"{what}: {status}", incident_id, run_id, status)
    return Handled("retry", kind, f"{what}: {status}; the message comes back for another run", incident_id, run_id,
                   status)


def claim_seconds(config: Config) -> float:
    """How long a dead worker's claim on an incident outlives it (shared journal): half the message's
    visibility timeout, so its claim has expired when its message comes back to another worker."""
    return max(1.0, config.worker.visibility_timeout / 2)


@contextmanager
def incident_claim(ctx: Context, config: Config, incident_id: str) -> Iterator[bool]:
    """One worker at a time decides about (and runs) an incident: the journal's claim, an OS lock in
    the state directory (SQLite: workers of one machine) or a conditional item in the DynamoDB table
    (workers on any machine). Yields False if another worker holds it."""
    from runner.journal import open_journal

    journal = open_journal(ctx.state, config)
    owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
    try:
        with journal.claim_incident(incident_id, owner, claim_seconds(config)) as claimed:
            yield claimed
    finally:
        journal.close()


def failure(exc: BaseException) -> Handled:
    """A message whose run could not be carried out (AWS or the journal failing): back for a retry."""
    why = describe_client_error(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
    return Handled("retry", "finding", f"not finished: {why}")


#: errors that leave a message for another attempt; anything else is a bug and stops the worker
TRANSIENT = (StanchError, ClientError, BotoCoreError, sqlite3.Error, OSError)


def handle_safely(body: str, ctx: Context, stop: threading.Event | None = None,
                  stream: TextIO | None = None) -> Handled:
    try:
        return handle_body(body, ctx, stop, stream)
    except TRANSIENT as exc:
        return failure(exc)


# ------------------------------------------------------------------ the SQS loop

def queue_region(queue_url: str, fallback: str | None) -> str:
    host = queue_url.split("/")[2] if "//" in queue_url else ""
    m = re.match(r"^(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d)\.(?:queue\.)?amazonaws\.com", host)
    region = m.group(1) if m else fallback or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise InputError("--queue-url", [Problem("", "no region in the queue URL; pass --region")])
    return region


def sqs_client(queue_url: str, ctx: Context) -> Any:
    from runner.aws import AwsSession

    settings = load_config(ctx.config_path).aws
    return AwsSession(region=queue_region(queue_url, ctx.region), profile=ctx.profile,
                      endpoint_url=ctx.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
                      settings=settings).client("sqs")


def send_resume(queue_url: str, run_id: str, by: str, ctx: Context) -> str:
    """Ask the workers to resume `run_id` (after `stanch approve`); returns the SQS message id."""
    resp = sqs_client(queue_url, ctx).send_message(QueueUrl=queue_url, MessageBody=resume_request(run_id, by))
    return str(resp["MessageId"])


class Heartbeat:
    """Keeps the messages a worker holds invisible to other workers while their runs work: every third
    of the visibility timeout, each is extended to a full timeout again. A killed worker stops
    extending, so its message comes back one timeout after the last extension."""

    def __init__(self, sqs: Any, queue_url: str, timeout: int, log: Any) -> None:
        self.sqs, self.queue_url, self.timeout, self.log = sqs, queue_url, timeout, log
        self.handles: dict[str, str] = {}  # receipt handle -> message id
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sqs-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)

    def hold(self, handle: str, message_id: str) -> None:
        with self._lock:
            self.handles[handle] = message_id

    def drop(self, handle: str) -> None:
        with self._lock:
            self.handles.pop(handle, None)

    def _beat(self) -> None:
        while not self._done.wait(max(1.0, self.timeout / 3)):
            with self._lock:
                held = dict(self.handles)
            for handle, message_id in held.items():
                try:
                    self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=handle,
                                                       VisibilityTimeout=self.timeout)
                except ClientError as exc:  # deleted meanwhile, or the handle expired: nothing to keep
                    self.log.info("worker.heartbeat_failed", message_id=message_id, error=describe_client_error(exc))
                    self.drop(handle)
                except BotoCoreError as exc:  # the next beat tries again
                    self.log.info("worker.heartbeat_failed", message_id=message_id, error=str(exc))


class Worker:
    def __init__(self, queue_url: str, ctx: Context, settings: WorkerSection, *, log: Any,
                 run_stream: TextIO | None = None) -> None:
        self.queue_url, self.ctx, self.settings, self.log = queue_url, ctx, settings, log
        self.run_stream = run_stream
        self.sqs = sqs_client(queue_url, ctx)
        #: set on SIGTERM: the current change finishes, the run stays resumable, nothing new is taken
        self.stop = threading.Event()
        self.busy = False
        #: True while waiting on ReceiveMessage: a SIGTERM then ends the wait at once (see the CLI)
        self.polling = False
        self.handled: list[Handled] = []

    def check_queue(self) -> dict[str, Any]:
        """The queue's attributes (it must exist); warns when it has no dead-letter queue."""
        attrs: dict[str, Any] = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy", "VisibilityTimeout"])["Attributes"]
        if "RedrivePolicy" not in attrs:
            self.log.info("worker.no_dlq", message="the queue has no redrive policy: a poison message comes back "
                                                   "forever; give it a dead-letter queue (maxReceiveCount)")
        return attrs

    def run(self, *, once: bool, max_messages: int, wait: int) -> list[Handled]:
        self.check_queue()
        self.log.info("worker.started", queue=self.queue_url, state_dir=str(self.ctx.state.resolve()))
        with Heartbeat(self.sqs, self.queue_url, self.settings.visibility_timeout, self.log) as beat:
            while not self.stop.is_set():
                self.polling = True
                try:
                    messages = self.sqs.receive_message(
                        QueueUrl=self.queue_url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait,
                        VisibilityTimeout=self.settings.visibility_timeout,
                        MessageSystemAttributeNames=["ApproximateReceiveCount"],
                    ).get("Messages", [])
                finally:
                    self.polling = False
                for m in messages:
                    beat.hold(m["ReceiptHandle"], m["MessageId"])
                for m in messages:
                    if self.stop.is_set():
                        self._settle(m, Handled("release", "unread", "the worker is stopping"), beat)
                        continue
                    self.busy = True
                    try:
                        handled = handle_safely(m.get("Body", ""), self.ctx, self.stop, self.run_stream)
                    finally:
                        self.busy = False
                    handled.message_id = m["MessageId"]
                    handled.receive_count = int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0)) or None
                    self._settle(m, handled, beat)
                if once:
                    break
        self.log.info("worker.stopped", handled=len(self.handled))
        return self.handled

    def _settle(self, m: dict[str, Any], handled: Handled, beat: Heartbeat) -> None:
        beat.drop(m["ReceiptHandle"])
        handled.message_id = handled.message_id or m["MessageId"]
        try:
            if handled.fate == "delete":
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
            else:
                delay = 0 if handled.fate == "release" else self.settings.retry_delay
                self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"],
                                                   VisibilityTimeout=delay)
        except ClientError as exc:  # the message comes back after its timeout; the journal keeps this safe
            handled.extra["queue_error"] = describe_client_error(exc)
        except BotoCoreError as exc:
            handled.extra["queue_error"] = f"{type(exc).__name__}: {exc}"
        self.handled.append(handled)
        self.log.info("worker.message", **{k: v for k, v in handled.to_json().items() if k != "reason"},
                      message=handled.reason)
