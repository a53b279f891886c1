"""The run engine: plan, guard, gate, apply, journal and verify the steps of a playbook.

Steps are data. Each step moves on its own as soon as it can: when its needs are done it is
planned, checked against the guardrails, gated on approval and applied (its changes
concurrently, each journaled before and after), while independent steps do the same beside it.
A failed step stops only its dependants. When no step can move any more the run either pauses for
approval, or is verified by re-planning every step.
"""

from __future__ import annotations

import getpass
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from actions.base import Action, ActionContext, Change, Params, Plan
from actions.registry import Registry
from runner.aws import AwsSession
from runner.awserrors import clean_message, describe_client_error
from runner.config import Config
from runner.document import ChangeDoc, CoverageDoc, Evidence, ManualAction, Metrics, RunDocument, StepDoc
from runner.errors import StanchError
from runner.incident import Incident, format_loc
from runner.journal import ApprovalRecord, Journal, RunRecord, now_iso
from runner.lifecycle import RunLifecycle, StepEvent, StepFlow, StepMachine
from runner.playbook import Playbook, Step
from runner.regions import Coverage
from runner.status import ChangeStatus, RunStatus, StepStatus, exit_code
from runner.templates import TemplateError, render

__all__ = ["Engine", "RunOptions", "StepState", "exit_code"]
#: errors an action's AWS work may raise; anything else is a bug and propagates
STEP_ERRORS = (ClientError, BotoCoreError, StanchError, TemplateError, ValidationError)

Prompt = Callable[[Step, Plan], bool]
#: what `_apply_change` returns for a change it did not start because the run was asked to stop
_INTERRUPTED = "\x00interrupted"


def new_run_id() -> str:
    return f"r-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def default_approver() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    approve: tuple[str, ...] = ()
    approve_all: bool = False
    by: str = field(default_factory=default_approver)
    reason: str = ""
    max_changes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "by": self.by, "max_changes": self.max_changes}


@dataclass
class StepState:
    #: where the step is in the step lifecycle (runner/lifecycle.py); moved only by `fire`
    flow: StepFlow
    plan: Plan | None = None
    params: Params | None = None
    change_status: dict[str, ChangeStatus] = field(default_factory=dict)
    #: changes a killed process applied that a re-plan no longer lists
    earlier: list[Change] = field(default_factory=list)
    error: str | None = None
    verify_failures: list[str] = field(default_factory=list)

    @property
    def status(self) -> StepStatus:
        return self.flow.status

    def fire(self, event: StepEvent, error: str | None = None) -> None:
        """Move the step (an illegal event raises `transitions.MachineError`); `error` says why it stopped."""
        self.flow.fire(event)
        if error is not None:
            self.error = error

    def to_json(self) -> dict[str, Any]:
        plan = self.plan or Plan()
        return {
            "changes": [c.to_json() | {"digest": c.digest} for c in plan.changes],
            "earlier": [c.to_json() for c in self.earlier],
            "outputs": plan.outputs, "manual": plan.manual, "notes": plan.notes,
            "digest": plan.digest, "change_status": self.change_status,
        }


class Engine:
    def __init__(
        self, *, run: RunRecord, playbook: Playbook, incident: Incident, config: Config,
        registry: Registry, journal: Journal, aws: AwsSession, log: Any, options: RunOptions,
        prompt: Prompt | None = None, evidence_dir: Path | None = None,
        trail: tuple[list[dict[str, Any]], list[str]] = ([], []), stop: threading.Event | None = None,
    ) -> None:
        self.evidence_dir = evidence_dir
        #: set from outside (a worker's SIGTERM): changes in flight finish, nothing new starts, and the
        #: run stays in its active status for `stanch resume` (or another worker) to finish
        self.stop = stop or threading.Event()
        self.interrupted = False
        self.trail = trail
        self.run = run
        self.playbook = playbook
        self.incident = incident
        self.config = config
        self.registry = registry
        self.journal = journal
        self.aws = aws
        self.log = log
        self.options = options
        self.prompt = prompt
        self.started = time.monotonic()  # this process, for log durations
        # metrics count from the run's start, across processes; time spent paused for approval is
        # reported separately (paused_s), carried over from the run document of earlier processes
        self.run_start = _parse_iso(run.created_at)
        before = (run.result or {}).get("metrics") or {}
        self.paused_s = float(before.get("paused_s") or 0.0)
        if run.status == RunStatus.AWAITING_APPROVAL:
            self.paused_s += max(0.0, (datetime.now(UTC) - _parse_iso(run.updated_at)).total_seconds())
        self.first_change_s: float | None = before.get("time_to_first_change_s")
        self.finished_s: float | None = None
        self.step_machine = StepMachine()
        self.states: dict[str, StepState] = {s.id: StepState(self.step_machine.track()) for s in playbook.steps}
        self.actions: dict[str, Action[Any]] = {s.id: self._action(s) for s in playbook.steps}
        self.lifecycle = RunLifecycle(run.status, self._status_changed)
        self._stop_scheduling = False
        self._inflight: set[str] = set()
        #: held for lifecycle transitions, guardrail checks and prompts, which steps reach from threads
        self._lock = threading.RLock()
        self._forced_gates: set[str] = set()
        #: gated steps planned ahead of the approval of the steps they need (see _plan_ahead)
        self._ahead: set[str] = set()
        #: steps over the per-step cap: they wait for their own approval, like `approval: explicit`
        self._capped: dict[str, str] = {}
        self._refusal: str | None = None
        self._resumed = False
        #: what this run searched; a resumed run keeps what its earlier process recorded
        self.coverage = Coverage()
        self.coverage.merge_json((run.result or {}).get("coverage"))

    # ------------------------------------------------------------------ plumbing
    def _action(self, step: Step) -> Action[Any]:
        cls = self.registry.get(step.action)
        if cls is None:  # validated at load time; a resumed run may meet a changed registry
            raise StanchError(f"step {step.id}: action {step.action} is not registered")
        return cls()

    def _status_changed(self, status: RunStatus) -> None:
        self.journal.set_run_status(self.run.run_id, status)
        self.log.info("run.status", status=status)

    def _save(self, step: Step, state: StepState) -> None:
        self.journal.save_step(self.run.run_id, step.id, state.status, state.to_json(), state.error)

    def _event(self, name: str, step: Step, **kw: Any) -> None:
        self.log.info(name, step=step.id, action=step.action, **kw)

    def _template_scope(self) -> dict[str, Any]:
        scope: dict[str, Any] = {"incident": self.incident.to_json(), "steps": {}}
        for step in self.playbook.steps:
            state = self.states[step.id]
            if state.plan is None:
                continue
            scope["steps"][step.id] = state.plan.outputs
            published = self.actions[step.id].publishes
            if published:
                scope[published] = state.plan.outputs
        return scope

    def _restore(self) -> None:
        """Resume: take finished steps (and their outputs) from the journal."""
        saved = self.journal.steps(self.run.run_id)
        for step in self.playbook.steps:
            rec = saved.get(step.id)
            if rec is None or rec.plan is None:
                continue
            state = self.states[step.id]
            state.change_status = {d: ChangeStatus(s) for d, s in rec.plan.get("change_status", {}).items()}
            state.earlier = [Change.from_json(c) for c in rec.plan.get("earlier", [])]
            if rec.status in StepStatus.TERMINAL:
                state.flow = self.step_machine.track(rec.status)
                state.error = rec.error
                state.plan = Plan(
                    changes=[Change.from_json(c) for c in rec.plan.get("changes", [])],
                    outputs=rec.plan.get("outputs", {}), manual=rec.plan.get("manual", []),
                    notes=rec.plan.get("notes", []),
                )
            # an unfinished step stays pending: it is planned again against live state

    # ------------------------------------------------------------------ public
    def execute(self, resume: bool = False) -> dict[str, Any]:
        self._resumed = resume
        if resume:
            self._restore()
        # a read asked again in this run is answered from memory until a write ([aws] read_cache)
        self.aws.reads.enable(self.config.aws.read_cache)
        with ThreadPoolExecutor(self.config.runner.max_workers, thread_name_prefix="step") as steps_pool, \
                ThreadPoolExecutor(self.config.runner.max_workers, thread_name_prefix="call") as calls_pool:
            ctx = ActionContext(
                aws=self.aws, incident=self.incident, config=self.config, run_id=self.run.run_id,
                started_at=_started(self.run.created_at), fanout_pool=calls_pool, protected=self._is_protected,
                evidence_dir=self.evidence_dir, trail_records=self.trail[0], trail_sources=self.trail[1],
                coverage=self.coverage, log=self.log.info,
            )
            identity = self.aws.identity()
            self.identity_arn = identity.principal_arn
            self.log.info("run.started", identity=self.identity_arn, resume=resume)
            if identity.account != self.incident.account_id:
                self._refusal = (f"the AWS credentials are for account {identity.account} but the incident is in "
                                 f"account {self.incident.account_id}; use credentials (or --profile) for "
                                 f"{self.incident.account_id}, or set [accounts] role_name to assume a role there. "
                                 "Nothing was read or changed.")
                self.log.info("run.refused", outcome="refused", error=self._refusal)
            else:
                self._conduct(ctx, steps_pool)
            self._settle(ctx, steps_pool)
            self.aws.reads.enable(False)  # the session's later users (drill checks, verify) read AWS itself
        return self.result()

    def _is_protected(self, name: str, arn: str) -> bool:
        return self.config.is_protected(name, arn) or arn == self.identity_arn

    def _ready(self) -> list[Step]:
        """Pending steps whose needs are done. A step whose need failed is skipped, unless that need
        says `on_error: continue` (it must run first, but its dependants do not need it to succeed:
        evidence capture before compute containment, for example)."""
        ready = []
        ok = (StepStatus.PLANNED, *StepStatus.DONE) if self.options.dry_run else StepStatus.DONE
        for step in self.playbook.steps:
            state = self.states[step.id]
            if state.status != StepStatus.PENDING or step.id in self._inflight:
                continue
            blocked = [n for n in step.needs if self.states[n].status in StepStatus.STOPPED
                       and self.playbook.step(n).on_error != "continue"]
            if blocked:
                state.fire("skip", error=f"a step it needs did not complete: {', '.join(blocked)}")
                self._save(step, state)
                self._event("step.skipped", step, error=state.error)
            elif all(self.states[n].status in (*ok, *StepStatus.STOPPED) for n in step.needs):
                ready.append(step)
        return ready

    def _conduct(self, ctx: ActionContext, pool: ThreadPoolExecutor) -> None:
        """A step moves as soon as it can: it plans when its needs are done and applies when its own
        plan is ready and its gate is open, never waiting for a wave of other steps. A failed step
        stops only its dependants; a guardrail refusal stops scheduling anything new."""
        inflight: dict[Future[None], str] = {}
        with self._lock:
            self.lifecycle.fire("plan")
        while True:
            if self.stop.is_set() and not self._stop_scheduling and self._ready():
                self.interrupted = True  # steps were ready to go: the run is left for a resume
            elif not self._stop_scheduling:
                for step in self._ready():
                    self._inflight.add(step.id)
                    inflight[pool.submit(self._run_step, ctx, step)] = step.id
            if not inflight:
                if not self._stop_scheduling and not self.options.dry_run and not self.stop.is_set():
                    self._plan_ahead(ctx)
                return
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                self._inflight.discard(inflight.pop(future))
                future.result()  # a bug in the engine propagates; AWS errors are step failures already

    def _run_step(self, ctx: ActionContext, step: Step) -> None:
        self._plan_step(ctx, step)
        if self.options.dry_run or self.states[step.id].status != StepStatus.PLANNED:
            return
        if self.stop.is_set():  # planned, not applied: a resume plans it again
            self.interrupted = True
            return
        with self._lock:
            refusal = self._guard([step])
        if refusal:
            self._refusal = refusal
            self._stop_scheduling = True
            return
        if self._gate(step):
            with self._lock:
                self.lifecycle.fire("apply")  # the first step to apply moves the run; later ones are internal
            self._apply_step(ctx, step)

    # ------------------------------------------------------------------ steps
    def _plan_step(self, ctx: ActionContext, step: Step) -> None:
        state = self.states[step.id]
        action = self.actions[step.id]
        t0 = time.monotonic()
        try:
            raw = render(step.with_, self._template_scope())
            state.params = action.params_model.model_validate(raw)
            plan = action.plan(ctx, state.params)
        except ValidationError as exc:
            state.fire("fail", error="; ".join(f"with.{format_loc(tuple(e['loc']))}: {e['msg']}"
                                               for e in exc.errors()))
        except STEP_ERRORS as exc:
            state.fire("fail", error=_describe(exc))
        else:
            state.plan = plan
            state.change_status = {c.digest: ChangeStatus.PLANNED for c in plan.changes}
            if self._resumed:  # a fresh run has journaled nothing for a step it has not applied yet
                self._confirm_vanished(step, plan)
            if plan.changes:
                state.fire("plan")
            elif plan.manual:
                state.fire("find_manual")
            elif state.earlier and not self.options.dry_run:  # an earlier process applied all of it
                state.fire("find_applied")
            else:
                state.fire("find_done")
        ms = int((time.monotonic() - t0) * 1000)
        self._save(step, state)
        if state.status == StepStatus.FAILED:
            self._event("step.failed", step, outcome="failed", error=state.error, duration_ms=ms)
            return
        assert state.plan is not None
        self._event("step.planned", step, changes=len(state.plan.changes), outcome=state.status,
                    dry_run=self.options.dry_run, duration_ms=ms)
        for change in state.plan.changes:
            self._event("change.planned", step, operation=change.operation, target=change.target,
                        params=change.params, previous=change.previous, message=change.reason,
                        dry_run=self.options.dry_run)
        if state.status == StepStatus.MANUAL:
            for text in state.plan.manual:
                self._event("step.manual", step, message=text.splitlines()[0])

    def _confirm_vanished(self, step: Step, plan: Plan) -> None:
        """On resume: changes this run applied earlier, which a re-plan no longer lists.

        A change journaled as started but not finished, and no longer needed, reached AWS before
        the process died: it is recorded as applied now, once, and never sent again."""
        current = {c.digest for c in plan.changes}
        state = self.states[step.id]
        for rec in self.journal.changes(self.run.run_id):
            if rec.step_id != step.id or rec.digest in current:
                continue
            if rec.status == ChangeStatus.APPLYING:
                self.journal.change_finished(self.run.run_id, step.id, rec.digest, ChangeStatus.APPLIED)
                self._event("change.applied", step, operation=rec.change["operation"], target=rec.change["target"],
                            digest=rec.digest, outcome=ChangeStatus.APPLIED, confirmed_by="replan")
            if rec.status in (ChangeStatus.APPLYING, *ChangeStatus.DONE):
                change = Change.from_json(rec.change)
                if change.digest not in {c.digest for c in state.earlier}:
                    state.earlier.append(change)
                state.change_status[change.digest] = (ChangeStatus.APPLIED if rec.status == ChangeStatus.APPLYING
                                                      else ChangeStatus(rec.status))

    def _scope(self) -> dict[str, Any]:
        found = self._template_scope().get("scope")
        return found if isinstance(found, dict) else {}

    def _guard(self, steps: list[Step]) -> str | None:
        """Guardrails over the planned changes of these steps; a violation refuses the run.

        Protected principals are never touched, unless discovery escalated them (created inside the
        window or attributed to the attacker: a likely evasion, contained only through a gated step).
        A change that removes a protected principal's last admin path is refused, unless the attacker
        made that path (then the step is gated, with the reason)."""
        cap = self.options.max_changes or self.config.runner.max_changes_per_step  # --max-changes pre-approves
        scope = self._scope()
        # protected-looking principals that gated steps may change, as discovery (or a rollback of a run
        # that changed them) publishes them
        lookalikes = {arn for st in self.states.values() if st.plan is not None
                      for arn in st.plan.outputs.get("protected_lookalikes") or []}
        for step in steps:
            plan = self.states[step.id].plan
            assert plan is not None
            problems = []
            for change in plan.changes:
                name = change.target.rsplit("/", 1)[-1]
                if change.target == self.identity_arn:
                    problems.append(f"{change.target} is the runner's own identity")
                elif self.config.is_protected(name, change.target) and change.target not in lookalikes:
                    problems.append(f"{change.target} is a protected principal")
                elif change.target in lookalikes and not self._needs_approval(step):
                    problems.append(f"{change.target} is named like a protected principal and may only be "
                                    "changed by an approval-gated step")
            cut, attributed = last_admin_path_cut(plan.changes, scope.get("protected_admin_paths") or {})
            for principal in cut:
                if principal in attributed:
                    self._forced_gates.add(step.id)
                    self._event("guard.gated", step, message=f"removes the last admin path of protected "
                                                            f"{principal}, which the attacker made: approval needed")
                else:
                    problems.append(f"it would remove the last admin path of protected principal {principal}")
            if len(plan.changes) > cap and step.id not in self.config.runner.uncapped_steps:
                sample = ", ".join(c.target.rsplit("/", 1)[-1] for c in plan.changes[:5])
                note = (f"{len(plan.changes)} changes exceed the cap of {cap} per step: this step waits for its own "
                        f"approval (stanch approve {self.run.run_id} --step {step.id}, or --max-changes "
                        f"{len(plan.changes)}); sample: {sample}, ...")
                self._capped[step.id] = note
                if note not in plan.notes:
                    plan.notes.append(note)
                self._event("guard.capped", step, changes=len(plan.changes), message=note)
            if problems:
                state = self.states[step.id]
                state.fire("refuse", error="; ".join(dict.fromkeys(problems)))
                self._save(step, state)
                self._event("step.refused", step, outcome=state.status, error=state.error)
                return f"step {step.id}: {state.error}"
        return None

    def _needs_approval(self, step: Step) -> bool:
        return step.approval != "auto" or step.id in self._forced_gates or step.id in self._capped \
            or self.actions[step.id].risk in self.config.approval.require_for_tiers

    def _gate(self, step: Step) -> bool:
        if not self._needs_approval(step):
            return True
        state = self.states[step.id]
        assert state.plan is not None
        digests = {c.digest for c in state.plan.changes}
        recorded = [a for a in self.journal.approvals(self.run.run_id) if a.step_id == step.id]
        if any(digests <= set(a.change_digests) for a in recorded):
            return True
        if recorded:
            self._event("approval.stale", step, message="the plan changed since it was approved; approve again")
        pre = self._pre_approval(step)
        if pre is not None:
            self.record_approval(step, state.plan, self.options.by if "config" not in pre else "config",
                                 self.options.reason or pre)
            return True
        with self._lock:  # one question at a time on the terminal
            asked = self.prompt is not None and self.prompt(step, state.plan)
            if self.prompt is not None:
                self.aws.reads.clear()  # a person may have taken minutes: later plans read AWS afresh
        if asked:
            self.record_approval(step, state.plan, self.options.by, self.options.reason or "approved at the terminal")
            return True
        state.fire("gate")
        self._save(step, state)
        self._event("step.awaiting_approval", step, changes=len(state.plan.changes),
                    message=f"approve with: stanch approve {self.run.run_id} --step {step.id}")
        return False

    def _pre_approval(self, step: Step) -> str | None:
        """Why this step's gate opens without a question (--approve, --approve-all, config), or None."""
        explicit = step.approval == "explicit" or step.id in self._capped  # only this step's own approval counts
        if step.id in self.options.approve:
            return f"pre-approved with --approve {step.id}"
        if self.options.approve_all and not explicit:
            return "pre-approved with --approve-all"
        if step.id in self.config.approval.pre_approved_steps and not explicit:
            return f"pre-approved by config ({self.config.source})"
        return None

    def _plan_ahead(self, ctx: ActionContext) -> None:
        """Nothing can move: every remaining step waits for an approval. A gated step whose needs are
        all done or themselves awaiting approval is planned now, against live state, so every pending
        gate shows at once and one `stanch approve --all-pending` covers the chain. Its approval binds
        to this plan: after its needs apply it is planned again and applies without another question
        only if the plan is covered by what was approved; a plan that changed pauses again."""
        progressed = True
        while progressed:
            progressed = False
            for step in self.playbook.steps:
                state = self.states[step.id]
                needs = [self.states[n].status for n in step.needs]
                if state.status != StepStatus.PENDING or step.id in self._ahead \
                        or StepStatus.AWAITING_APPROVAL not in needs \
                        or any(n not in (*StepStatus.DONE, StepStatus.AWAITING_APPROVAL) for n in needs) \
                        or not self._needs_approval(step) or self._pre_approval(step) is not None:
                    continue
                self._ahead.add(step.id)
                try:
                    params = self.actions[step.id].params_model.model_validate(
                        render(step.with_, self._template_scope()))
                    plan = self.actions[step.id].plan(ctx, params)
                except STEP_ERRORS as exc:  # planned properly (and reported) once its needs are done
                    self._event("step.plan_ahead_failed", step, error=_describe(exc))
                    continue
                if not plan.changes:
                    continue  # nothing to approve yet; it plans again after its needs
                waiting = [n for n in step.needs if self.states[n].status == StepStatus.AWAITING_APPROVAL]
                plan.notes.append(f"planned ahead of {', '.join(waiting)} (awaiting approval): approve it with them; "
                                  "after they apply it is planned again and applies without another question "
                                  "if its changes are the ones approved")
                state.params, state.plan = params, plan
                state.change_status = {c.digest: ChangeStatus.PLANNED for c in plan.changes}
                state.fire("plan")
                with self._lock:
                    refusal = self._guard([step])  # the cap and protected principals: as for any plan
                if refusal:
                    self._refusal = refusal
                    self._stop_scheduling = True
                    return
                state.fire("gate")
                self._save(step, state)
                self._event("step.awaiting_approval", step, changes=len(plan.changes), planned_ahead=True,
                            needs=waiting, message=f"approve with: stanch approve {self.run.run_id} --step {step.id}"
                                                   " (or --all-pending)")
                progressed = True

    def record_approval(self, step: Step, plan: Plan, by: str, reason: str) -> None:
        self.journal.add_approval(ApprovalRecord(
            run_id=self.run.run_id, step_id=step.id, by=by, reason=reason, at=now_iso(),
            plan_digest=plan.digest, change_digests=sorted(c.digest for c in plan.changes),
        ))
        self._event("approval.recorded", step, by=by, message=reason)

    def _apply_step(self, ctx: ActionContext, step: Step) -> None:
        state = self.states[step.id]
        action = self.actions[step.id]
        assert state.plan is not None
        state.fire("apply")
        self._save(step, state)
        t0 = time.monotonic()
        changes = state.plan.changes
        if action.ordered:
            results = [self._apply_change(ctx, step, action, c) for c in changes]
        else:
            results = ctx.fanout(lambda c: self._apply_change(ctx, step, action, c), changes)
        failures = [r for r in results if r and r is not _INTERRUPTED]
        if _INTERRUPTED in results and not failures:  # the rest is left for a resume, the step unfinished
            self._event("step.interrupted", step, changes=len(changes), message="stopped before all its changes")
            return
        if failures:
            state.fire("fail", error="; ".join(failures))
        else:
            state.fire("hand_over" if state.plan.manual else "finish")
        self._save(step, state)
        ms = int((time.monotonic() - t0) * 1000)
        name = "step.failed" if failures else "step.applied"
        self._event(name, step, outcome=state.status, error=state.error, changes=len(changes), duration_ms=ms)

    def _apply_change(self, ctx: ActionContext, step: Step, action: Action[Any], change: Change) -> str | None:
        state = self.states[step.id]
        rid = self.run.run_id
        if self.stop.is_set():  # never started, so never half-done: a resume plans it again
            self.interrupted = True
            return _INTERRUPTED
        if not self.journal.change_started(rid, step.id, change.digest, change.to_json()):
            # another worker holds this change, or sent it after this one planned: never sent twice
            held = next((c for c in self.journal.changes(rid) if c.step_id == step.id and c.digest == change.digest),
                        None)
            theirs = held.status if held else "unknown"
            state.change_status[change.digest] = ChangeStatus(theirs) if theirs in ChangeStatus.DONE \
                else ChangeStatus.SKIPPED
            self._event("change.skipped", step, operation=change.operation, target=change.target,
                        digest=change.digest, outcome=ChangeStatus.SKIPPED,
                        message=f"claimed by another worker ({theirs}); not sent again")
            return None
        self._event("change.started", step, operation=change.operation, target=change.target, digest=change.digest)
        t0 = time.monotonic()
        try:
            outcome = action.apply(ctx, change)
        except STEP_ERRORS as exc:
            err = _describe(exc)
            state.change_status[change.digest] = ChangeStatus.FAILED
            self.journal.change_finished(rid, step.id, change.digest, ChangeStatus.FAILED, err)
            ms = int((time.monotonic() - t0) * 1000)
            self._event("change.failed", step, operation=change.operation, target=change.target,
                        digest=change.digest, outcome=ChangeStatus.FAILED, error=err, duration_ms=ms)
            return f"{change.operation} {change.target}: {err}"
        if self.first_change_s is None:
            self.first_change_s = self._elapsed()
        state.change_status[change.digest] = ChangeStatus(outcome)
        self.journal.change_finished(rid, step.id, change.digest, outcome)
        ms = int((time.monotonic() - t0) * 1000)
        self._event(f"change.{outcome}", step, operation=change.operation, target=change.target,
                    digest=change.digest, outcome=outcome, previous=change.previous, duration_ms=ms)
        return None

    # ------------------------------------------------------------------ settle
    def _settle(self, ctx: ActionContext, pool: ThreadPoolExecutor) -> None:
        statuses = [self.states[s.id].status for s in self.playbook.steps]
        if self.interrupted and not self._refusal:
            # stopped from outside: the run keeps its active status and its incident lock; every change
            # sent so far is journaled, so a resume (any process) re-plans and applies only the rest
            self.journal.set_run_status(self.run.run_id, self.lifecycle.state, self.result())
            self.log.info("run.interrupted", status=self.lifecycle.state,
                          message=f"stopped on request; continue with: stanch resume {self.run.run_id}")
            return
        if self._refusal:
            self.lifecycle.fire("refuse")
        elif self.options.dry_run:
            incomplete = any(st in StepStatus.STOPPED for st in statuses)
            self.lifecycle.fire("fail" if incomplete else "finish_dry_run")
        elif StepStatus.AWAITING_APPROVAL in statuses and not self._stop_scheduling:
            self.lifecycle.fire("pause")
        else:
            self.lifecycle.fire("verify")
            for step in self.playbook.steps:
                state = self.states[step.id]
                if state.status == StepStatus.PENDING:
                    state.fire("skip", error="not started: a guardrail refused the run")
                    self._save(step, state)
                    self._event("step.skipped", step, error=state.error)
            # each step checks its own applied changes; a step that changed nothing reads nothing
            done = [s for s in self.playbook.steps if self.states[s.id].status in StepStatus.DONE
                    and self.actions[s.id].risk != "read-only" and self._applied(s)]
            self.aws.reads.clear()  # verification reads AWS as it is now (steps still share those reads)
            list(pool.map(lambda s: self._verify_step(ctx, s), done))
            settle = self.config.verify.iam_settle_seconds
            unsettled = [s for s in done if self.states[s.id].verify_failures and any(
                c.operation.startswith("iam:") for c in self._applied(s))]
            if unsettled and settle > 0:  # IAM is eventually consistent: look once more before judging
                time.sleep(settle)
                self.aws.reads.clear()
                list(pool.map(lambda s: self._verify_step(ctx, s), unsettled))
            self.finished_s = self._elapsed()
            states = [self.states[s.id] for s in self.playbook.steps]
            bad = [st for st in states if st.status not in StepStatus.DONE or st.verify_failures]
            blind = self.coverage.blocking_gaps()
            for gap in blind:
                self.log.info("coverage.gap", region=gap.region, service=gap.service, error=gap.error)
            if bad:
                acted = any(st.status in StepStatus.ACTED for st in states)
                self.lifecycle.fire("contain_partially" if acted else "fail")
            elif blind:  # what could not be searched may still hold attacker activity
                self.lifecycle.fire("contain_partially")
            elif any(st.status == StepStatus.MANUAL for st in states):
                self.lifecycle.fire("need_manual")
            else:
                self.lifecycle.fire("contain")
        status = self.lifecycle.status
        if status.is_terminal and not self.options.dry_run:
            self.journal.release(self.run.run_id)
        result = self.result()
        self.journal.set_run_status(self.run.run_id, status, result)
        self.log.info("run.finished", outcome=status, status=status,
                      duration_ms=int((time.monotonic() - self.started) * 1000))

    def _applied(self, step: Step) -> list[Change]:
        """The changes of `step` that hold in AWS by this run (this process or an earlier one)."""
        state = self.states[step.id]
        return [c for c in [*state.earlier, *(state.plan or Plan()).changes]
                if state.change_status.get(c.digest) in ChangeStatus.DONE]

    def _verify_step(self, ctx: ActionContext, step: Step) -> None:
        state = self.states[step.id]
        action = self.actions[step.id]
        state.fire("verify")  # legal only for a finished step; it checks and never moves it
        try:
            params = state.params or action.params_model.model_validate(
                render(step.with_, self._template_scope()))
            failures = action.verify(ctx, params, self._applied(step))
        except STEP_ERRORS as exc:
            failures = [f"could not verify: {_describe(exc)}"]
        state.verify_failures = failures
        if failures:
            self._event("verify.failed", step, outcome="unverified", error="; ".join(failures))
        else:
            self._event("verify.ok", step, outcome="verified")

    # ------------------------------------------------------------------ output
    def result(self) -> dict[str, Any]:
        """The run document (DESIGN.md), as JSON-ready values."""
        return self.document().dump()

    def document(self) -> RunDocument:
        """The run document as its typed model (runner/document.py)."""
        steps = []
        manual = []
        for step in self.playbook.steps:
            state = self.states[step.id]
            plan = state.plan or Plan()
            changes = [ChangeDoc(**c.to_json(), status=state.change_status.get(c.digest, ChangeStatus.PLANNED))
                       for c in [*state.earlier, *plan.changes]]
            steps.append(StepDoc(
                id=step.id, action=step.action, status=state.status, changes=changes, error=state.error,
                approval=("explicit" if step.approval == "explicit" else "required") if self._needs_approval(step)
                else None,
                verification=state.verify_failures or None, notes=plan.notes or None,
                plan_digest=plan.digest if state.status == StepStatus.AWAITING_APPROVAL else None,
            ))
            first = self.actions[step.id].manual_first
            manual += [ManualAction(step=step.id, instructions=text, first=True if first else None)
                       for text in plan.manual]
        manual.sort(key=lambda m: not m.first)  # stable: urgent ones first, the rest in step order
        error = self._refusal
        if error is None and self.coverage.blocking_gaps() and \
                self.lifecycle.status == RunStatus.PARTIALLY_CONTAINED:
            error = "not everything could be searched, so containment is not confirmed: " + "; ".join(
                f"{g.service} in {g.region} ({g.error})" for g in self.coverage.blocking_gaps())
        published = self._template_scope()
        activity = published.get("attacker_activity")
        evidence = None
        for step in self.playbook.steps:
            captured = self.states[step.id].plan
            if step.action.startswith("evidence.") and captured is not None and captured.outputs.get("path"):
                evidence = Evidence(path=captured.outputs["path"], manifest_sha256=captured.outputs["manifest_sha256"])
        return RunDocument(
            run_id=self.run.run_id, incident_id=self.incident.id, playbook=self.playbook.name,
            status=self.lifecycle.status, dry_run=self.options.dry_run, steps=steps, manual_actions=manual,
            assumed_role=assumed.to_json() if (assumed := getattr(self.aws, "assumed_role", None)) else None,
            error=error, scope=published.get("scope"),
            attacker_activity=activity.get("activity", []) if activity is not None else None,
            evidence=evidence, coverage=CoverageDoc.model_validate(self.coverage.to_json()),
            metrics=Metrics.model_validate(self.metrics()),
        )

    def _elapsed(self) -> float:
        """Seconds since the run started (its first process), paused time included."""
        return round((datetime.now(UTC) - self.run_start).total_seconds(), 3)

    def metrics(self) -> dict[str, Any]:
        calls = self.aws.call_counts()
        contained = self.finished_s if self.lifecycle.status in RunStatus.DONE else None
        elapsed = self._elapsed()
        return {
            "time_to_first_change_s": self.first_change_s,
            "time_to_contained_s": contained,
            "duration_s": elapsed,
            "paused_s": round(self.paused_s, 3),
            "active_s": round(max(0.0, elapsed - self.paused_s), 3),
            "api_calls_total": sum(calls.values()), "api_calls": calls,
            "api_calls_cached": sum(self.aws.cached_counts().values()),
            "refused_writes": list(self.aws.refused),
        }


def _started(created_at: str) -> datetime:
    """When the run started (a resumed run keeps its start: plans that cite it stay the same)."""
    try:
        return datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)


def last_admin_path_cut(changes: list[Change], paths: dict[str, list[str]]) -> tuple[set[str], set[str]]:
    """Protected principals whose every admin path the changes remove; and those of them whose
    removed paths all come from changes attributed to the attacker (their reason cites an event)."""
    removed: dict[str, set[str]] = {}
    by_attacker: dict[str, bool] = {}
    for c in changes:
        p = c.params
        hits: list[tuple[str, str]] = []
        if c.operation == "iam:DetachGroupPolicy":
            group = c.target
            hits = [(who, path) for who, ps in paths.items() for path in ps if path == f"group:{group}"]
        elif c.operation == "iam:RemoveUserFromGroup":
            hits = [(c.target, path) for path in paths.get(c.target, []) if path.endswith(f":group/{p['GroupName']}")]
        elif c.operation == "iam:DetachUserPolicy":
            hits = [(c.target, f"user-policy:{p['PolicyArn']}")]
        elif c.operation in ("iam:PutUserPolicy", "iam:PutGroupPolicy") and \
                "Quarantine" in str(p.get("PolicyDocument")):
            hits = [(who, path) for who, ps in paths.items() for path in ps
                    if who == c.target or path == f"group:{c.target}"]
        for who, path in hits:
            if path in paths.get(who, []):
                removed.setdefault(who, set()).add(path)
                by_attacker[who] = by_attacker.get(who, True) and "the attacker's change" in c.reason
    cut = {who for who, gone in removed.items() if gone >= set(paths.get(who, []))}
    return cut, {who for who in cut if by_attacker.get(who)}
def _parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return describe_client_error(exc)
    if isinstance(exc, StanchError):
        return clean_message(exc.message, limit=2000)
    return clean_message(f"{type(exc).__name__}: {exc}", limit=2000)


