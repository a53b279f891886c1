"""The action contract.

An action is one small class: typed parameters (a pydantic model), the IAM permissions it
needs, a risk tier, `plan()` that only reads and returns the changes it would make (each with
the value it replaces), and `apply()` that performs exactly one planned change. The engine
passes the AWS session in through `ActionContext`; actions never build sessions or clients.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from runner.regions import Coverage

PermissionPath = Literal["runner", "org", "root-task"]

if TYPE_CHECKING:
    from runner.aws import AwsSession
    from runner.config import Config, RiskTier
    from runner.incident import Incident

T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P", bound="Params")

Outcome = Literal["applied", "already_done"]


class Params(BaseModel):
    """Base for an action's parameters: unknown names are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    pass


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Change:
    """One AWS write: the operation, its target ARN, the call's parameters, and what it replaces."""

    operation: str
    target: str
    params: dict[str, Any]
    previous: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def digest(self) -> str:
        """Identity of the change (what it does, not why): used for approvals and idempotency."""
        body = canonical({"op": self.operation, "target": self.target, "params": self.params})
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation, "target": self.target, "params": self.params,
            "previous": self.previous, "reason": self.reason,
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Change:
        return Change(
            operation=doc["operation"], target=doc["target"], params=dict(doc["params"]),
            previous=dict(doc.get("previous") or {}), reason=doc.get("reason", ""),
        )


@dataclass
class Plan:
    """What a step would do. Empty `changes` means the step's goal already holds."""

    changes: list[Change] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    manual: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256(",".join(sorted(c.digest for c in self.changes)).encode()).hexdigest()[:16]


@dataclass
class ActionContext:
    """Everything an action may use. Built by the engine once per run."""

    aws: AwsSession
    incident: Incident
    config: Config
    run_id: str
    started_at: datetime
    fanout_pool: ThreadPoolExecutor
    protected: Callable[[str, str], bool]
    #: where this run's evidence bundle goes (state_dir/evidence/<incident>/<run>)
    evidence_dir: Path | None = None
    #: CloudTrail records given to the run (--cloudtrail files, a CloudTrail input), and their labels
    trail_records: list[dict[str, Any]] = field(default_factory=list)
    trail_sources: list[str] = field(default_factory=list)
    #: what the run searched (regions, services, gaps); see runner/regions.py
    coverage: Coverage = field(default_factory=Coverage)
    #: the run's structured log (event name, fields); None: progress events go nowhere
    log: Callable[..., Any] | None = None

    def progress(self, region: str, service: str, state: str, **fields: Any) -> None:
        """One discovery progress event (`discovery.search`): a region x service is pending, running,
        done (with what it found) or a gap. The terminal shows them live; the audit log keeps them."""
        if self.log is not None:
            self.log("discovery.search", region=region, service=service, state=state, **fields)

    def fanout(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """Run `fn` over `items` concurrently (bounded); results in input order; the first error (in
        input order) is raised once every item has finished.

        The calling thread works through the items too, and pool threads only help: a fan-out inside
        a fan-out (regions, then clusters, then users) never waits for a pool thread that is itself
        waiting, so nesting cannot deadlock however busy the pool is."""
        work = list(items)
        if len(work) <= 1:
            return [fn(i) for i in work]
        results: list[Any] = [None] * len(work)
        failures: dict[int, BaseException] = {}
        lock = threading.Lock()
        claimed = [0]
        finished = threading.Semaphore(0)

        def drain() -> None:
            while True:
                with lock:
                    index = claimed[0]
                    if index >= len(work):
                        return
                    claimed[0] += 1
                try:
                    results[index] = fn(work[index])
                except Exception as exc:  # noqa: BLE001  (raised in the caller, in input order)
                    failures[index] = exc
                finally:
                    finished.release()

        helpers = [self.fanout_pool.submit(drain) for _ in range(min(len(work) - 1, self.fanout_pool._max_workers))]
        drain()
        for helper in helpers:
            helper.cancel()  # not started yet: nothing left for it to do
        for _ in work:
            finished.acquire()  # every item claimed by a running thread finishes
        if failures:
            raise failures[min(failures)]
        return results


class Action(ABC, Generic[P]):
    """Base class of every action. Subclasses set the class attributes and implement plan/apply."""

    name: ClassVar[str]
    summary: ClassVar[str]
    params_model: ClassVar[type[Params]] = NoParams
    permissions: ClassVar[tuple[str, ...]] = ()
    #: where a declared permission is used when not by the incident account's identity (the member
    #: role): "runner" (the runner's own account, e.g. the evidence bucket), "org" (the Organizations
    #: role of `[root]`, assumed from the runner's own account) or "root-task" (granted by sts:AssumeRoot's
    #: task policy, so in no role's policy). `stanch playbook permissions --for` splits policies by it.
    permission_paths: ClassVar[dict[str, PermissionPath]] = {}
    risk: ClassVar[RiskTier]
    #: name under which the plan's outputs are visible to templates besides steps.<id>
    publishes: ClassVar[str | None] = None
    #: apply this step's changes one after another instead of concurrently
    ordered: ClassVar[bool] = False
    #: this action's manual instructions come before every other output (e.g. live root credentials)
    manual_first: ClassVar[bool] = False

    @abstractmethod
    def plan(self, ctx: ActionContext, params: P) -> Plan:
        """Read live state; return the changes needed. Must not write."""

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        """Perform one planned change. Read-only actions have no changes to apply."""
        raise NotImplementedError(f"{self.name} plans no changes; nothing to apply")

    def check(self, ctx: ActionContext, params: P) -> list[str]:
        """Action-specific verification after applying; returns failures (empty: verified)."""
        return []

    def narrow(self, params: P, changes: Sequence[Change]) -> P:
        """`params` cut down to the targets of `changes`, so verifying reads only what the step changed.
        The default keeps every parameter (verification then reads what planning read)."""
        return params

    def verify(self, ctx: ActionContext, params: P, changes: Sequence[Change]) -> list[str]:
        """After applying: do this step's own changes hold? Returns failures (empty: verified).

        Targeted: it reads only what `changes` touched. The default plans again with `narrow(params,
        changes)` and reports whatever that plan still finds to do on those targets, then `check`s.
        A step that changed nothing has nothing to verify and reads nothing."""
        if not changes:
            return []
        targets = {c.target for c in changes}
        again = self.plan(ctx, self.narrow(params, changes))
        failures = [f"still to do: {c.operation} {c.target}" for c in again.changes if c.target in targets]
        return failures + self.check(ctx, params)
