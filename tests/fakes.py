"""Fake actions over an in-memory world, for engine tests without AWS."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar

from actions.base import Action, ActionContext, Change, Outcome, Params, Plan
from actions.registry import Registry
from runner.aws import Identity, ReadCache

ACCOUNT = "123456789012"


@dataclass
class World:
    values: dict[str, str] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    barrier: threading.Barrier | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: set by the first applied change; a SlowPlan step waits for it while planning
    applied_event: threading.Event = field(default_factory=threading.Event)
    slow_plan_saw_apply: bool | None = None


WORLD = World()


class FakeAws:
    """Stands in for AwsSession where no AWS is involved."""

    region = "us-east-1"
    dry_run = False

    def __init__(self) -> None:
        self.refused: list[str] = []
        self.reads = ReadCache()  # no client ever feeds it: the engine only turns it on and off

    def identity(self) -> Identity:
        return Identity(ACCOUNT, f"arn:aws:iam::{ACCOUNT}:user/runner", f"arn:aws:iam::{ACCOUNT}:user/runner")

    def call_counts(self) -> dict[str, int]:
        return {}

    def cached_counts(self) -> dict[str, int]:
        return {}


class CollectParams(Params):
    keys: list[str] = []


class Collect(Action[CollectParams]):
    name = "fake.collect"
    summary = "publish the keys to set"
    params_model = CollectParams
    risk = "read-only"
    publishes = "scope"

    def plan(self, ctx: ActionContext, params: CollectParams) -> Plan:
        return Plan(outputs={"keys": params.keys or sorted(WORLD.values)})


class SetParams(Params):
    keys: list[str]
    value: str = "off"


class SetValues(Action[SetParams]):
    """Set world[key] = value; reversible."""

    name = "fake.set"
    summary = "set values"
    params_model = SetParams
    risk = "reversible"
    permissions = ("fake:Set",)
    wait_at_barrier: ClassVar[bool] = False

    def plan(self, ctx: ActionContext, params: SetParams) -> Plan:
        if self.wait_at_barrier and WORLD.barrier is not None:
            WORLD.barrier.wait(timeout=10)
        return Plan(changes=[
            Change("fake:Set", f"arn:aws:iam::{ACCOUNT}:user/{k}", {"key": k, "value": params.value},
                   previous={"value": WORLD.values.get(k)}, reason=f"{k} must be {params.value}")
            for k in params.keys if WORLD.values.get(k) != params.value
        ])

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        with WORLD.lock:
            if WORLD.values.get(change.params["key"]) == change.params["value"]:
                return "already_done"
            WORLD.values[change.params["key"]] = change.params["value"]
            WORLD.applied.append(change.params["key"])
        WORLD.applied_event.set()
        return "applied"


class SetAtBarrier(SetValues):
    name = "fake.set-at-barrier"
    wait_at_barrier = True


class Dangerous(SetValues):
    name = "fake.dangerous"
    risk = "irreversible"


class Broken(SetValues):
    name = "fake.broken"

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "Set")


class SlowPlan(SetValues):
    """Plans only after some other step has applied a change (or gives up after 10 s): proves a
    step applies without waiting for the planning of steps beside it."""

    name = "fake.slow-plan"

    def plan(self, ctx: ActionContext, params: SetParams) -> Plan:
        WORLD.slow_plan_saw_apply = WORLD.applied_event.wait(timeout=10)
        return super().plan(ctx, params)


class BrokenPlan(SetValues):
    """Fails while planning (an evidence read that exhausted its retries, say)."""

    name = "fake.broken-plan"

    def plan(self, ctx: ActionContext, params: SetParams) -> Plan:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "LookupEvents")


class MarkParams(Params):
    source: str
    keys: list[str]


class Mark(SetValues):
    """Set each key to 'after-<value of source>': a plan that depends on what an earlier step applied."""

    name = "fake.mark"
    params_model = MarkParams  # type: ignore[assignment]

    def plan(self, ctx: ActionContext, params: MarkParams) -> Plan:  # type: ignore[override]
        return super().plan(ctx, SetParams(keys=params.keys, value=f"after-{WORLD.values.get(params.source)}"))


class Manual(Action[CollectParams]):
    name = "fake.manual"
    summary = "needs a person"
    params_model = CollectParams
    risk = "reversible"

    def plan(self, ctx: ActionContext, params: CollectParams) -> Plan:
        return Plan(manual=["call the account owner"])


def registry() -> Registry:
    reg = Registry()
    for cls in (Collect, SetValues, SetAtBarrier, Dangerous, Broken, Manual, SlowPlan, BrokenPlan, Mark):
        reg.register(cls)
    return reg


def reset(values: dict[str, str]) -> World:
    WORLD.values = dict(values)
    WORLD.applied = []
    WORLD.barrier = None
    WORLD.applied_event = threading.Event()
    WORLD.slow_plan_saw_apply = None
    return WORLD
