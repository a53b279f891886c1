"""Run, step and change statuses: string enums (so JSON and string comparisons keep working) with
their named groups. The lifecycles that move between them are in runner/lifecycle.py.

Each enum carries its groups as class attributes (tuples, in lifecycle order), e.g.
`RunStatus.ACTIVE`, `StepStatus.DONE`; `RunStatus.exit_code` is the CLI's exit code for a run
that ended (or paused) in that status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from runner.errors import EXIT_BAD_INPUT, EXIT_MANUAL, EXIT_NOT_CONTAINED, EXIT_OK, EXIT_PAUSED, EXIT_REFUSED


class RunStatus(StrEnum):
    """Where a run is. Active runs hold their incident's lock and can be resumed or cancelled."""

    PENDING = "pending"
    PLANNING = "planning"
    AWAITING_APPROVAL = "awaiting_approval"
    APPLYING = "applying"
    VERIFYING = "verifying"
    PLANNED = "planned"
    CONTAINED = "contained"
    NEEDS_MANUAL_ACTION = "needs_manual_action"
    PARTIALLY_CONTAINED = "partially_contained"
    FAILED = "failed"
    REFUSED = "refused"
    CANCELLED = "cancelled"

    #: unfinished: holds the incident's lock, can be resumed or cancelled
    ACTIVE: ClassVar[tuple[RunStatus, ...]]
    #: finished (`cancelled` is a responder giving up on an unfinished run)
    TERMINAL: ClassVar[tuple[RunStatus, ...]]
    #: finished, and containment holds (possibly with a person's part left to do)
    DONE: ClassVar[tuple[RunStatus, ...]]
    #: finished without containment (exit 1)
    NOT_CONTAINED: ClassVar[tuple[RunStatus, ...]]

    @property
    def is_active(self) -> bool:
        return self in RunStatus.ACTIVE

    @property
    def is_terminal(self) -> bool:
        return self in RunStatus.TERMINAL

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for a run in this status (DESIGN.md, exit codes). A run still moving
        when its process returned did not finish (a killed worker, or a bug): 1, like a failed one."""
        return _RUN_EXIT.get(self, EXIT_NOT_CONTAINED)


RunStatus.ACTIVE = (RunStatus.PENDING, RunStatus.PLANNING, RunStatus.AWAITING_APPROVAL, RunStatus.APPLYING,
                    RunStatus.VERIFYING)
RunStatus.TERMINAL = tuple(s for s in RunStatus if s not in RunStatus.ACTIVE)
RunStatus.DONE = (RunStatus.CONTAINED, RunStatus.NEEDS_MANUAL_ACTION)
RunStatus.NOT_CONTAINED = (RunStatus.PARTIALLY_CONTAINED, RunStatus.FAILED, RunStatus.CANCELLED)

_RUN_EXIT: dict[RunStatus, int] = {
    RunStatus.PLANNED: EXIT_OK, RunStatus.CONTAINED: EXIT_OK, RunStatus.AWAITING_APPROVAL: EXIT_PAUSED,
    RunStatus.REFUSED: EXIT_REFUSED, RunStatus.NEEDS_MANUAL_ACTION: EXIT_MANUAL,
    **dict.fromkeys(RunStatus.NOT_CONTAINED, EXIT_NOT_CONTAINED),
}


def exit_code(status: str) -> int:
    """Exit code for a run status given as text; an unknown status is bad input (2)."""
    try:
        return RunStatus(status).exit_code
    except ValueError:
        return EXIT_BAD_INPUT


class StepStatus(StrEnum):
    """Where one step of a run is."""

    PENDING = "pending"
    PLANNED = "planned"
    AWAITING_APPROVAL = "awaiting_approval"
    APPLYING = "applying"
    APPLIED = "applied"
    NOOP = "noop"
    MANUAL = "manual"
    FAILED = "failed"
    SKIPPED = "skipped"
    REFUSED = "refused"

    #: the step reached its goal; its dependants may start
    DONE: ClassVar[tuple[StepStatus, ...]]
    #: the step ended without reaching its goal; its dependants are skipped (unless `on_error: continue`)
    STOPPED: ClassVar[tuple[StepStatus, ...]]
    #: the step is finished, either way; a resumed run keeps it
    TERMINAL: ClassVar[tuple[StepStatus, ...]]
    #: the step changed something, or left a person something to do
    ACTED: ClassVar[tuple[StepStatus, ...]]
    #: the step is not finished
    ACTIVE: ClassVar[tuple[StepStatus, ...]]

    @property
    def is_terminal(self) -> bool:
        return self in StepStatus.TERMINAL


StepStatus.DONE = (StepStatus.APPLIED, StepStatus.NOOP, StepStatus.MANUAL)
StepStatus.STOPPED = (StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.REFUSED)
StepStatus.TERMINAL = (*StepStatus.DONE, *StepStatus.STOPPED)
StepStatus.ACTED = (StepStatus.APPLIED, StepStatus.MANUAL)
StepStatus.ACTIVE = tuple(s for s in StepStatus if s not in StepStatus.TERMINAL)


class ChangeStatus(StrEnum):
    """Where one planned AWS write is."""

    PLANNED = "planned"
    APPLYING = "applying"
    APPLIED = "applied"
    ALREADY_DONE = "already_done"
    FAILED = "failed"
    #: another worker claimed the change (DynamoDB journal); this process never sent it
    SKIPPED = "skipped"

    #: the change holds in AWS (this run made it, or found it made)
    DONE: ClassVar[tuple[ChangeStatus, ...]]


ChangeStatus.DONE = (ChangeStatus.APPLIED, ChangeStatus.ALREADY_DONE)
