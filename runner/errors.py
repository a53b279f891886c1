"""One error hierarchy. Every error carries a message built from data; input errors carry
every problem found, each with the path where it was found."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

EXIT_OK = 0
EXIT_NOT_CONTAINED = 1
EXIT_BAD_INPUT = 2
EXIT_PAUSED = 3
EXIT_REFUSED = 4
EXIT_MANUAL = 5


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, and where."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` when a close choice exists, else the empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class StanchError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = EXIT_NOT_CONTAINED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MissingExtraError(StanchError):
    """An optional part of stanch is not installed (e.g. moto for `stanch drill`): the message says how."""

    exit_code = EXIT_BAD_INPUT


class InputError(StanchError):
    """Bad input (incident, playbook, config, arguments). Nothing was changed."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"{source}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class RefusedError(StanchError):
    """A guardrail refused the run, or another run holds the incident."""

    exit_code = EXIT_REFUSED


class RunLockedError(RefusedError):
    def __init__(self, incident_id: str, holder: str) -> None:
        super().__init__(
            f"incident {incident_id} is held by active run {holder}; "
            f"see `stanch status {holder}`, then `stanch resume {holder}` to continue it"
        )
        self.holder = holder


class DryRunViolation(StanchError):
    """An AWS operation that writes was attempted during a dry run; it never left the process."""

    def __init__(self, operation: str) -> None:
        super().__init__(f"dry run: refused write operation {operation} before it was sent")
        self.operation = operation


class UnknownRunError(StanchError):
    exit_code = EXIT_BAD_INPUT

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run '{run_id}' in this state directory; `stanch status` lists the runs")
