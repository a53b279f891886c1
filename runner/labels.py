"""What undoing an action takes, in the words `playbook list` and the report use.

- `read-only`: changes nothing;
- `reversible`: `stanch rollback` restores what it changed from the values it recorded;
- `restorable by a person`: no API call can put it back (a deleted console password, a
  deactivated MFA device); a person has to (rollback lists these as manual actions);
- `destructive`: deletes (eradication); nothing brings it back.
"""

from __future__ import annotations

from typing import Any

from actions.base import Action
from actions.rollback import NOT_REVERSIBLE

READ_ONLY = "read-only"
REVERSIBLE = "reversible"
BY_A_PERSON = "restorable by a person"
DESTRUCTIVE = "destructive"

#: operations whose effect only a person can undo: rollback hands them over as manual actions
PERSON_RESTORES = frozenset(op for op, text in NOT_REVERSIBLE.items() if text)


def action_label(cls: type[Action[Any]]) -> str:
    if cls.risk == "read-only":
        return READ_ONLY
    if cls.risk == "irreversible":
        return DESTRUCTIVE
    if PERSON_RESTORES & set(cls.permissions):
        return BY_A_PERSON
    return REVERSIBLE


def operation_label(operation: str, risk: str | None = None) -> str:
    """The label of one recorded change (the report has operations, not classes)."""
    if operation in PERSON_RESTORES:
        return BY_A_PERSON
    if risk == "irreversible":
        return DESTRUCTIVE
    return REVERSIBLE
