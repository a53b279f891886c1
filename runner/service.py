"""What the CLI commands do, without the CLI: start, resume, approve, status."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from actions.registry import Registry, builtin_registry
from runner.audit import GENESIS, AuditWriter, current_head, make_logger, redact_value
from runner.aws import AwsSession
from runner.config import Config, NotifySection, load_config
from runner.engine import Engine, Prompt, RunOptions, exit_code, new_run_id
from runner.errors import InputError, Problem, RefusedError, StanchError
from runner.incident import Incident, validate_incident
from runner.journal import AnchorRecord, ApprovalRecord, Journal, RunRecord, now_iso, open_journal
from runner.lifecycle import ACTIVE, RunLifecycle
from runner.playbook import Playbook, load_playbook, parse_playbook
from runner.status import ChangeStatus, RunStatus, StepStatus


def state_dir(explicit: str | None) -> Path:
    """--state-dir, else $STANCH_STATE_DIR, else ./.stanch"""
    return Path(explicit or os.environ.get("STANCH_STATE_DIR") or ".stanch")


@dataclass(frozen=True)
class AwsOptions:
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "profile": self.profile, "endpoint_url": self.endpoint_url}


@dataclass
class Outcome:
    result: dict[str, Any]
    exit_code: int
    #: stopped from outside (`stop` set) before it finished: still active, to be resumed
    interrupted: bool = False


def choose_playbook(incident: Incident, ref: str | None, config: Config, registry: Registry) -> Playbook:
    if ref:
        return load_playbook(ref, registry)
    types = list(incident.source.types) if incident.source else []
    routed = config.route(incident.kind, types)
    if routed is None:
        key = types[0] if types else incident.kind
        what = f"finding type '{key}'" if types else f"kind '{incident.kind}'"
        raise InputError("incident", [Problem(
            "source.types" if types else "kind",
            f"no playbook is routed for {what}; add `\"{key}\" = \"PLAYBOOK\"` under [routing] in the config "
            f"({config.source}), or pass --playbook NAME|PATH")])
    return load_playbook(routed, registry)


def _session(aws_opts: AwsOptions, incident: Incident, config: Config, dry_run: bool) -> AwsSession:
    return AwsSession(
        region=aws_opts.region or incident.region, profile=aws_opts.profile,
        endpoint_url=aws_opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
        settings=config.aws, dry_run=dry_run, max_pool_connections=max(16, config.runner.max_workers * 2),
    )


def account_session(session: AwsSession, incident: Incident, config: Config, run_id: str) -> AwsSession:
    """The session a run works with: the runner's own, or, for an incident in another account with
    `[accounts] role_name` set, the role assumed there (session name = the run id). Without that
    config the engine refuses credentials for another account."""
    role = config.accounts.role_name
    if not role or session.identity().account == incident.account_id:
        return session
    return session.assume_member(incident.account_id, role, run_id=run_id, external_id=config.accounts.external_id)


def start_run(
    incident: Incident, *, playbook_ref: str | None, config_path: str | None, options: RunOptions,
    aws_opts: AwsOptions, state: Path, prompt: Prompt | None = None, stream: TextIO | None = sys.stderr,
    registry: Registry | None = None, session: AwsSession | None = None,
    trail: tuple[list[dict[str, Any]], list[str]] = ([], []), journal: Journal | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Record and execute a new run. `journal`: the one to use instead of the one the config selects."""
    registry = registry or builtin_registry()
    config = load_config(config_path)
    playbook = choose_playbook(incident, playbook_ref, config, registry)
    session = session or _session(aws_opts, incident, config, options.dry_run)
    run_id = new_run_id()
    # credentials, profile, endpoint and the member role fail here, before a run is recorded or locked
    session = account_session(session, incident, config, run_id)
    session.identity()
    journal = journal or open_journal(state, config)
    record = RunRecord(
        run_id=run_id, incident_id=incident.id, playbook=playbook.name, status=RunStatus.PENDING,
        dry_run=options.dry_run, created_at=now_iso(), updated_at=now_iso(), incident=incident.to_json(),
        options={**options.to_json(), **aws_opts.to_json(), "playbook_ref": playbook.source
                 if playbook_ref else playbook.name, "config": config_path,
                 # what the run started with: a resume finishes this playbook with this config, whatever
                 # has changed on disk or in the package since
                 "playbook_text": playbook.text,
                 # [notify] is read when notifying (its secret is never kept): not part of the snapshot
                 "config_snapshot": config.model_dump(mode="json", exclude={"notify"})},
    )
    try:
        journal.create_run(record, lock=not options.dry_run)
        if trail[0]:
            save_trail(state, run_id, trail, journal)
        with journal.hold(run_id):
            return _execute(record, playbook, incident, config, registry, journal, aws_opts, options, state,
                            prompt, stream, session, resume=False, trail=trail, stop=stop)
    finally:
        journal.close()


def audit_sink(journal: Journal, state: Path, run_id: str) -> Path | AuditWriter:
    """Where a run's audit events go: the state directory's log, or (DynamoDB journal) the run's log
    in the journal table, readable from every machine."""
    from runner.dynamo_journal import DynamoJournal

    return journal.audit_log(run_id) if isinstance(journal, DynamoJournal) else state / "audit.jsonl"


def anchor(journal: Journal, state: Path, run_id: str, result: dict[str, Any] | None = None) -> None:
    """Record the audit log's head (and the run's evidence manifest digest) in the journal, a second
    store that `stanch audit verify` and `stanch evidence verify` check the files against."""
    from runner.dynamo_journal import DynamoJournal

    if isinstance(journal, DynamoJournal):
        seq, digest = journal.audit_head(run_id) or (0, GENESIS)
    else:
        seq, digest = current_head(state / "audit.jsonl")
    evidence = (result or {}).get("evidence") or {}
    manifest = evidence.get("manifest_sha256")
    if manifest is None:  # an approval or a cancellation: keep the digest the run recorded
        earlier = [a.manifest_sha256 for a in journal.anchors(run_id) if a.manifest_sha256]
        manifest = earlier[-1] if earlier else None
    journal.add_anchor(AnchorRecord(run_id=run_id, at=now_iso(), audit_seq=seq, audit_sha256=digest,
                                    manifest_sha256=manifest))


def _execute(record: RunRecord, playbook: Playbook, incident: Incident, config: Config, registry: Registry,
             journal: Journal, aws_opts: AwsOptions, options: RunOptions, state: Path, prompt: Prompt | None,
             stream: TextIO | None, session: AwsSession | None, *, resume: bool,
             trail: tuple[list[dict[str, Any]], list[str]] = ([], []), stop: threading.Event | None = None,
             notify_settings: NotifySection | None = None) -> Outcome:
    from runner.notify import Channels, send

    log = make_logger(audit_sink(journal, state, record.run_id), stream, run_id=record.run_id, incident_id=incident.id,
                      playbook=playbook.name, dry_run=options.dry_run)
    aws = account_session(session or _session(aws_opts, incident, config, options.dry_run), incident, config,
                          record.run_id)
    engine = Engine(run=record, playbook=playbook, incident=incident, config=config, registry=registry,
                    journal=journal, aws=aws, log=log,
                    options=options, prompt=prompt,
                    evidence_dir=state.resolve() / "evidence" / incident.id / record.run_id, trail=trail, stop=stop)
    result: dict[str, Any] | None = None
    try:
        result = engine.execute(resume=resume)
        if not engine.interrupted:  # a notification failure is recorded, never fatal (send does not raise)
            sent = send(redact_value(result), Channels(notify_settings or config.notify, config.aws, aws_opts.profile,
                                                       aws_opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")),
                        log)
            if sent:
                result["notifications"] = sent
                journal.set_run_status(record.run_id, result["status"], result)
    finally:  # also when AWS fails under the engine: what was logged so far is anchored
        anchor(journal, state, record.run_id, result)
    return Outcome(redact_value(result), exit_code(result["status"]), interrupted=engine.interrupted)


def resume_run(
    run_id: str, *, options: RunOptions, state: Path, prompt: Prompt | None = None,
    stream: TextIO | None = sys.stderr, registry: Registry | None = None, session: AwsSession | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    registry = registry or builtin_registry()
    journal = open_journal(state)
    try:
        journal.get_run(run_id)  # an unknown run is bad input before anything is locked
        with journal.hold(run_id):  # a second resume of this run is refused, never run alongside
            return _resume_held(run_id, journal, options, state, prompt, stream, registry, session, stop)
    finally:
        journal.close()


def _notify_settings(stored: dict[str, Any], snapshot: Config) -> NotifySection:
    """Where a resumed run's notification goes: the run's config file as it is now (a rotated webhook
    secret, which no snapshot keeps, or a new topic applies to paused runs), else the snapshot's."""
    try:
        return load_config(stored.get("config")).notify
    except InputError:
        return snapshot.notify


def _resume_held(run_id: str, journal: Journal, options: RunOptions, state: Path, prompt: Prompt | None,
                 stream: TextIO | None, registry: Registry, session: AwsSession | None,
                 stop: threading.Event | None = None) -> Outcome:
    record = journal.get_run(run_id)  # read again under the lock: another resume may have finished it
    if record.status not in ACTIVE:
        raise StanchError(f"run {run_id} is {record.status}; only unfinished runs can be resumed")
    stored = record.options
    config = (Config.model_validate(stored["config_snapshot"]) if stored.get("config_snapshot")
              else load_config(stored.get("config")))
    playbook = (parse_playbook(stored["playbook_text"], stored["playbook_ref"], registry)
                if stored.get("playbook_text") else load_playbook(stored["playbook_ref"], registry))
    incident = validate_incident(f"run {run_id} incident", record.incident)
    opts = RunOptions(dry_run=record.dry_run, approve=options.approve, approve_all=options.approve_all,
                      by=options.by, reason=options.reason, max_changes=stored.get("max_changes"))
    aws_opts = AwsOptions(stored.get("region"), stored.get("profile"), stored.get("endpoint_url"))
    return _execute(record, playbook, incident, config, registry, journal, aws_opts, opts, state, prompt,
                    stream, session, resume=True, trail=load_trail(state, run_id, journal), stop=stop,
                    notify_settings=_notify_settings(stored, config))


def _trail_path(state: Path, run_id: str) -> Path:
    return state / "trails" / f"{run_id}.json.gz"


def save_trail(state: Path, run_id: str, trail: tuple[list[dict[str, Any]], list[str]],
               journal: Journal | None = None) -> None:
    """The CloudTrail records a run was given, kept with the run so a resume attributes the same way
    (in the DynamoDB journal: in the table, so a resume on another machine has them too)."""
    import gzip
    import json

    from runner.dynamo_journal import DynamoJournal

    if isinstance(journal, DynamoJournal):
        journal.put_attachment(run_id, "trail", {"sources": trail[1], "Records": trail[0]})
        return
    path = _trail_path(state, run_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(gzip.compress(json.dumps({"sources": trail[1], "Records": trail[0]}).encode()))


def load_trail(state: Path, run_id: str, journal: Journal | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    import gzip
    import json

    from runner.dynamo_journal import DynamoJournal

    if isinstance(journal, DynamoJournal):
        kept = journal.get_attachment(run_id, "trail") or {}
        return list(kept.get("Records", [])), list(kept.get("sources", []))
    path = _trail_path(state, run_id)
    if not path.is_file():
        return [], []
    doc = json.loads(gzip.decompress(path.read_bytes()))
    return list(doc.get("Records", [])), list(doc.get("sources", []))


def approve_steps(run_id: str, step_ids: list[str] | None, *, by: str, reason: str,
                  state: Path, expect: dict[str, str] | None = None,
                  config_path: str | None = None) -> list[ApprovalRecord]:
    """Approve the named steps of a paused run, or (`step_ids=None`) every step awaiting approval,
    each bound to the plan it showed. Unknown or not-waiting steps are refused before any is recorded.
    `expect` (step -> plan digest, as `stanch status` and the notification show it) binds each approval
    to the plan the approver saw: if a step was re-planned since, or a step awaits approval that has no
    expected digest, nothing is approved (RefusedError). `config_path` selects the journal as it does
    for a run (a `[journal]` in that file, else STANCH_CONFIG, else the default)."""
    journal = open_journal(state, load_config(config_path) if config_path else None)
    try:
        record = journal.get_run(run_id)
        steps = journal.steps(run_id)
        waiting = sorted(s for s, r in steps.items() if r.status == StepStatus.AWAITING_APPROVAL)
        hint = f"steps awaiting approval: {', '.join(waiting)}" if waiting else "no step awaits approval"
        if record.status != RunStatus.AWAITING_APPROVAL or not waiting:
            raise InputError("--step", [Problem(run_id, f"run {run_id} is {record.status}; {hint}")])
        # a step that only its own approval may open (contain-suspects) is never part of --all-pending
        explicit = {s["id"] for s in (record.result or {}).get("steps", []) if s.get("approval") == "explicit"}
        if step_ids is None:
            wanted = [s for s in waiting if s not in explicit]
            if not wanted:
                raise InputError("--all-pending", [Problem(run_id, f"only {', '.join(waiting)} awaits approval and "
                                                                   "it needs its own: --step " + waiting[0])])
        else:
            wanted = list(dict.fromkeys(step_ids))
        bad = [s for s in wanted if s not in waiting]
        if bad:
            raise InputError("--step", [Problem(s, f"run {run_id} has no step '{s}' awaiting approval ({hint})")
                                        for s in bad])
        if expect is not None:
            _check_expected_plans(run_id, wanted, steps, expect)
        log = make_logger(audit_sink(journal, state, run_id), None, run_id=run_id, incident_id=record.incident_id,
                          playbook=record.playbook, dry_run=record.dry_run)
        recorded = []
        for step_id in wanted:
            plan = steps[step_id].plan or {}
            digests = sorted(c["digest"] for c in plan.get("changes", []))
            approval = ApprovalRecord(run_id=run_id, step_id=step_id, by=by, reason=reason, at=now_iso(),
                                      plan_digest=str(plan.get("digest", "")), change_digests=digests)
            journal.add_approval(approval)
            log.info("approval.recorded", step=step_id, by=by, message=reason, plan_digest=approval.plan_digest)
            recorded.append(approval)
        anchor(journal, state, run_id)
        return recorded
    finally:
        journal.close()


def _check_expected_plans(run_id: str, wanted: list[str], steps: dict[str, Any],
                          expect: dict[str, str]) -> None:
    """Refuse (before anything is recorded) unless each step to approve still holds the plan the
    approver saw: a re-planned step has a new digest, a newly waiting step has none given."""
    extra = [s for s in expect if s not in wanted]
    if extra:
        raise InputError("--plan", [Problem(s, f"step '{s}' is not being approved; --plan names only steps "
                                               "given with --step (or awaiting, with --all-pending)") for s in extra])
    short = [s for s, d in expect.items() if len(d) < 8 or any(ch not in "0123456789abcdef" for ch in d.lower())]
    if short:
        raise InputError("--plan", [Problem(s, f"'{expect[s]}' is not a plan digest (8+ hex characters, as "
                                               "`stanch status` shows it)") for s in short])
    stale = []
    for step_id in wanted:
        current = str((steps[step_id].plan or {}).get("digest", ""))
        seen = expect.get(step_id)
        if seen is None:
            stale.append(f"step {step_id} awaits approval (plan {current}) but no --plan was given for it")
        elif not current.startswith(seen.lower()):
            stale.append(f"step {step_id} was re-planned: its plan is now {current}, not {seen}")
    if stale:
        raise RefusedError(f"run {run_id}: nothing was approved; " + "; ".join(stale)
                           + f". Look at `stanch status {run_id}` again and approve what it shows now.")


def approve_step(run_id: str, step_id: str, *, by: str, reason: str, state: Path) -> ApprovalRecord:
    return approve_steps(run_id, [step_id], by=by, reason=reason, state=state)[0]


def rollback_run(
    run_id: str, *, options: RunOptions, state: Path, prompt: Prompt | None = None,
    stream: TextIO | None = sys.stderr, session: AwsSession | None = None,
    steps: list[str] | None = None, targets: list[str] | None = None,
) -> Outcome:
    """Undo a finished run's applied changes, as a new run of a generated one-step playbook
    (approval-gated, journaled, verified like any other). `steps` / `targets` restrict it to the
    changes of those steps and/or on those ARNs (a partial rollback)."""
    import yaml

    journal = open_journal(state)
    try:
        record = journal.get_run(run_id)
    finally:
        journal.close()
    if record.status in ACTIVE:
        raise InputError(run_id, [Problem("", f"run {run_id} is still {record.status}; finish it "
                                              f"(stanch resume) or give it up (stanch cancel) first")])
    applied = [{k: c[k] for k in ("operation", "target", "params", "previous")}
               for s in (record.result or {}).get("steps", []) for c in s.get("changes", [])
               if c.get("status") == ChangeStatus.APPLIED]
    if not applied:
        raise InputError(run_id, [Problem("", f"run {run_id} applied no change; there is nothing to roll back")])
    if steps or targets:
        applied = _pick_changes(record, run_id, steps or [], targets or [])
    folder = state / "rollback"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "rollback", "description": f"Undo the changes run {run_id} applied",
        "steps": [{"id": "revert", "action": "rollback.revert", "approval": "required",
                   "with": {"run_id": run_id, "changes": applied, "protected_lookalikes":
                            ((record.result or {}).get("scope") or {}).get("protected_lookalikes", [])}}],
    }, sort_keys=False))
    incident = validate_incident(f"run {run_id} incident", record.incident)
    return start_run(incident, playbook_ref=str(path), config_path=record.options.get("config"), options=options,
                     aws_opts=AwsOptions(record.options.get("region"), record.options.get("profile"),
                                         record.options.get("endpoint_url")),
                     state=state, prompt=prompt, stream=stream, session=session)


def _pick_changes(record: RunRecord, run_id: str, steps: list[str], targets: list[str]) -> list[dict[str, Any]]:
    """The applied changes of the named steps and/or targets; unknown names are bad input."""
    by_step = {s["id"]: [c for c in s.get("changes", []) if c.get("status") == ChangeStatus.APPLIED]
               for s in (record.result or {}).get("steps", [])}
    known_steps = sorted(k for k, v in by_step.items() if v)
    known_targets = sorted({c["target"] for v in by_step.values() for c in v})
    problems = [Problem("--step", f"'{s}' applied no change in run {run_id}; steps that did: "
                                  f"{', '.join(known_steps)}") for s in steps if s not in known_steps]
    problems += [Problem("--target", f"run {run_id} applied no change to '{t}'; targets: "
                                     f"{', '.join(known_targets)}") for t in targets if t not in known_targets]
    if problems:
        raise InputError(run_id, problems)
    return [{k: c[k] for k in ("operation", "target", "params", "previous")}
            for step_id, changes in by_step.items() if not steps or step_id in steps
            for c in changes if not targets or c["target"] in targets]


def cancel_run(run_id: str, *, by: str, reason: str, state: Path) -> RunRecord:
    """Give up on an unfinished run (status cancelled, lock released). Nothing is reverted."""
    journal = open_journal(state)
    try:
        record = journal.get_run(run_id)
        if record.status not in ACTIVE:
            raise InputError(run_id, [Problem("", f"run {run_id} is already {record.status}")])
        result = dict(record.result or {}) or _partial_document(record, journal)
        lifecycle = RunLifecycle(record.status, lambda _: None)
        lifecycle.fire("cancel")  # a responder giving up on an unfinished run
        result.update(status=lifecycle.status, cancelled={"by": by, "reason": reason, "at": now_iso()})
        journal.set_run_status(run_id, lifecycle.status, result)
        journal.release(run_id)
        make_logger(audit_sink(journal, state, run_id), None, run_id=run_id, incident_id=record.incident_id,
                    playbook=record.playbook, dry_run=record.dry_run).info(
            "run.cancelled", by=by, message=reason, outcome=lifecycle.status, status=lifecycle.status)
        anchor(journal, state, run_id)
        record.status = lifecycle.status
        record.result = result
        return record
    finally:
        journal.close()


def _partial_document(record: RunRecord, journal: Journal) -> dict[str, Any]:
    """A run document from the journal's steps, for a run whose process never finished."""
    return {
        "run_id": record.run_id, "incident_id": record.incident_id, "playbook": record.playbook,
        "status": record.status, "dry_run": record.dry_run, "steps": [
            {"id": s.step_id, "action": "", "status": s.status, "error": s.error,
             "changes": (s.plan or {}).get("changes", [])} for s in journal.steps(record.run_id).values()],
        "manual_actions": [],
    }


def list_runs(state: Path, *, incident: str | None = None, status: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    """Recent runs, newest first, optionally of one incident and/or in one status."""
    journal = open_journal(state)
    try:
        runs = journal.list_runs(limit=100_000 if incident or status else limit)
    finally:
        journal.close()
    picked = [r for r in runs if (incident is None or r.incident_id == incident)
              and (status is None or r.status == status)][:limit]
    return [{"run_id": r.run_id, "incident_id": r.incident_id, "playbook": r.playbook, "status": r.status,
             "dry_run": r.dry_run, "created_at": r.created_at, "updated_at": r.updated_at,
             "reason": ((r.result or {}).get("cancelled") or {}).get("reason")} for r in picked]


def get_run(state: Path, run_id: str) -> RunRecord:
    journal = open_journal(state)
    try:
        return journal.get_run(run_id)
    finally:
        journal.close()


def incident_runs(state: Path, incident_id: str) -> list[RunRecord]:
    """Every run of one incident, newest first."""
    journal = open_journal(state)
    try:
        return journal.runs_of_incident(incident_id)
    finally:
        journal.close()


def run_is_executing(state: Path, run_id: str) -> bool:
    """True while some process (run, resume, worker) executes the run."""
    journal = open_journal(state)
    try:
        return journal.is_held(run_id)
    finally:
        journal.close()


def run_status(run_id: str | None, state: Path) -> list[dict[str, Any]] | dict[str, Any]:
    if run_id is None:
        return list_runs(state)
    journal = open_journal(state)
    try:
        record = journal.get_run(run_id)
        doc: dict[str, Any] = dict(record.result) if record.result else _partial_document(record, journal)
        doc["status"] = record.status
        doc["approvals"] = [{"step": a.step_id, "by": a.by, "reason": a.reason, "at": a.at,
                             "plan_digest": a.plan_digest} for a in journal.approvals(run_id)]
        return doc
    finally:
        journal.close()


def audit_problems(state: Path) -> tuple[list[str], int | None]:
    """(problems, number of lines) of the state directory's audit log, checked against the heads its
    journal anchored; (.., None) when there is neither a log nor a journal to check."""
    from runner.audit import Anchor, verify_chain
    from runner.journal import SqliteJournal, journal_settings

    if journal_settings().backend == "dynamodb":
        return _table_audit_problems(state)
    path = state / "audit.jsonl"
    journal_path = state / "journal.sqlite3"
    anchors: list[Anchor] = []
    runs = 0
    live: set[str] = set()
    if path.is_symlink():  # tampering, not bad input: reported before the journal would refuse the directory
        return [f"{path.name}: is a symlink; not followed"], 0
    if journal_path.is_file():
        journal = SqliteJournal(state)
        try:
            anchors = [Anchor(a.run_id, a.audit_seq, a.audit_sha256) for a in journal.anchors()]
            records = journal.list_runs(limit=1_000_000)
            runs = len(records)
            live = {r.run_id for r in records if journal.is_held(r.run_id)}
        finally:
            journal.close()
    if not path.exists() and not path.is_symlink() and not anchors and not runs:
        return [], None
    problems = verify_chain(path, anchors, runs=runs, live_runs=live)
    lines = len(path.read_text(encoding="utf-8", errors="replace").splitlines()) if path.is_file() else 0
    return problems, lines


def _table_audit_problems(state: Path) -> tuple[list[str], int | None]:
    """`audit_problems` for the DynamoDB journal: every run's chain in the table, against its head and the
    heads the journal anchored for it. Runs past their TTL (being deleted by DynamoDB) are skipped."""
    from runner.audit import Anchor, verify_lines
    from runner.dynamo_journal import DynamoJournal

    journal = open_journal(state)
    assert isinstance(journal, DynamoJournal)
    problems: list[str] = []
    total = 0
    records = [r for r in journal.list_runs(limit=1_000_000) if not journal.run_expired(r)]
    for record in records:
        rid = record.run_id
        lines = journal.audit_lines(rid)
        total += len(lines)
        head = journal.audit_head(rid)
        anchors = [Anchor(a.run_id, a.audit_seq, a.audit_sha256) for a in journal.anchors(rid)]
        live = {rid} if journal.is_held(rid) else set()
        found = verify_lines(lines, head, head_present=head is not None, head_name="audit-head", anchors=anchors,
                             runs=0 if live else 1, live_runs=live)
        problems += [f"run {rid}: {p}" for p in found]
    return problems, (total if records else None)


def evidence_target(target: str, state: Path) -> tuple[Path, str | None, str | None]:
    """(bundle directory, its run id, the manifest digest the journal recorded for that run) for
    `stanch evidence verify RUN_ID|DIR`. Symlinks are refused, never followed."""
    from actions.evidence import MANIFEST, MalformedManifestError, read_manifest
    from runner.journal import SqliteJournal, journal_settings

    path = Path(target)
    journal: Journal | None
    if journal_settings().backend == "dynamodb":
        journal = open_journal(state)
    else:
        journal = SqliteJournal(state) if (state / "journal.sqlite3").is_file() else None
    try:
        if path.is_symlink() or path.exists():
            bundle, run_id = path, None
        elif journal is not None:
            record = journal.get_run(target)
            run_id = record.run_id
            bundle = state / "evidence" / record.incident_id / run_id  # where runs write it
            recorded = ((record.result or {}).get("evidence") or {}).get("path")
            if recorded and not (bundle.exists() or bundle.is_symlink()):
                bundle = Path(recorded)
        else:
            raise InputError(target, [Problem("", f"no such bundle directory, and no journal in {state} "
                                                  "to look a run up in")])
        if bundle.is_symlink():
            raise InputError(str(bundle), [Problem("", "is a symlink; evidence verify never follows symlinks")])
        if not (bundle / MANIFEST).is_file() and not (bundle / MANIFEST).is_symlink():
            raise InputError(str(bundle), [Problem("", f"not an evidence bundle (no {MANIFEST})")])
        if run_id is None and journal is not None and journal.has_run(bundle.name):
            run_id = bundle.name  # evidence/<incident>/<run id>: the journal, not the manifest, says whose
        if run_id is None:
            try:
                found = read_manifest(bundle).get("run_id")
            except MalformedManifestError:
                found = None  # reported by the verification itself (exit 2)
            run_id = str(found) if isinstance(found, str) else None
        expected = None
        if journal is not None and run_id is not None:
            recorded_digests = [a.manifest_sha256 for a in journal.anchors(run_id) if a.manifest_sha256]
            expected = recorded_digests[-1] if recorded_digests else None
        return bundle, run_id, expected
    finally:
        if journal is not None:
            journal.close()
