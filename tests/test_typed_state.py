"""Typed run state: status enums and their groups, the run and step lifecycles as `transitions`
machines (illegal moves raise, pictures drawn from the tables), the RunDocument model, and targeted
verification (a step verifies only what it changed). No AWS."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from transitions import MachineError
from typer.testing import CliRunner

from actions.base import ActionContext, Change, Outcome, Plan
from actions.registry import Registry
from runner.cli import app
from runner.document import RunDocument
from runner.engine import RunOptions
from runner.errors import EXIT_BAD_INPUT, EXIT_MANUAL, EXIT_NOT_CONTAINED, EXIT_OK, EXIT_PAUSED, EXIT_REFUSED
from runner.incident import validate_incident
from runner.lifecycle import (
    STEP_TRANSITIONS,
    TRANSITIONS,
    RunLifecycle,
    StepMachine,
    lifecycle_mermaid,
    step_lifecycle_mermaid,
)
from runner.service import AwsOptions, start_run
from runner.service import Outcome as RunOutcome
from runner.status import ChangeStatus, RunStatus, StepStatus, exit_code
from tests import fakes

DESIGN = Path(__file__).resolve().parent.parent.parent / "shared" / "DESIGN.md"
INCIDENT = validate_incident("t", {
    "id": "INC-T-9", "kind": "cryptojacking", "account_id": fakes.ACCOUNT, "region": "us-east-1",
    "detected_at": "2026-11-20T10:14:00Z", "window_start": "2026-11-20T09:58:00Z",
})

#: the keys each plan read, in order (verification plans included)
READS: list[list[str]] = []


class CountedSet(fakes.SetValues):
    """fake.set that records what each plan reads, and narrows verification to the keys it changed."""

    name = "fake.counted-set"

    def plan(self, ctx: ActionContext, params: fakes.SetParams) -> Plan:
        READS.append(sorted(params.keys))
        return super().plan(ctx, params)

    def narrow(self, params: fakes.SetParams, changes: Sequence[Change]) -> fakes.SetParams:
        changed = {c.params["key"] for c in changes}
        return params.model_copy(update={"keys": [k for k in params.keys if k in changed]})


class Sticky(CountedSet):
    """Says it applied, changes nothing: verification must notice."""

    name = "fake.sticky"

    def apply(self, ctx: ActionContext, change: Change) -> Outcome:
        return "applied"


def registry() -> Registry:
    reg = fakes.registry()
    reg.register(CountedSet)
    reg.register(Sticky)
    return reg


def run(tmp_path: Path, steps: str) -> RunOutcome:
    path = tmp_path / "pb.yaml"
    path.write_text("version: 1\nname: typed\nsteps:\n  - id: collect\n    action: fake.collect\n" + steps)
    return start_run(INCIDENT, playbook_ref=str(path), config_path=None, options=RunOptions(by="tester"),
                     aws_opts=AwsOptions(), state=tmp_path / "state", stream=io.StringIO(),
                     registry=registry(), session=fakes.FakeAws())  # type: ignore[arg-type]


def _design_statuses(kind: str) -> set[str]:
    """The `"status": "a|b|c"` lists DESIGN.md's run document gives: the run's, a step's, a change's."""
    lists = [set(found.split("|")) for found in re.findall(r'"status": "([a-z_|]+)"', DESIGN.read_text())]
    assert len(lists) == 3, lists
    return lists[["run", "step", "change"].index(kind)]


# ------------------------------------------------------------------------------ statuses

def test_status_enums_are_the_design_lists_and_exit_codes_follow_the_table() -> None:
    # a process returns a run either finished or paused: exactly DESIGN's run statuses
    assert _design_statuses("run") == {*RunStatus.TERMINAL, RunStatus.AWAITING_APPROVAL}
    # the engine's step statuses add the ones a step passes through, and `refused` (a guardrail)
    assert set(StepStatus) - _design_statuses("step") == {"pending", "applying", "refused"}
    assert _design_statuses("step") <= set(StepStatus)
    assert set(ChangeStatus) - _design_statuses("change") == {"applying", "skipped"}
    codes = {s: exit_code(s) for s in RunStatus.TERMINAL} | {"awaiting_approval": exit_code("awaiting_approval")}
    assert codes == {"planned": EXIT_OK, "contained": EXIT_OK, "needs_manual_action": EXIT_MANUAL,
                     "partially_contained": EXIT_NOT_CONTAINED, "failed": EXIT_NOT_CONTAINED,
                     "cancelled": EXIT_NOT_CONTAINED, "refused": EXIT_REFUSED, "awaiting_approval": EXIT_PAUSED}
    assert exit_code("contianed") == EXIT_BAD_INPUT
    assert json.dumps({"s": RunStatus.CONTAINED}) == '{"s": "contained"}' and RunStatus.CONTAINED == "contained"
    assert set(RunStatus.ACTIVE) | set(RunStatus.TERMINAL) == set(RunStatus)
    assert not set(StepStatus.DONE) & set(StepStatus.STOPPED)


# ------------------------------------------------------------------------------ lifecycles

def test_illegal_moves_raise_and_forty_steps_share_one_cheap_machine() -> None:
    machine = StepMachine()
    t0 = time.perf_counter()
    flows = [machine.track() for _ in range(40)]
    for flow in flows:
        for event in ("plan", "apply", "finish", "verify"):
            flow.fire(event)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    assert {f.status for f in flows} == {StepStatus.APPLIED}
    assert elapsed < 0.5, f"40 step lifecycles took {elapsed:.3f}s"
    for flow, event in ((machine.track(), "apply"), (machine.track(), "verify"), (flows[0], "plan"),
                        (machine.track(StepStatus.FAILED), "skip")):
        before = flow.status
        with pytest.raises(MachineError):
            flow.fire(event)  # type: ignore[arg-type]
        assert flow.status == before
    seen: list[RunStatus] = []
    run_ = RunLifecycle("pending", seen.append)
    for event in ("plan", "apply", "apply", "verify", "contain"):
        run_.fire(event)  # type: ignore[arg-type]
    assert seen == ["planning", "applying", "verifying", "contained"]  # a second apply is internal
    with pytest.raises(MachineError):
        run_.fire("cancel")  # a finished run cannot be cancelled


def test_mermaid_pictures_are_drawn_from_the_tables() -> None:
    for text, table, statuses in ((lifecycle_mermaid(), TRANSITIONS, RunStatus),
                                  (step_lifecycle_mermaid(), STEP_TRANSITIONS, StepStatus)):
        assert text.splitlines()[3] == "stateDiagram-v2"
        for t in table:
            sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
            for src in sources:
                dest = t["dest"] or src
                assert re.search(rf"^\s+{src} --> {dest}: {t['trigger']}", text, re.M), (src, dest, t["trigger"])
        for s in statuses:
            assert (f"  {s} --> [*]" in text) == s.is_terminal
    out = CliRunner().invoke(app, ["playbook", "graph", "--step-lifecycle", "-o", "json"])
    assert out.exit_code == 0 and json.loads(out.output)["mermaid"] == step_lifecycle_mermaid()
    both = CliRunner().invoke(app, ["playbook", "graph", "--lifecycle", "--step-lifecycle"])
    assert both.exit_code == 2 and "Traceback" not in both.output


# ------------------------------------------------------------------------------ run document, verification

@pytest.fixture(scope="module")
def targeted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("targeted")
    fakes.reset({"a": "on", "b": "off", "c": "off", "d": "off", "decoy": "on"})
    READS.clear()
    steps = ("  - id: turn-off\n    action: fake.counted-set\n    with: {keys: [a, b, c]}\n"
             "  - id: already-off\n    action: fake.counted-set\n    with: {keys: [c, d]}\n")
    out = run(tmp, steps)
    return {"out": out, "reads": [list(r) for r in READS]}


def test_verification_reads_only_what_each_step_changed(targeted: dict[str, Any]) -> None:
    out = targeted["out"]
    assert out.result["status"] == "contained", out.result
    # planning reads each step's whole scope once; verification reads only key a, the one changed;
    # the step that changed nothing is not read again; the decoy is never read
    assert sorted(targeted["reads"]) == [["a"], ["a", "b", "c"], ["c", "d"]]
    assert targeted["reads"][-1] == ["a"]


def test_a_change_that_did_not_hold_is_caught_on_its_own_target(tmp_path: Path) -> None:
    fakes.reset({"a": "on", "b": "on", "c": "off"})
    READS.clear()
    out = run(tmp_path, "  - id: sticky\n    action: fake.sticky\n    with: {keys: [a, c]}\n")
    assert out.result["status"] == "partially_contained" and out.exit_code == EXIT_NOT_CONTAINED
    [_, step] = out.result["steps"]
    assert step["verification"] == [f"still to do: fake:Set arn:aws:iam::{fakes.ACCOUNT}:user/a"]
    assert READS == [["a", "c"], ["a"]]  # b was never in scope, c needed nothing: neither is read to verify


def test_run_document_is_the_contract_and_round_trips(targeted: dict[str, Any]) -> None:
    result = targeted["out"].result
    doc = RunDocument.model_validate(result)
    assert json.dumps(doc.dump(), default=str) == json.dumps(result, default=str)
    assert doc.status is RunStatus.CONTAINED and doc.status.exit_code == EXIT_OK
    assert [(s.id, s.status) for s in doc.steps] == [("collect", "noop"), ("turn-off", "applied"),
                                                     ("already-off", "noop")]
    assert [(s.id, c.params["key"]) for s, c in doc.changes_in(ChangeStatus.APPLIED)] == [("turn-off", "a")]
    keys = list(result)
    assert keys[:7] == ["run_id", "incident_id", "playbook", "status", "dry_run", "steps", "manual_actions"]
    assert "error" not in result and result["steps"][1]["error"] is None and "verification" not in result["steps"][1]
    # a document that is not one is refused with its field, not half-read
    with pytest.raises(ValueError, match="status"):
        RunDocument.model_validate({**result, "status": "contianed"})
