"""The run lifecycle: one small table of status -> event -> status, driven by `transitions`.

Steps are data handled by the engine, not states here. Callbacks only record the new status
(journal and audit log); they never call AWS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transitions import Machine

#: a run in one of these statuses holds its incident's lock and can be resumed or cancelled
ACTIVE = ["pending", "planning", "awaiting_approval", "applying", "verifying"]
#: finished runs; `cancelled` is a responder giving up on an unfinished run (`stanch cancel`)
TERMINAL = ["planned", "contained", "needs_manual_action", "partially_contained", "failed", "refused", "cancelled"]
STATES = ACTIVE + TERMINAL
#: finished runs that are not containment (exit 1)
NOT_CONTAINED = ["partially_contained", "failed", "cancelled"]

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "plan", "source": ACTIVE, "dest": "planning"},
    {"trigger": "apply", "source": "planning", "dest": "applying"},
    {"trigger": "pause", "source": ["planning", "applying"], "dest": "awaiting_approval"},
    {"trigger": "verify", "source": ["planning", "applying"], "dest": "verifying"},
    {"trigger": "finish_dry_run", "source": "planning", "dest": "planned"},
    {"trigger": "contain", "source": "verifying", "dest": "contained"},
    {"trigger": "need_manual", "source": "verifying", "dest": "needs_manual_action"},
    {"trigger": "contain_partially", "source": "verifying", "dest": "partially_contained"},
    {"trigger": "fail", "source": ACTIVE, "dest": "failed"},
    {"trigger": "refuse", "source": ACTIVE, "dest": "refused"},
    {"trigger": "cancel", "source": ACTIVE, "dest": "cancelled"},
]


class RunLifecycle:
    """The model `transitions` drives. `on_change(status)` is called after every transition."""

    state: str

    def __init__(self, initial: str, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        self.machine = Machine(
            model=self, states=STATES, transitions=TRANSITIONS, initial=initial,
            auto_transitions=False, after_state_change="_changed",
        )

    def _changed(self) -> None:
        self._on_change(self.state)

    def fire(self, trigger: str) -> None:
        """Fire `trigger` unless the run is already in the state it leads to."""
        dest = next(t["dest"] for t in TRANSITIONS if t["trigger"] == trigger)
        if self.state != dest:
            getattr(self, trigger)()

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL


def lifecycle_mermaid() -> str:
    """The lifecycle table drawn as a mermaid state diagram."""
    lines = ["stateDiagram-v2", "    [*] --> pending"]
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for src in sources:
            if src != t["dest"]:
                lines.append(f"    {src} --> {t['dest']}: {t['trigger']}")
    lines += [f"    {s} --> [*]" for s in TERMINAL]
    return "\n".join(lines) + "\n"
