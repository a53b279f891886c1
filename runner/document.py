"""The run document: the JSON contract of DESIGN.md (`--output json`, the journal's run result, what
status, report, drill and the worker read), as pydantic models.

`Engine.result()` builds a `RunDocument`; `RunDocument.dump()` is the JSON shape (keys in the
contract's order; optional keys left out when unset, as before). Readers take a stored document with
`RunDocument.model_validate(doc)`. Unknown keys are kept (`extra="allow"`): later versions, and keys
other commands add (`cancelled`), survive a read and a write.

`Scope` is discovery's output (actions/scope.py), published to templates as `scope`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runner.status import ChangeStatus, RunStatus, StepStatus


def _unset(value: Any) -> bool:
    return value is None


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ------------------------------------------------------------------------------------------- scope

class LeftAlone(_Doc):
    """Something that looked like the attacker's but is not contained, and why."""

    kind: str
    name: str
    arn: str = ""
    reason: str = ""


class RootScope(_Doc):
    access_key_id: str | None = None
    access_keys_present: bool = False
    mfa_enabled: bool = False
    reason: str = ""


class Scope(_Doc):
    """What is in scope and why, the suspects, and what was left alone and why (scope.discover's
    outputs). Items are kept as the actions that use them read them (templates pass them on as
    parameters); another discovery action may publish fewer keys, or its own."""

    account_id: str = ""
    window_start: str | None = None
    users: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    access_keys: list[dict[str, Any]] = []
    reversals: list[dict[str, Any]] = []
    root: RootScope = Field(default_factory=RootScope)
    ecs_services: list[dict[str, Any]] = []
    ecs_tasks: list[dict[str, Any]] = []
    ecs_clusters: list[dict[str, Any]] = []
    ecs_task_definitions: list[dict[str, Any]] = []
    escalated: dict[str, Any] = {}
    protected_lookalikes: list[str] = []
    suspects: dict[str, Any] = {}
    excluded: list[LeftAlone] = []
    missing: list[str] = []
    protected_admin_paths: dict[str, list[str]] = {}
    attribution: dict[str, Any] = {}
    attacker_events: list[Any] = []
    attacker_principals: list[str] = []


# --------------------------------------------------------------------------------------------- run

class ChangeDoc(_Doc):
    operation: str
    target: str
    params: dict[str, Any]
    previous: dict[str, Any] = {}
    reason: str = ""
    status: ChangeStatus = ChangeStatus.PLANNED


class StepDoc(_Doc):
    id: str
    action: str
    status: StepStatus
    changes: list[ChangeDoc] = []
    error: str | None = None
    approval: str | None = Field(default=None, exclude_if=_unset)
    verification: list[str] | None = Field(default=None, exclude_if=_unset)
    notes: list[str] | None = Field(default=None, exclude_if=_unset)
    plan_digest: str | None = Field(default=None, exclude_if=_unset)  # of an awaiting step: `approve --plan`


class ManualAction(_Doc):
    step: str
    instructions: str
    first: bool | None = Field(default=None, exclude_if=_unset)


class Evidence(_Doc):
    path: str
    manifest_sha256: str
    s3_uri: str | None = Field(default=None, exclude_if=_unset)


class Gap(_Doc):
    region: str
    service: str
    error: str = ""
    blocking: bool = True


class CoverageDoc(_Doc):
    regions: list[str] = []
    region_source: str = ""
    services: dict[str, list[str]] = {}
    cloudtrail: list[str] = []
    gaps: list[Gap] = []


class Metrics(_Doc):
    time_to_first_change_s: float | None = None
    time_to_contained_s: float | None = None
    duration_s: float | None = None
    paused_s: float = 0.0
    active_s: float | None = None
    api_calls_total: int = 0
    api_calls: dict[str, int] = {}
    #: reads answered from the run's cache ([aws] read_cache): not API calls, not in api_calls_total
    api_calls_cached: int = 0
    refused_writes: list[Any] = []


class Cancelled(_Doc):
    by: str = ""
    reason: str = ""
    at: str = ""


class RunDocument(_Doc):
    """One run, as `--output json` prints it and the journal keeps it."""

    run_id: str
    incident_id: str
    playbook: str
    status: RunStatus
    dry_run: bool = False
    steps: list[StepDoc] = []
    manual_actions: list[ManualAction] = []
    #: the role a security-account runner assumed in the incident's account ([accounts] role_name)
    assumed_role: dict[str, Any] | None = None
    error: str | None = Field(default=None, exclude_if=_unset)
    scope: Scope | None = Field(default=None, exclude_if=_unset)
    attacker_activity: list[dict[str, Any]] | None = Field(default=None, exclude_if=_unset)
    evidence: Evidence | None = Field(default=None, exclude_if=_unset)
    coverage: CoverageDoc | None = Field(default=None, exclude_if=_unset)
    metrics: Metrics | None = Field(default=None, exclude_if=_unset)
    cancelled: Cancelled | None = Field(default=None, exclude_if=_unset)

    def dump(self) -> dict[str, Any]:
        """The document as the CLI prints and the journal stores it: the keys that were given (a scope
        another playbook's discovery published keeps its own keys), optional ones left out when unset.
        Values stay Python values (statuses are `str` enums), serialised as the dicts it replaced were."""
        return self.model_dump(exclude_unset=True)

    def step(self, step_id: str) -> StepDoc | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def steps_in(self, *statuses: StepStatus) -> list[StepDoc]:
        return [s for s in self.steps if s.status in statuses]

    def changes_in(self, *statuses: ChangeStatus) -> list[tuple[StepDoc, ChangeDoc]]:
        return [(s, c) for s in self.steps for c in s.changes if c.status in statuses]
