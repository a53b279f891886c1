"""The engine against fake actions: waves, concurrency, approval gates, drift, guardrails,
journal and resume. No AWS at all."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from runner.audit import verify_chain
from runner.engine import RunOptions
from runner.errors import RunLockedError
from runner.incident import validate_incident
from runner.playbook import parse_playbook
from runner.service import AwsOptions, Outcome, approve_step, approve_steps, resume_run, run_status, start_run
from tests import fakes

INCIDENT = validate_incident("t", {
    "id": "INC-T-1", "kind": "cryptojacking", "account_id": fakes.ACCOUNT, "region": "us-east-1",
    "detected_at": "2026-11-20T10:14:00Z", "window_start": "2026-11-20T09:58:00Z",
})


def pb_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "pb.yaml"
    path.write_text("version: 1\nname: fake\nsteps:\n  - id: collect\n    action: fake.collect\n" + body)
    parse_playbook(path.read_text(), str(path), fakes.registry())  # valid before use
    return str(path)


def run(tmp_path: Path, playbook: str, **opts: Any) -> Outcome:
    return start_run(INCIDENT, playbook_ref=playbook, config_path=None, options=RunOptions(by="tester", **opts),
                     aws_opts=AwsOptions(), state=tmp_path / "state", stream=io.StringIO(),
                     registry=fakes.registry(), session=fakes.FakeAws())  # type: ignore[arg-type]


def resume(tmp_path: Path, run_id: str, **opts: Any) -> Outcome:
    return resume_run(run_id, options=RunOptions(by="tester", **opts), state=tmp_path / "state",
                      stream=io.StringIO(), registry=fakes.registry(), session=fakes.FakeAws())  # type: ignore[arg-type]


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]


def test_contained_run_applies_then_verifies(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on", "b": "on", "c": "off"})
    pb = pb_file(tmp_path, "  - id: turn-off\n    action: fake.set\n    with: {keys: '{{ scope.keys }}'}\n")
    out = run(tmp_path, pb)
    assert out.exit_code == 0
    assert out.result["status"] == "contained"
    step = out.result["steps"][1]
    assert step["status"] == "applied"
    assert [(c["params"]["key"], c["previous"], c["status"]) for c in step["changes"]] == [
        ("a", {"value": "on"}, "applied"), ("b", {"value": "on"}, "applied")]
    assert sorted(world.applied) == ["a", "b"]
    events = audit(tmp_path)
    applied = [e for e in events if e["event"] == "change.applied"]
    assert {e["target"] for e in applied} == {f"arn:aws:iam::{fakes.ACCOUNT}:user/a",
                                              f"arn:aws:iam::{fakes.ACCOUNT}:user/b"}
    for e in applied:
        for key in ("run_id", "incident_id", "playbook", "step", "action", "target", "operation", "dry_run",
                    "outcome", "duration_ms"):
            assert key in e
    assert verify_chain(tmp_path / "state" / "audit.jsonl") == []
    # a second run changes nothing
    again = run(tmp_path, pb)
    assert again.result["steps"][1]["status"] == "noop"
    assert sorted(world.applied) == ["a", "b"]


def test_steps_whose_needs_are_met_run_concurrently(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on", "b": "on"})
    world.barrier = threading.Barrier(2)  # each plan waits for the other: serial execution would break it
    pb = pb_file(tmp_path, "  - id: one\n    action: fake.set-at-barrier\n    with: {keys: [a]}\n    needs: [collect]\n"
                           "  - id: two\n    action: fake.set-at-barrier\n    with: {keys: [b]}\n    needs: [collect]\n")
    out = run(tmp_path, pb)
    assert out.result["status"] == "contained", out.result
    assert not world.barrier.broken


def test_dry_run_plans_everything_and_applies_nothing(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on"})
    pb = pb_file(tmp_path, "  - id: turn-off\n    action: fake.set\n    with: {keys: '{{ scope.keys }}'}\n"
                           "  - id: gated\n    action: fake.dangerous\n    with: {keys: [a], value: gone}\n"
                           "    needs: [turn-off]\n")
    out = run(tmp_path, pb, dry_run=True)
    assert out.exit_code == 0
    assert out.result["status"] == "planned"
    assert [s["status"] for s in out.result["steps"]] == ["noop", "planned", "planned"]
    assert world.values == {"a": "on"} and world.applied == []


def test_gated_step_pauses_and_resumes_after_approval(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on", "b": "on"})
    pb = pb_file(tmp_path, "  - id: auto\n    action: fake.set\n    with: {keys: [a]}\n"
                           "  - id: gated\n    action: fake.set\n    approval: required\n    with: {keys: [b]}\n")
    out = run(tmp_path, pb)
    assert out.exit_code == 3
    assert out.result["status"] == "awaiting_approval"
    assert {s["id"]: s["status"] for s in out.result["steps"]} == {
        "collect": "noop", "auto": "applied", "gated": "awaiting_approval"}
    assert world.values == {"a": "off", "b": "on"}  # ungated containment did not wait
    run_id = out.result["run_id"]
    approval = approve_step(run_id, "gated", by="alice", reason="miner confirmed", state=tmp_path / "state")
    assert approval.change_digests
    done = resume(tmp_path, run_id)
    assert done.exit_code == 0 and done.result["status"] == "contained"
    assert world.values == {"a": "off", "b": "off"}
    status = run_status(run_id, tmp_path / "state")
    assert isinstance(status, dict)
    assert status["approvals"][0]["by"] == "alice" and status["approvals"][0]["reason"] == "miner confirmed"


def test_approval_is_asked_again_when_the_plan_drifts(tmp_path: Path) -> None:
    # an approval still covers a plan that shrank (part of it already done)...
    world = fakes.reset({"a": "on", "b": "on"})
    pb = pb_file(tmp_path, "  - id: gated\n    action: fake.set\n    approval: required\n    with: {keys: [a, b]}\n")
    run_id = run(tmp_path, pb).result["run_id"]
    approve_step(run_id, "gated", by="alice", reason="ok", state=tmp_path / "state")
    world.values["a"] = "off"
    covered = resume(tmp_path, run_id)
    assert covered.result["status"] == "contained"
    assert world.applied == ["b"]

    # ...but not one that grew: a change nobody approved must be approved again
    world = fakes.reset({"a": "on", "b": "off"})
    run_id = run(tmp_path, pb).result["run_id"]
    approve_step(run_id, "gated", by="alice", reason="ok", state=tmp_path / "state")
    world.values["b"] = "on"
    stale = resume(tmp_path, run_id)
    assert stale.exit_code == 3 and stale.result["status"] == "awaiting_approval"
    assert world.values == {"a": "on", "b": "on"} and world.applied == []
    assert any(e["event"] == "approval.stale" and e["run_id"] == run_id for e in audit(tmp_path))
    approve_step(run_id, "gated", by="alice", reason="b too", state=tmp_path / "state")
    assert resume(tmp_path, run_id).exit_code == 0
    assert world.values == {"a": "off", "b": "off"}


def test_pre_approval_is_recorded_with_who_and_digest(tmp_path: Path) -> None:
    fakes.reset({"a": "on"})
    pb = pb_file(tmp_path, "  - id: gated\n    action: fake.set\n    approval: required\n    with: {keys: [a]}\n")
    out = run(tmp_path, pb, approve=("gated",), reason="pager duty")
    assert out.result["status"] == "contained"
    status = run_status(out.result["run_id"], tmp_path / "state")
    assert isinstance(status, dict)
    [approval] = status["approvals"]
    assert approval["by"] == "tester" and approval["reason"] == "pager duty" and approval["plan_digest"]


def test_irreversible_tier_needs_approval_by_default(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on"})
    pb = pb_file(tmp_path, "  - id: delete\n    action: fake.dangerous\n    with: {keys: [a], value: gone}\n")
    out = run(tmp_path, pb)
    assert out.exit_code == 3
    assert world.values["a"] == "on"


def test_interactive_prompt_yes_and_no(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on"})
    pb = pb_file(tmp_path, "  - id: gated\n    action: fake.set\n    approval: required\n    with: {keys: [a]}\n")
    shown: list[int] = []

    def say_no(step: Any, plan: Any) -> bool:
        shown.append(len(plan.changes))
        return False

    out = start_run(INCIDENT, playbook_ref=pb, config_path=None, options=RunOptions(by="t"), aws_opts=AwsOptions(),
                    state=tmp_path / "s1", stream=io.StringIO(), registry=fakes.registry(),
                    session=fakes.FakeAws(), prompt=say_no)  # type: ignore[arg-type]
    assert shown == [1] and out.exit_code == 3 and world.values["a"] == "on"
    out = start_run(INCIDENT, playbook_ref=pb, config_path=None, options=RunOptions(by="t"), aws_opts=AwsOptions(),
                    state=tmp_path / "s2", stream=io.StringIO(), registry=fakes.registry(),
                    session=fakes.FakeAws(), prompt=lambda s, p: True)  # type: ignore[arg-type]
    assert out.exit_code == 0 and world.values["a"] == "off"


def test_one_active_run_per_incident(tmp_path: Path) -> None:
    fakes.reset({"a": "on"})
    pb = pb_file(tmp_path, "  - id: gated\n    action: fake.set\n    approval: required\n    with: {keys: [a]}\n")
    first = run(tmp_path, pb)
    assert first.exit_code == 3
    with pytest.raises(RunLockedError) as info:
        run(tmp_path, pb)
    assert info.value.exit_code == 4 and first.result["run_id"] in info.value.message
    assert run(tmp_path, pb, dry_run=True).exit_code == 0  # a dry run holds no lock and needs none


def test_cancel_releases_the_incident(tmp_path: Path) -> None:
    from runner.service import cancel_run

    fakes.reset({"a": "on"})
    pb = pb_file(tmp_path, "  - id: gated\n    action: fake.set\n    approval: required\n    with: {keys: [a]}\n")
    first = run(tmp_path, pb)
    cancel_run(first.result["run_id"], by="alice", reason="false positive", state=tmp_path / "state")
    status = run_status(first.result["run_id"], tmp_path / "state")
    assert isinstance(status, dict) and status["status"] == "cancelled"
    from runner.engine import exit_code
    assert exit_code("cancelled") == 1
    assert status["cancelled"]["by"] == "alice"
    assert run(tmp_path, pb).exit_code == 3  # the incident is free again
    assert any(e["event"] == "run.cancelled" for e in audit(tmp_path))


def test_over_the_cap_a_step_waits_for_its_own_approval_while_the_others_go_on(tmp_path: Path) -> None:
    a, b = [f"a{i}" for i in range(61)], [f"b{i}" for i in range(60)]
    world = fakes.reset({**dict.fromkeys(a + b, "on"), "miner": "on"})
    pb = pb_file(tmp_path, f"  - id: turn-off\n    action: fake.set\n    with: {{keys: [{', '.join(a)}]}}\n"
                           f"  - id: deactivate-keys\n    action: fake.set\n    with: {{keys: [{', '.join(b)}]}}\n"
                           "  - id: other\n    action: fake.set\n    with: {keys: [miner]}\n")
    out = run(tmp_path, pb, approve_all=True)
    by_id = {s["id"]: s for s in out.result["steps"]}
    assert out.exit_code == 3 and by_id["turn-off"]["status"] == "awaiting_approval"
    assert any("61 changes exceed the cap of 50" in n and "sample: a0" in n for n in by_id["turn-off"]["notes"])
    assert by_id["deactivate-keys"]["status"] == "applied"  # 60 changes, never held back by the cap
    assert by_id["other"]["status"] == "applied" and world.values["miner"] == "off"
    assert world.values["a0"] == "on"
    again = resume(tmp_path, out.result["run_id"], approve_all=True)  # --approve-all does not cover the cap
    assert again.exit_code == 3
    done = resume(tmp_path, out.result["run_id"], approve=("turn-off",))
    assert done.exit_code == 0, done.result
    assert all(world.values[k] == "off" for k in a)
    fakes.reset({**dict.fromkeys(a + b, "on"), "miner": "on"})
    assert run(tmp_path / "raised", pb, max_changes=70).exit_code == 0  # --max-changes pre-approves it


def test_protected_and_own_identity_are_never_touched(tmp_path: Path) -> None:
    world = fakes.reset({"breakglass-admin": "on", "runner": "on"})
    for key in ("breakglass-admin", "runner"):
        pb = pb_file(tmp_path, f"  - id: turn-off\n    action: fake.set\n    with: {{keys: [{key}]}}\n")
        out = run(tmp_path, pb)
        assert out.exit_code == 4, key
        assert "protected principal" in out.result["steps"][1]["error"] or "own identity" in out.result["steps"][1]["error"]
    assert world.applied == []


def test_failed_step_skips_dependents_and_reports_partial(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on", "b": "on"})
    pb = pb_file(tmp_path, "  - id: ok\n    action: fake.set\n    with: {keys: [a]}\n"
                           "  - id: bad\n    action: fake.broken\n    with: {keys: [b]}\n"
                           "  - id: after\n    action: fake.set\n    with: {keys: [b]}\n    needs: [bad]\n")
    out = run(tmp_path, pb)
    assert out.exit_code == 1 and out.result["status"] == "partially_contained"
    by_id = {s["id"]: s for s in out.result["steps"]}
    assert by_id["bad"]["status"] == "failed" and "AccessDenied" in by_id["bad"]["error"]
    assert by_id["after"]["status"] == "skipped"
    assert world.values == {"a": "off", "b": "on"}


def test_a_step_applies_while_another_is_still_planning(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on", "b": "on"})
    pb = pb_file(tmp_path, "  - id: slow\n    action: fake.slow-plan\n    with: {keys: [b]}\n"
                           "  - id: fast\n    action: fake.set\n    with: {keys: [a]}\n")
    out = run(tmp_path, pb)
    assert out.result["status"] == "contained"
    assert world.slow_plan_saw_apply is True  # in waves, fast would wait for slow's plan (and slow would time out)
    assert world.applied == ["a", "b"]


def test_a_failed_evidence_step_blocks_neither_credentials_nor_compute(tmp_path: Path) -> None:
    world = fakes.reset({"key": "on", "miner": "on"})
    pb = pb_file(tmp_path, "  - id: evidence\n    action: fake.broken-plan\n    on_error: continue\n    with: {keys: [x]}\n"
                           "  - id: keys\n    action: fake.set\n    with: {keys: [key]}\n"
                           "  - id: compute\n    action: fake.set\n    with: {keys: [miner]}\n    needs: [evidence]\n"
                           "  - id: report\n    action: fake.set\n    with: {keys: [x]}\n    needs: [compute]\n")
    out = run(tmp_path, pb)
    by_id = {s["id"]: s for s in out.result["steps"]}
    assert by_id["evidence"]["status"] == "failed" and "ThrottlingException" in by_id["evidence"]["error"]
    assert by_id["keys"]["status"] == by_id["compute"]["status"] == by_id["report"]["status"] == "applied"
    assert world.values["key"] == world.values["miner"] == "off"
    assert out.result["status"] == "partially_contained"  # the evidence is missing, and the run says so


def test_a_resumed_run_finishes_the_playbook_it_started(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on", "b": "on"})
    pb = pb_file(tmp_path, "  - id: gated\n    action: fake.set\n    approval: required\n    with: {keys: [a]}\n")
    out = run(tmp_path, pb)
    assert out.exit_code == 3
    # the playbook on disk changes while the run is paused: the run still finishes what it started
    Path(pb).write_text("version: 1\nname: fake\nsteps:\n  - id: collect\n    action: fake.collect\n"
                        "  - id: other\n    action: fake.set\n    with: {keys: [b]}\n")
    done = resume(tmp_path, out.result["run_id"], approve=("gated",))
    assert done.result["status"] == "contained"
    assert [s["id"] for s in done.result["steps"]] == ["collect", "gated"]
    assert world.values == {"a": "off", "b": "on"}


def test_manual_step_gives_exit_5(tmp_path: Path) -> None:
    fakes.reset({"a": "on"})
    pb = pb_file(tmp_path, "  - id: ok\n    action: fake.set\n    with: {keys: [a]}\n"
                           "  - id: person\n    action: fake.manual\n")
    out = run(tmp_path, pb)
    assert out.exit_code == 5 and out.result["status"] == "needs_manual_action"
    assert out.result["manual_actions"] == [{"step": "person", "instructions": "call the account owner"}]


def test_template_to_missing_output_fails_the_step_clearly(tmp_path: Path) -> None:
    fakes.reset({"a": "on"})
    pb = pb_file(tmp_path, "  - id: turn-off\n    action: fake.set\n    with: {keys: '{{ scope.nothing }}'}\n")
    out = run(tmp_path, pb)
    assert out.result["steps"][1]["status"] == "failed"
    assert "nothing at 'scope.nothing'" in out.result["steps"][1]["error"]


def test_resume_after_crash_applies_each_change_once(tmp_path: Path) -> None:
    """Simulate a process that died after sending one change and before journaling it."""
    from runner.journal import SqliteJournal

    world = fakes.reset({"a": "on", "b": "on"})
    pb = pb_file(tmp_path, "  - id: gated\n    action: fake.set\n    approval: required\n    with: {keys: [a, b]}\n")
    out = run(tmp_path, pb)
    run_id = out.result["run_id"]
    approve_step(run_id, "gated", by="alice", reason="ok", state=tmp_path / "state")
    # the dead process had started 'a' (journaled) and AWS had applied it
    journal = SqliteJournal(tmp_path / "state")
    plan = journal.steps(run_id)["gated"].plan
    assert plan is not None
    change_a = next(c for c in plan["changes"] if c["params"]["key"] == "a")
    journal.change_started(run_id, "gated", change_a["digest"], change_a)
    journal.set_run_status(run_id, "applying")
    journal.close()
    world.values["a"] = "off"
    done = resume(tmp_path, run_id)
    assert done.result["status"] == "contained"
    assert world.applied == ["b"]  # 'a' was not sent again
    statuses = {c["params"]["key"]: c["status"] for c in done.result["steps"][1]["changes"]}
    assert statuses == {"a": "applied", "b": "applied"}
    applied = [e["target"].rsplit("/", 1)[-1] for e in audit(tmp_path) if e["event"] == "change.applied"]
    assert sorted(applied) == ["a", "b"]


def test_audit_chain_stays_intact_with_concurrent_writers(tmp_path: Path) -> None:
    """Two runs (e.g. a dry-run drill and a real run) appending to one state directory at once."""
    from concurrent.futures import ThreadPoolExecutor

    from runner.audit import AuditLog

    path = tmp_path / "audit.jsonl"
    writers = [AuditLog(path) for _ in range(4)]  # separate objects, as separate processes would have

    def burst(log: AuditLog) -> None:
        for i in range(50):
            log.write({"event": "test.event", "n": i})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(burst, writers))
    assert verify_chain(path) == []
    assert len(path.read_text().splitlines()) == 200


def test_credentials_for_another_account_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on"})
    other = INCIDENT.model_copy(update={"account_id": "210987654321"})
    pb = pb_file(tmp_path, "  - id: turn-off\n    action: fake.set\n    with: {keys: [a]}\n")
    out = start_run(other, playbook_ref=pb, config_path=None, options=RunOptions(by="t"), aws_opts=AwsOptions(),
                    state=tmp_path / "state", stream=io.StringIO(), registry=fakes.registry(),
                    session=fakes.FakeAws())  # type: ignore[arg-type]
    assert out.exit_code == 4 and out.result["status"] == "refused"
    assert "account 123456789012 but the incident is in account 210987654321" in out.result["error"]
    assert all(s["status"] == "pending" for s in out.result["steps"]) and world.applied == []


CHAIN = ("  - id: first\n    action: fake.set\n    approval: required\n    with: {keys: [a]}\n"
         "  - id: second\n    action: fake.set\n    approval: required\n    needs: [first]\n    with: {keys: [b]}\n"
         "  - id: third\n    action: fake.dangerous\n    needs: [second]\n    with: {keys: [c]}\n"
         "  - id: suspects\n    action: fake.set\n    approval: explicit\n    needs: [first]\n    with: {keys: [d]}\n")


def test_chained_gated_steps_show_at_once_and_one_approval_contains(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on", "b": "on", "c": "on", "d": "on"})
    out = run(tmp_path, pb_file(tmp_path, CHAIN))
    assert out.exit_code == 3
    by_id = {s["id"]: s for s in out.result["steps"]}
    # the whole chain is planned and shown, not only its first link
    assert {k: by_id[k]["status"] for k in ("first", "second", "third", "suspects")} == dict.fromkeys(
        ("first", "second", "third", "suspects"), "awaiting_approval")
    assert [c["target"].rsplit("/", 1)[-1] for c in by_id["third"]["changes"]] == ["c"]
    assert any("planned ahead of second" in n for n in by_id["third"]["notes"])
    assert world.applied == []
    run_id = out.result["run_id"]
    approved = approve_steps(run_id, None, by="alice", reason="one look", state=tmp_path / "state")
    assert sorted(a.step_id for a in approved) == ["first", "second", "third"]  # never the explicit one
    done = resume(tmp_path, run_id)
    assert done.exit_code == 3  # only the explicit step still waits
    assert world.values == {"a": "off", "b": "off", "c": "off", "d": "on"}
    assert [s["status"] for s in done.result["steps"] if s["id"] in ("first", "second", "third")] == ["applied"] * 3
    approve_step(run_id, "suspects", by="alice", reason="confirmed", state=tmp_path / "state")
    assert resume(tmp_path, run_id).result["status"] == "contained"
    assert not any(e["event"] == "approval.stale" for e in audit(tmp_path))


def test_a_chained_plan_that_changed_after_its_need_applied_pauses_again(tmp_path: Path) -> None:
    world = fakes.reset({"a": "on", "b": "x", "c": "on"})
    pb = pb_file(tmp_path, "  - id: first\n    action: fake.set\n    approval: required\n    with: {keys: [a]}\n"
                           "  - id: second\n    action: fake.mark\n    approval: required\n    needs: [first]\n"
                           "    with: {source: a, keys: [b]}\n"
                           "  - id: steady\n    action: fake.set\n    approval: required\n    needs: [first]\n"
                           "    with: {keys: [c]}\n")
    out = run(tmp_path, pb)
    by_id = {s["id"]: s for s in out.result["steps"]}
    assert by_id["second"]["status"] == "awaiting_approval"
    assert by_id["second"]["changes"][0]["params"]["value"] == "after-on"  # what the responder saw
    run_id = out.result["run_id"]
    approve_steps(run_id, None, by="alice", reason="ok", state=tmp_path / "state")
    again = resume(tmp_path, run_id)
    by_id = {s["id"]: s for s in again.result["steps"]}
    # 'first' applied; 'steady' was unchanged and applied; 'second' now plans a value nobody approved
    assert again.exit_code == 3 and by_id["second"]["status"] == "awaiting_approval"
    assert by_id["first"]["status"] == "applied" and by_id["steady"]["status"] == "applied"
    assert by_id["second"]["changes"][0]["params"]["value"] == "after-off"
    assert world.values == {"a": "off", "b": "x", "c": "off"}
    assert any(e["event"] == "approval.stale" and e["step"] == "second" for e in audit(tmp_path))
    approve_step(run_id, "second", by="alice", reason="seen", state=tmp_path / "state")
    assert resume(tmp_path, run_id).result["status"] == "contained"
    assert world.values["b"] == "after-off"


def test_an_approval_bound_to_a_plan_digest_refuses_a_step_re_planned_since(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from runner.cli import app
    from runner.config import NotifySection
    from runner.notify import message
    from runner.service import open_journal

    fakes.reset({"a": "on", "b": "x"})
    pb = pb_file(tmp_path, "  - id: first\n    action: fake.set\n    approval: required\n    with: {keys: [a]}\n"
                           "  - id: second\n    action: fake.mark\n    approval: required\n    needs: [first]\n"
                           "    with: {source: a, keys: [b]}\n")
    state = tmp_path / "state"
    out = run(tmp_path, pb)
    run_id = out.result["run_id"]
    seen = {s["id"]: s.get("plan_digest") for s in out.result["steps"]}  # what status and the notification show
    assert seen["collect"] is None and len(seen["first"]) == len(seen["second"]) == 16
    note = message(out.result, NotifySection())
    assert f"--step second --plan second={seen['second']}" in note["approve_command"]
    assert {p["step"]: p["plan_digest"] for p in note["awaiting_approval"]} == {"first": seen["first"],
                                                                                "second": seen["second"]}
    # responder 1 approves only 'first' (bound to its plan); a worker resumes; 'second' is re-planned
    approve_steps(run_id, ["first"], by="alice", reason="ok", state=state, expect={"first": seen["first"]})
    again = resume(tmp_path, run_id)
    now = {s["id"]: s for s in again.result["steps"]}
    assert again.exit_code == 3 and now["second"]["status"] == "awaiting_approval"
    assert now["second"]["plan_digest"] != seen["second"] and "plan_digest" not in now["first"]
    shown = run_status(run_id, state)
    assert isinstance(shown, dict)
    text = CliRunner().invoke(app, ["status", run_id, "--state-dir", str(state)]).output
    assert f"second={now['second']['plan_digest']}" in text and seen["second"] not in text
    assert {s["id"]: s.get("plan_digest") for s in shown["steps"]}["second"] == now["second"]["plan_digest"]

    def approvals() -> int:
        journal = open_journal(state)
        try:
            return len(journal.approvals(run_id))
        finally:
            journal.close()

    before = approvals()
    # responder 2 approves 'second' from the first notification: refused, nothing approved
    stale = CliRunner().invoke(app, ["approve", run_id, "--step", "second", "--plan", f"second={seen['second']}",
                                     "--by", "bob", "--state-dir", str(state)])
    assert stale.exit_code == 4, stale.output
    assert now["second"]["plan_digest"] in stale.output and "stanch status" in stale.output
    assert approvals() == before
    # a digest for a step not being approved, or a malformed one: bad input, nothing approved
    for bad in (["--plan", f"first={seen['first']}"], ["--plan", "second=zz"], ["--plan", "second"]):
        res = CliRunner().invoke(app, ["approve", run_id, "--step", "second", *bad, "--state-dir", str(state)])
        assert res.exit_code == 2, (bad, res.output)
    assert approvals() == before
    # the digest `stanch status` shows now (its 12-character prefix is enough) is approved
    ok = CliRunner().invoke(app, ["approve", run_id, "--step", "second", "--plan",
                                  f"second={now['second']['plan_digest'][:12]}", "--by", "bob",
                                  "--state-dir", str(state)])
    assert ok.exit_code == 0, ok.output
    assert f"plan {now['second']['plan_digest']}" in ok.output and approvals() == before + 1
    assert resume(tmp_path, run_id).result["status"] == "contained"
