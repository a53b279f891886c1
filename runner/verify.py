"""`stanch verify RUN_ID`: is a finished run still contained?

Every containment step of the run is planned again, read-only (a dry-run session: nothing can be
written), from the scope the run recorded. A change in any of those plans is *drift*: something the
attacker (or someone) undid. With `reapply`, the drift is applied under the run's own approval rules:
a gated step's change is applied only if the run's recorded approval covers it (same change digest)
or it is approved now; each re-application is journaled under the run and logged.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from actions.base import ActionContext, Plan
from actions.registry import Registry, builtin_registry
from runner.audit import make_logger
from runner.aws import AwsSession
from runner.config import Config, load_config
from runner.engine import STEP_ERRORS, Engine, Prompt, RunOptions
from runner.errors import InputError, Problem
from runner.incident import validate_incident
from runner.journal import open_journal
from runner.playbook import load_playbook
from runner.regions import Coverage
from runner.service import audit_sink
from runner.status import RunStatus, StepStatus

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> float:
    """`90s`, `5m`, `2h`, `1h30m` or plain seconds -> seconds (> 0)."""
    import re

    raw = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", raw)
    if not raw or not parts or "".join(n + u for n, u in parts) != raw:
        raise InputError(what, [Problem("", f"{text!r} is not a duration; use e.g. 30s, 5m, 2h, 1h30m")])
    seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise InputError(what, [Problem("", "the duration must be more than 0")])
    return seconds


@dataclass
class Check:
    """One verification of a run against the account."""

    run_id: str
    checked_at: str
    drift: list[dict[str, Any]] = field(default_factory=list)
    reapplied: list[dict[str, Any]] = field(default_factory=list)
    not_reapplied: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    coverage: dict[str, Any] = field(default_factory=dict)

    @property
    def contained(self) -> bool:
        """True when nothing is left to do after this check (drift re-applied counts as restored)."""
        restored = {(d["step"], d["target"], d["operation"]) for d in self.reapplied}
        open_drift = [d for d in self.drift if (d["step"], d["target"], d["operation"]) not in restored]
        return not open_drift and not self.errors and not [g for g in self.coverage.get("gaps", [])
                                                           if g.get("blocking")]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "checked_at": self.checked_at, "contained": self.contained,
                "drift": self.drift, "reapplied": self.reapplied, "not_reapplied": self.not_reapplied,
                "errors": self.errors, "coverage": self.coverage}


class Verifier:
    """Re-plans one finished run; optionally re-applies what drifted."""

    def __init__(self, run_id: str, state: Path, *, options: RunOptions, registry: Registry | None = None,
                 session: AwsSession | None = None, prompt: Prompt | None = None,
                 stream: TextIO | None = sys.stderr) -> None:
        self.run_id = run_id
        self.state = state
        self.options = options
        self.registry = registry or builtin_registry()
        self.prompt = prompt
        self.journal = open_journal(state)
        record = self.journal.get_run(run_id)
        if record.dry_run:
            raise InputError(run_id, [Problem("", f"run {run_id} was a dry run: it contained nothing to verify")])
        if record.status not in RunStatus.TERMINAL or record.status in (RunStatus.PLANNED, RunStatus.REFUSED):
            raise InputError(run_id, [Problem("", f"run {run_id} is {record.status}; verify a finished run")])
        self.record = record
        self.config: Config = load_config(record.options.get("config"))
        self.playbook = load_playbook(record.options["playbook_ref"], self.registry)
        self.incident = validate_incident(f"run {run_id} incident", record.incident)
        self.session = session or AwsSession(
            region=record.options.get("region") or self.incident.region, profile=record.options.get("profile"),
            endpoint_url=record.options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL"),
            settings=self.config.aws, max_pool_connections=max(16, self.config.runner.max_workers * 2))
        self.reader = self.session if self.session.dry_run else _read_only(self.session)
        self.log = make_logger(audit_sink(self.journal, state, run_id), stream, run_id=run_id,
                               incident_id=self.incident.id, playbook=self.playbook.name, dry_run=False)
        self.engine = Engine(run=record, playbook=self.playbook, incident=self.incident, config=self.config,
                             registry=self.registry, journal=self.journal, aws=self.session, log=self.log,
                             options=options, prompt=None)
        self.engine._restore()  # the run's recorded scope and step outputs

    def close(self) -> None:
        self.journal.close()

    def check(self, reapply: bool = False) -> Check:
        result = Check(self.run_id, datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
        coverage = Coverage()
        coverage.merge_json({"regions": (self.record.result or {}).get("coverage", {}).get("regions")})
        with ThreadPoolExecutor(self.config.runner.max_workers, thread_name_prefix="verify") as pool:
            def ctx(aws: AwsSession) -> ActionContext:
                return ActionContext(aws=aws, incident=self.incident, config=self.config, run_id=self.run_id,
                                     started_at=datetime.now(UTC), fanout_pool=pool,
                                     protected=self.engine._is_protected, coverage=coverage)

            self.engine.identity_arn = self.session.identity().principal_arn
            plans = self._replan(ctx(self.reader), result)
            for step_id, plan in plans.items():
                step = next(s for s in self.playbook.steps if s.id == step_id)
                for c in plan.changes:
                    result.drift.append({"step": step_id, "operation": c.operation, "target": c.target,
                                         "reason": c.reason, "previous": c.previous})
                    self.log.info("verify.drift", step=step_id, operation=c.operation, target=c.target,
                                  message=c.reason)
                if reapply and plan.changes:
                    self._reapply(ctx(self.session), step, plan, result)
        result.coverage = coverage.to_json()
        self.log.info("verify.checked", outcome="contained" if result.contained else "drift",
                      drift=len(result.drift), reapplied=len(result.reapplied))
        return result

    def _replan(self, ctx: ActionContext, result: Check) -> dict[str, Plan]:
        plans: dict[str, Plan] = {}
        for step in self.playbook.steps:
            action = self.engine.actions[step.id]
            state = self.engine.states[step.id]
            if action.risk == "read-only" or state.status not in StepStatus.DONE:
                continue
            try:
                from runner.templates import render

                params = action.params_model.model_validate(render(step.with_, self.engine._template_scope()))
                plans[step.id] = action.plan(ctx, params)
            except STEP_ERRORS as exc:
                result.errors.append(f"{step.id}: could not re-plan: {exc}")
        return plans

    def _reapply(self, ctx: ActionContext, step: Any, plan: Plan, result: Check) -> None:
        approved = self._approved(step, plan)
        action = self.engine.actions[step.id]
        for change in plan.changes:
            entry = {"step": step.id, "operation": change.operation, "target": change.target}
            if not approved:
                result.not_reapplied.append({**entry, "why": f"step {step.id} is approval-gated and its recorded "
                                                             f"approval does not cover this change; re-run with "
                                                             f"--approve {step.id}"})
                continue
            failure = self.engine._apply_change(ctx, step, action, change)
            if failure:
                result.errors.append(failure)
            else:
                result.reapplied.append(entry)
                self.log.info("verify.reapplied", step=step.id, operation=change.operation, target=change.target)

    def _approved(self, step: Any, plan: Plan) -> bool:
        if not self.engine._needs_approval(step):
            return True
        digests = {c.digest for c in plan.changes}
        if any(digests <= set(a.change_digests) for a in self.journal.approvals(self.run_id) if a.step_id == step.id):
            return True
        if self.options.approve_all or step.id in self.options.approve:
            self.engine.record_approval(step, plan, self.options.by, self.options.reason or "approved for verify "
                                                                                            "--reapply")
            return True
        if self.prompt is not None and self.prompt(step, plan):
            self.engine.record_approval(step, plan, self.options.by, self.options.reason or "approved at the terminal")
            return True
        return False


def _read_only(session: AwsSession) -> AwsSession:
    """A dry-run twin of `session` (same credentials and endpoint): planning can never write."""
    twin = AwsSession(region=session.region, endpoint_url=session.endpoint_url, settings=session._settings,
                      dry_run=True, boto_session=session._session)
    twin.calls, twin.refused = session.calls, session.refused
    return twin


def watch(verifier: Verifier, *, every: float, duration: float, reapply: bool,
          on_check: Callable[[Check], None], sleep: Callable[[float], None] = time.sleep) -> list[Check]:
    """Check now, then every `every` seconds until `duration` has passed (at least one check)."""
    checks: list[Check] = []
    end = time.monotonic() + duration
    while True:
        check = verifier.check(reapply=reapply)
        checks.append(check)
        on_check(check)
        if time.monotonic() + every > end:
            return checks
        sleep(every)
