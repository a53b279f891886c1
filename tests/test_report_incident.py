"""An incident's life across runs, through the CLI against in-process moto, with other names than
the reference: a run paused at a gate and cancelled, a new run approved with --all-pending, a
partial rollback; then `status` and the incident report, whose counts must match the journal."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import seed
from tests.conftest import use_attack_trail, write_json

pytestmark = pytest.mark.xdist_group("report-incident")  # one worker, so one recorded life

NAMES = {"user": "svc-metrics", "group": "obs-readers", "cluster": "analytics", "service": "etl-batch",
         "image": "registry.example.net/tools/xmrig-lite:2"}


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def live(session: boto3.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Seed the account, pause a run at its gate and cancel it, then pause a second run."""
    data = seed(session, NAMES)
    use_attack_trail(session, data, monkeypatch, tmp_path, two_regions=True)  # runs and reports, not regions
    state = str(tmp_path / "state")
    incident = write_json(tmp_path / "incident.json", data["incident"])
    ecs = session.client("ecs")

    def desired() -> int:
        return int(ecs.describe_services(cluster="analytics", services=["etl-batch"])["services"][0]["desiredCount"])

    first = cli("run", str(incident), "--state-dir", state)  # text output, as a responder reads it
    assert first.exit_code == 3, first.output
    run1 = next(w for line in first.stdout.splitlines() for w in line.split() if w.startswith("r-"))
    cancel = cli("cancel", run1, "--reason", "wrong config; starting over", "--by", "carol", "--state-dir", state)
    assert cancel.exit_code == 0, cancel.output

    second = cli("run", str(incident), "--state-dir", state, "-o", "json")
    assert second.exit_code == 3, second.output
    run2 = json.loads(second.stdout)["run_id"]
    return {"state": state, "run1": run1, "run2": run2, "first_text": first.stdout, "desired": desired,
            "session": session, "incident": data["incident"]}


@pytest.fixture
def life(aws_managed: boto3.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An incident's life of its own, for a test that goes on to approve, resume or roll back in AWS."""
    return live(aws_managed, tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def recorded_life(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The same life recorded once for the tests that only read the state directory (status, the plan
    text, the report); each of them gets its own copy (`paused_life`)."""
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as mp, mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        recorded = live(boto3.Session(region_name="us-east-1"), tmp_path_factory.mktemp("life"), mp)
    yield {k: v for k, v in recorded.items() if k not in ("desired", "session")}  # AWS is gone


@pytest.fixture
def paused_life(recorded_life: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A private copy of the recorded life's state directory."""
    state = tmp_path / "life-state"
    shutil.copytree(recorded_life["state"], state, symlinks=True)
    return {**recorded_life, "state": str(state)}


def test_cancelled_run_is_its_own_status_with_its_reason(paused_life: dict[str, Any]) -> None:
    state, run1 = paused_life["state"], paused_life["run1"]
    shown = cli("status", run1, "--state-dir", state)
    assert shown.exit_code == 1
    assert "status: cancelled" in shown.stdout and "wrong config; starting over" in shown.stdout
    as_json = cli("status", run1, "-o", "json", "--state-dir", state)
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["status"] == "cancelled"
    again = cli("cancel", run1, "--state-dir", state)
    assert again.exit_code == 2 and "already cancelled" in again.output


def test_plan_text_names_each_object_and_its_old_and_new_value(paused_life: dict[str, Any]) -> None:
    text = paused_life["first_text"]
    assert "service analytics/etl-batch: desiredCount 2 -> 0" in text
    assert "of user svc-metrics: Active -> Inactive" in text  # the key id is on the line
    assert "console password of user svc-metrics: present -> deleted" in text
    assert "stanch approve" in text and "--all-pending" in text


def test_status_is_a_table_filtered_by_incident_and_status(paused_life: dict[str, Any]) -> None:
    state = paused_life["state"]
    table = cli("status", "--state-dir", state).stdout
    header = next(line for line in table.splitlines() if line.strip()).split()
    assert header[:3] == ["run", "status", "incident"]
    assert paused_life["run1"] in table and paused_life["run2"] in table
    assert "cancelled: wrong config; starting over" in table
    only = cli("status", "--status", "awaiting_approval", "--state-dir", state, "-o", "json")
    assert [r["run_id"] for r in json.loads(only.stdout)] == [paused_life["run2"]]
    cancelled = json.loads(cli("status", "--status", "cancelled", "-o", "json", "--state-dir", state).stdout)
    assert [(r["run_id"], r["reason"]) for r in cancelled] == [(paused_life["run1"], "wrong config; starting over")]
    assert json.loads(cli("status", "--incident", "INC-OTHER", "-o", "json", "--state-dir", state).stdout) == []
    mine = json.loads(cli("status", "--incident", paused_life["incident"]["id"], "-o", "json", "--state-dir", state).stdout)
    assert {r["run_id"] for r in mine} == {paused_life["run1"], paused_life["run2"]}


def test_approve_all_pending_then_resume_counts_time_from_the_run_start(life: dict[str, Any]) -> None:
    state, run2 = life["state"], life["run2"]
    wrong = cli("approve", run2, "--step", "stop-miner-taskz", "--state-dir", state)
    assert wrong.exit_code == 2 and "scale-miner-services" in wrong.output
    # the run sat paused for an hour before anyone approved it
    db = sqlite3.connect(Path(state) / "journal.sqlite3")
    with db:
        db.execute("UPDATE runs SET updated_at='2020-01-01T00:00:00.000Z', created_at='2020-01-01T00:00:00.000Z' "
                   "WHERE run_id=?", (run2,))
    db.close()
    ok = cli("approve", run2, "--all-pending", "--by", "dave", "--reason", "miner image confirmed", "-o", "json",
             "--state-dir", state)
    assert ok.exit_code == 0, ok.output
    # the stop waits only on the scale's gate: planned ahead at the pause, one --all-pending covers the chain
    assert [a["step"] for a in json.loads(ok.stdout)["approvals"]] == ["scale-miner-services", "stop-miner-tasks"]
    resumed = cli("resume", run2, "--approve-all", "--by", "dave", "--reason", "stop the tasks too", "-o", "json",
                  "--state-dir", state)
    assert resumed.exit_code == 0, resumed.output
    doc = json.loads(resumed.stdout)
    assert doc["status"] == "contained" and life["desired"]() == 0
    m = doc["metrics"]
    assert m["paused_s"] > 3600  # the pause is reported, not lost
    assert m["time_to_contained_s"] >= m["paused_s"]  # counted from the run's start
    # the cancelled run had already cut the credentials: this run's first change came after the pause
    assert m["time_to_contained_s"] >= m["time_to_first_change_s"] >= m["paused_s"]
    assert m["active_s"] < m["paused_s"]
    assert m["active_s"] == pytest.approx(m["duration_s"] - m["paused_s"], abs=0.01)


def contain(life: dict[str, Any]) -> None:
    state, run2 = life["state"], life["run2"]
    assert cli("approve", run2, "--all-pending", "--by", "dave", "--reason", "miner image confirmed",
               "--state-dir", state).exit_code == 0
    done = cli("resume", run2, "--approve-all", "--by", "dave", "--reason", "stop the tasks too", "--state-dir",
               state)
    assert done.exit_code == 0, done.output


def test_partial_rollback_needs_a_reason_and_undoes_only_what_is_named(life: dict[str, Any]) -> None:
    state, run2 = life["state"], life["run2"]
    contain(life)
    iam = life["session"].client("iam")
    unreasoned = cli("rollback", run2, "--step", "scale-miner-services", "--approve-all", "--state-dir", state)
    assert unreasoned.exit_code == 2 and "not marked a false positive" in unreasoned.output
    assert life["desired"]() == 0  # nothing changed
    bad = cli("rollback", run2, "--step", "scale-miner-servicez", "--reason", "x", "--state-dir", state)
    assert bad.exit_code == 2 and "scale-miner-services" in bad.output
    svc_arn = json.loads(cli("status", run2, "-o", "json", "--state-dir", state).stdout)
    target = next(c["target"] for s in svc_arn["steps"] if s["id"] == "scale-miner-services" for c in s["changes"])
    undo = cli("rollback", run2, "--target", target, "--reason", "customer needs the batch job back",
               "--approve-all", "--by", "erin", "--state-dir", state)
    assert undo.exit_code == 0, undo.output
    assert "WARNING" in undo.output
    assert life["desired"]() == 2
    keys = iam.list_access_keys(UserName="svc-metrics")["AccessKeyMetadata"]
    assert {k["Status"] for k in keys} == {"Inactive"}  # credentials stay contained


def test_incident_report_shows_every_run_in_order_and_counts_match_the_journal(life: dict[str, Any]) -> None:
    state, run1, run2 = life["state"], life["run1"], life["run2"]
    contain(life)
    undo = cli("rollback", run2, "--step", "scale-miner-services", "--reason", "customer needs the batch job back",
               "--approve-all", "--by", "erin", "--state-dir", state, "-o", "json")
    assert undo.exit_code == 0, undo.output
    run3 = json.loads(undo.stdout)["run_id"]

    by_run = cli("report", run2, "-o", "json", "--state-dir", state)
    assert by_run.exit_code == 0, by_run.output
    r = json.loads(by_run.stdout)  # -o json is JSON, not a file named "json"
    assert not (Path.cwd() / "json").exists()
    by_incident = json.loads(cli("report", life["incident"]["id"], "-o", "json", "--state-dir", state).stdout)
    assert [x["run_id"] for x in by_incident["runs"]] == [x["run_id"] for x in r["runs"]] == [run1, run2, run3]
    assert [(x["kind"], x["status"]) for x in r["runs"]] == [
        ("containment", "cancelled"), ("containment", "contained"), ("rollback", "contained")]
    assert r["runs"][0]["cancelled"]["reason"] == "wrong config; starting over"
    assert r["runs"][2]["reverts"] == run2

    # the timeline holds the cancel, the new run, the approval, the changes and the rollback, in that order
    whats = [t["what"] for t in r["timeline"]]

    def at(fragment: str) -> int:
        return next(i for i, w in enumerate(whats) if fragment in w)

    order = [at(f"run {run1} started"), at(f"run {run1} cancelled: wrong config"), at(f"run {run2} started"),
             at(f"approved step scale-miner-services of {run2}: miner image confirmed"),
             at("changed: ecs:UpdateService service analytics/etl-batch: desiredCount 2 -> 0"),
             at(f"rollback run {run3} started"),
             at("undone: ecs:UpdateService service analytics/etl-batch: desiredCount 0 -> 2")]
    assert order == sorted(order), [whats[i] for i in order]

    # summary counts are the journal's
    db = sqlite3.connect(Path(state) / "journal.sqlite3")
    applied = dict(db.execute("SELECT run_id, COUNT(*) FROM changes WHERE status IN ('applied','already_done') "
                              "GROUP BY run_id").fetchall())
    approvals = db.execute("SELECT COUNT(*) FROM approvals").fetchone()[0]
    db.close()
    c = r["summary_counts"]
    assert c["runs"] == 3 and c["cancelled"] == 1 and c["rollbacks"] == 1
    assert c["changes_applied"] == applied.get(run1, 0) + applied[run2]
    assert c["changes_rolled_back"] == applied[run3] == 1
    assert c["approvals"] == approvals
    assert c["credential_changes"] + c["workload_changes"] + c["evidence_uploads"] == c["changes_applied"]
    assert len([a for a in r["actions_taken"] if a["kind"] == "containment"]) == c["changes_applied"]
    assert f"{c['credential_changes']} change(s) cut off the attacker's credentials" in r["executive_summary"]
    assert f"{c['workload_changes']} change(s) stopped the malicious workload" in r["executive_summary"]

    # labels that tell the truth, and who approved
    labels = {a["operation"]: a["undo"] for a in r["actions_taken"]}
    assert labels["iam:DeleteLoginProfile"] == "restorable by a person"
    assert labels["iam:UpdateAccessKey"] == "reversible"
    scaled = next(a for a in r["actions_taken"] if a["operation"] == "ecs:UpdateService" and a["run_id"] == run2)
    assert scaled["approved_by"] == "dave (miner image confirmed)"
    assert scaled["object"] == "service analytics/etl-batch" and (scaled["was"], scaled["will_be"]) == (
        "desiredCount 2", "0")

    # facts: the attacker's own user is contained, not a hygiene finding; admin holders are not passing
    facts = {f["fact"]: f for f in r["hardening_facts"]}
    assert "svc-metrics" not in facts["IAM users without MFA"]["value"]
    assert "alice" in facts["IAM users without MFA"]["value"]
    admins = facts["Principals holding AdministratorAccess"]
    assert admins["state"] == "review" and admins["ok"] is False and "platform-admins" in admins["value"]

    # the attack, its techniques and its cost
    ids = {t["id"] for s in r["attacker_steps"] for t in s["techniques"]}
    assert {"T1078.004", "T1136.003", "T1098.001", "T1098.003", "T1610", "T1496.001"} <= ids
    assert r["attacker_steps"][0]["what"].startswith("Signed in with the leaked root access key")
    assert "analytics/etl-batch" in r["attacker_steps"][-1]["what"]
    cost = r["cost_estimate"]
    [item] = cost["items"]
    assert (item["vcpu"], item["memory_gb"], item["count"]) == (1.0, 2.0, 2)
    assert cost["total"] is not None and cost["prices"]["as_of"] and "estimate" in cost["note"]

    # evidence is absolute; recommendations cover the hardening a responder adds
    assert Path(r["evidence"]["path"]).is_absolute() and Path(r["evidence"]["path"]).is_dir()
    recs = " ".join(x for g in r["recommendations"] for x in g["items"])
    assert [g["group"] for g in r["recommendations"]] == ["Credential hygiene & audit", "Hardening",
                                                           "Costs and clean-up"]
    checklist = {c["item"]: c for c in r["containment"]}
    revoke = checklist["Revoke all AWS keys, including root"]
    assert revoke["status"] == "done" and "1 attacker access key(s) deactivated" in revoke["detail"]
    ecs_item = checklist["Stop ECS services and tasks running unauthorized workloads"]
    assert ecs_item["status"] == "done" and "1 service(s) scaled to 0" in ecs_item["detail"]
    assert "1 service(s) scaled back up by a rollback" in ecs_item["detail"]
    for needle in ("GuardDuty", "Runtime Monitoring", "every region", "organization trail", "service control",
                   "regions you do not use", "Budgets", "Cost Anomaly Detection", "AWS Support"):
        assert needle in recs, needle

    assert cli("evidence", "verify", run2, "--state-dir", state).exit_code == 0  # a run id names its bundle

    # what another part of stanch attributes to the attacker rides in the run document and is shown
    db = sqlite3.connect(Path(state) / "journal.sqlite3")
    with db:
        doc = json.loads(db.execute("SELECT result FROM runs WHERE run_id=?", (run2,)).fetchone()[0])
        doc["attacker_activity"] = [{"time": "2026-11-20T10:02:00Z", "event": "ecs:RunTask", "actor": "user:svc-metrics",
                                     "source_ip": "192.0.2.77", "user_agent": "aws-cli/2.13.1 md/Botocore",
                                     "country": "NL", "resource": "analytics/etl-batch x 4", "event_id": "ev-77",
                                     "technique_id": "T1610", "technique": "Deploy Container",
                                     "outcome": "contained", "why": "belongs to an in-scope service"}]
        db.execute("UPDATE runs SET result=? WHERE run_id=?", (json.dumps(doc), run2))
    db.close()
    md = cli("report", life["incident"]["id"], "--state-dir", state).stdout
    assert "## Every attacker call and its outcome" in md and "analytics/etl-batch x 4" in md
    assert "aws-cli/2.13.1 md/Botocore" in md and "192.0.2.77" in md and "Locations: NL" in md
    for needle in ("## What the attacker did", "T1496.001", "## Runs", "cancelled: wrong config; starting over",
                   f"reverts {run2}", "restorable by a person", "## Estimated cost of the mining"):
        assert needle in md, needle


def test_report_refuses_a_format_given_as_the_file(paused_life: dict[str, Any], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = cli("report", paused_life["run1"], "-f", "html", "--state-dir", paused_life["state"])
    assert out.exit_code == 2 and "--output html" in out.output
    assert not (tmp_path / "html").exists()
    ok = cli("report", paused_life["run1"], "-o", "html", "-f", "incident.html", "--state-dir", paused_life["state"])
    assert ok.exit_code == 0 and (tmp_path / "incident.html").read_text().startswith("<!doctype html>")
