"""The run and step lifecycles: two small tables of status -> event -> status, driven by `transitions`.

The run has one machine (`RunLifecycle` is its model). Steps are data: every step of a run is a
model (`StepFlow`) on one shared `StepMachine`, so a playbook of 40 steps costs one machine, not 40.
An event that is not legal from the current status raises `transitions.MachineError`: the engine
drives the machines, it does not step around them. Callbacks only record the new status (journal
and audit log); they never call AWS. The mermaid pictures are drawn from these same tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from transitions import Machine

from runner.status import RunStatus, StepStatus

#: a run in one of these statuses holds its incident's lock and can be resumed or cancelled
ACTIVE = [str(s) for s in RunStatus.ACTIVE]
#: finished runs; `cancelled` is a responder giving up on an unfinished run (`stanch cancel`)
TERMINAL = [str(s) for s in RunStatus.TERMINAL]
STATES = [str(s) for s in RunStatus]
#: finished runs that are not containment (exit 1)
NOT_CONTAINED = [str(s) for s in RunStatus.NOT_CONTAINED]

RunEvent = Literal["plan", "apply", "pause", "verify", "finish_dry_run", "contain", "need_manual",
                   "contain_partially", "fail", "refuse", "cancel"]


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Statuses as their plain names: `transitions` would name an enum member by its Python name."""
    def name(value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else (None if value is None else str(value))
    return [{"trigger": r["trigger"], "source": name(r["source"]), "dest": name(r["dest"])} for r in rows]


S = RunStatus
#: `plan` (re)enters planning from any unfinished status: a new run, an approved one, or one whose
#: process died mid-way (it resumes by replay). `apply` while applying is internal: more steps apply.
TRANSITIONS: list[dict[str, Any]] = _table([
    {"trigger": "plan", "source": ACTIVE, "dest": S.PLANNING},
    {"trigger": "apply", "source": S.PLANNING, "dest": S.APPLYING},
    {"trigger": "apply", "source": S.APPLYING, "dest": None},
    {"trigger": "pause", "source": [S.PLANNING, S.APPLYING], "dest": S.AWAITING_APPROVAL},
    {"trigger": "verify", "source": [S.PLANNING, S.APPLYING], "dest": S.VERIFYING},
    {"trigger": "finish_dry_run", "source": S.PLANNING, "dest": S.PLANNED},
    {"trigger": "contain", "source": S.VERIFYING, "dest": S.CONTAINED},
    {"trigger": "need_manual", "source": S.VERIFYING, "dest": S.NEEDS_MANUAL_ACTION},
    {"trigger": "contain_partially", "source": S.VERIFYING, "dest": S.PARTIALLY_CONTAINED},
    {"trigger": "fail", "source": ACTIVE, "dest": S.FAILED},
    {"trigger": "refuse", "source": ACTIVE, "dest": S.REFUSED},
    {"trigger": "cancel", "source": ACTIVE, "dest": S.CANCELLED},
])


def _states(statuses: tuple[Any, ...], terminal: tuple[Any, ...], on_enter: str | None = None) -> list[dict[str, Any]]:
    return [{"name": str(s), "final": s in terminal, **({"on_enter": on_enter} if on_enter else {})}
            for s in statuses]


class RunLifecycle:
    """The model the run machine drives. `on_change(status)` is called whenever the status changes
    (entering a status; an internal event such as a second `apply` changes nothing)."""

    state: str

    def __init__(self, initial: str, on_change: Callable[[RunStatus], None]) -> None:
        self._on_change = on_change
        self.machine = Machine(
            model=self, states=_states(tuple(RunStatus), RunStatus.TERMINAL, on_enter="_changed"),
            transitions=TRANSITIONS, initial=str(RunStatus(initial)), auto_transitions=False,
        )

    def _changed(self) -> None:
        self._on_change(self.status)

    def fire(self, event: RunEvent) -> None:
        """Fire `event`; `transitions.MachineError` if it is not legal from the current status."""
        self.machine.events[event].trigger(self)

    @property
    def status(self) -> RunStatus:
        return RunStatus(self.state)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


# ---------------------------------------------------------------------------------------- steps

StepEvent = Literal["plan", "find_done", "find_manual", "find_applied", "gate", "apply", "finish",
                    "hand_over", "refuse", "fail", "skip", "verify"]

T = StepStatus
#: one step: planned from live state (changes to make, nothing to do, or only a person can act),
#: checked by the guardrails, gated, applied, verified. `verify` is internal: it checks a finished
#: step's targets and never moves it. A paused step is planned again when its run resumes.
STEP_TRANSITIONS: list[dict[str, Any]] = _table([
    {"trigger": "plan", "source": T.PENDING, "dest": T.PLANNED},
    {"trigger": "find_done", "source": T.PENDING, "dest": T.NOOP},
    {"trigger": "find_manual", "source": T.PENDING, "dest": T.MANUAL},
    {"trigger": "find_applied", "source": T.PENDING, "dest": T.APPLIED},
    {"trigger": "skip", "source": T.PENDING, "dest": T.SKIPPED},
    {"trigger": "refuse", "source": T.PLANNED, "dest": T.REFUSED},
    {"trigger": "gate", "source": T.PLANNED, "dest": T.AWAITING_APPROVAL},
    {"trigger": "apply", "source": T.PLANNED, "dest": T.APPLYING},
    {"trigger": "finish", "source": T.APPLYING, "dest": T.APPLIED},
    {"trigger": "hand_over", "source": T.APPLYING, "dest": T.MANUAL},
    {"trigger": "fail", "source": [T.PENDING, T.APPLYING], "dest": T.FAILED},
    {"trigger": "verify", "source": list(T.DONE), "dest": None},
])


class StepFlow:
    """One step's place in the step lifecycle: a model of its run's `StepMachine`."""

    state: str

    def __init__(self, machine: Machine) -> None:
        self._machine = machine

    @property
    def status(self) -> StepStatus:
        return StepStatus(self.state)

    def fire(self, event: StepEvent) -> None:
        """Fire `event`; `transitions.MachineError` if it is not legal from the current status."""
        self._machine.events[event].trigger(self)


class StepMachine:
    """The step lifecycle; every step of one run is a model on it."""

    def __init__(self) -> None:
        self.machine = Machine(model=None, states=_states(tuple(StepStatus), StepStatus.TERMINAL),
                               transitions=STEP_TRANSITIONS, initial=str(StepStatus.PENDING), auto_transitions=False)

    def track(self, status: str = StepStatus.PENDING) -> StepFlow:
        """A new step model, starting at `status` (a resumed run restores finished steps as they were)."""
        flow = StepFlow(self.machine)
        self.machine.add_model(flow, initial=str(StepStatus(status)))
        return flow


# ---------------------------------------------------------------------------------------- pictures

def _mermaid(states: list[dict[str, Any]], transitions: list[dict[str, Any]], initial: str, title: str) -> str:
    """Draw a table with transitions' own mermaid renderer; terminal states end at [*]."""
    from transitions.extensions.diagrams import GraphMachine

    machine = GraphMachine(states=states, transitions=transitions, initial=initial, auto_transitions=False,
                           graph_engine="mermaid", title=title)
    text: str = machine.get_graph().draw(None)
    ends = [f"  {s['name']} --> [*]" for s in states if s.get("final")]
    return text.rstrip("\n") + "\n" + "\n".join(ends) + "\n"


def lifecycle_mermaid() -> str:
    """The run lifecycle table drawn as a mermaid state diagram."""
    return _mermaid(_states(tuple(RunStatus), RunStatus.TERMINAL), TRANSITIONS, str(RunStatus.PENDING),
                    "stanch run lifecycle")


def step_lifecycle_mermaid() -> str:
    """The step lifecycle table drawn as a mermaid state diagram."""
    return _mermaid(_states(tuple(StepStatus), StepStatus.TERMINAL), STEP_TRANSITIONS, str(StepStatus.PENDING),
                    "stanch step lifecycle")
