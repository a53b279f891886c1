"""The DynamoDB journal: runs, locks, approvals and the audit log shared by machines (separate state
directories and processes here) through one table on the test's moto server. No journal file is ever
written in any state directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from runner.dynamo_journal import DynamoJournal, LeaseLostError, table_client
from runner.journal import RunBusyError, RunRecord, now_iso
from tests.conftest import ROOT, TRAIL_CONFIG, MotoServer
from tests.test_cli_e2e import cli, seeded, stanch

TABLE = "stanch-journal-test"


def use_table(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, lease_seconds: float = 60,
              via_env: bool = True) -> None:
    """Create the table with `stanch journal init` and select it (STANCH_JOURNAL, or the config)."""
    config = tmp_path / "journal.toml"
    journal = f'[journal]\nlease_seconds = {lease_seconds}\n'
    if not via_env:
        journal += f'backend = "dynamodb"\ntable = "{TABLE}"\n'
    config.write_text('[aws]\nregions = ["us-east-1", "eu-west-1"]\n\n' + TRAIL_CONFIG + journal)
    monkeypatch.setenv("STANCH_CONFIG", str(config))
    if via_env:
        monkeypatch.setenv("STANCH_JOURNAL", f"dynamodb://{TABLE}")
    made = json.loads(cli("journal", "init", "--output", "json", check_codes=(0,)).stdout)
    assert made == {"table": TABLE, "created": True, "ttl": "expires_at", "index": "status-index"}
    desc = moto.client("dynamodb").describe_table(TableName=TABLE)["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in desc["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    assert [i["IndexName"] for i in desc["GlobalSecondaryIndexes"]] == ["status-index"]
    ttl = moto.client("dynamodb").describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at"


def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """Another machine: a state directory of its own, empty."""
    state = tmp_path / name
    monkeypatch.setenv("STANCH_STATE_DIR", str(state))
    return state


def table_items(moto: MotoServer, run_id: str, prefix: str) -> list[dict[str, Any]]:
    out = moto.client("dynamodb").query(TableName=TABLE, KeyConditionExpression="pk = :p AND begins_with(sk, :s)",
                                        ExpressionAttributeValues={":p": {"S": f"run#{run_id}"}, ":s": {"S": prefix}})
    return list(out["Items"])


def audit_events(moto: MotoServer, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(i["line"]["S"]) for i in table_items(moto, run_id, "audit#")]


def test_run_paused_then_approved_resumed_cancelled_and_reported_from_other_machines(
        moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    incident, _ = seeded(moto_server, tmp_path)
    use_table(moto_server, tmp_path, monkeypatch, via_env=False)  # selected by [journal] in the config
    first = machine(tmp_path, monkeypatch, "machine-a")
    doc = json.loads(cli("run", str(incident), "--output", "json", check_codes=(3,)).stdout)
    run_id = doc["run_id"]
    assert doc["status"] == "awaiting_approval"

    machine(tmp_path, monkeypatch, "machine-b")  # no local state at all
    locked = cli("run", str(incident), check_codes=(4,))  # the incident's lock is in the table
    assert run_id in locked.stderr
    status = json.loads(cli("status", run_id, "--output", "json", check_codes=(0,)).stdout)
    assert status["status"] == "awaiting_approval"
    waiting = {s["id"] for s in status["steps"] if s["status"] == "awaiting_approval"}
    assert "scale-miner-services" in waiting
    listed = json.loads(cli("status", "--status", "awaiting_approval", "--output", "json", check_codes=(0,)).stdout)
    assert [r["run_id"] for r in listed] == [run_id]
    cli("approve", run_id, "--step", "scale-miner-services", "--by", "alice", "--reason", "xmrig", check_codes=(0,))

    third = machine(tmp_path, monkeypatch, "machine-c")  # a real second process resumes it
    final = json.loads(stanch("resume", run_id, "--approve-all", "--by", "bob", "--output", "json",
                              check_codes=(0,)).stdout)  # approves stop-miner-tasks as it comes up
    assert final["status"] == "contained"
    ecs = boto3.Session(region_name="us-east-1").client("ecs")
    assert ecs.describe_services(cluster="prod_app", services=["prod_app"])["services"][0]["desiredCount"] == 0

    machine(tmp_path, monkeypatch, "machine-d")
    status = json.loads(cli("status", run_id, "--output", "json", check_codes=(0,)).stdout)
    assert status["status"] == "contained"
    assert [(a["step"], a["by"]) for a in status["approvals"]] == [("scale-miner-services", "alice"),
                                                                     ("stop-miner-tasks", "bob")]
    report = json.loads(cli("report", run_id, "--output", "json", check_codes=(0,)).stdout)
    assert run_id in json.dumps(report)
    verified = json.loads(cli("audit", "verify", "--output", "json", check_codes=(0,)).stdout)
    assert verified["intact"] and verified["lines"] == len(audit_events(moto_server, run_id)) > 20

    for state in (first, third):  # the machines that executed keep evidence, never a journal
        assert not (state / "journal.sqlite3").exists() and not (state / "audit.jsonl").exists()
    assert (first / "evidence").is_dir()

    # an edited audit line in the table is found, and named by its run
    events = table_items(moto_server, run_id, "audit#")
    line = json.loads(events[3]["line"]["S"])
    line["by"] = "mallory"
    moto_server.client("dynamodb").put_item(TableName=TABLE, Item={**events[3], "line": {
        "S": json.dumps(line, separators=(",", ":"))}})
    tampered = json.loads(cli("audit", "verify", "--output", "json", check_codes=(1,)).stdout)
    assert tampered["problems"] and all(p.startswith(f"run {run_id}: ") for p in tampered["problems"])


def test_two_machines_start_the_same_incident_at_once_one_is_refused_and_a_third_cancels_it(
        moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    incident, _ = seeded(moto_server, tmp_path)
    use_table(moto_server, tmp_path, monkeypatch)
    procs = [subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(incident), "--output", "json"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "STANCH_STATE_DIR": str(tmp_path / f"m{i}")}) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [3, 4], outs  # one run pauses for approval, the other is refused: another run holds it
    winner = next(json.loads(out) for (out, _), p in zip(outs, procs, strict=True) if p.returncode == 3)
    loser_err = next(err for (_, err), p in zip(outs, procs, strict=True) if p.returncode == 4)
    assert winner["run_id"] in loser_err and "Traceback" not in loser_err
    run_id = winner["run_id"]
    assert [r["run_id"] for r in json.loads(cli("status", "--output", "json", check_codes=(0,)).stdout)] == [run_id]

    machine(tmp_path, monkeypatch, "m2")  # a third machine gives the run up: the incident is free again
    cli("cancel", run_id, "--reason", "wrong account", check_codes=(0,))
    assert json.loads(cli("status", run_id, "--output", "json", check_codes=(1,)).stdout)["status"] == "cancelled"
    assert "cancelled" in cli("resume", run_id, check_codes=(1,)).stderr
    assert any(e["event"] == "run.cancelled" for e in audit_events(moto_server, run_id))
    cli("audit", "verify", check_codes=(0,))
    lock = moto_server.client("dynamodb").get_item(TableName=TABLE, Key={
        "pk": {"S": f"incident#{winner['incident_id']}"}, "sk": {"S": "lock"}})
    assert "Item" not in lock  # the incident is free for a new run


def test_a_change_claimed_by_many_workers_at_once_is_sent_by_one(moto_server: MotoServer, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    use_table(moto_server, tmp_path, monkeypatch)
    client = table_client("us-east-1")
    workers = [DynamoJournal(TABLE, client=client) for _ in range(6)]
    workers[0].create_run(RunRecord("r-race", "INC-race", "pb", "applying", False, now_iso(), now_iso(), {}, {}),
                          lock=True)
    change = {"operation": "iam:UpdateAccessKey", "target": "arn:aws:iam::123456789012:user/x"}
    barrier = threading.Barrier(len(workers))
    won: list[bool] = [False] * len(workers)

    def claim(i: int) -> None:
        barrier.wait()
        won[i] = workers[i].change_started("r-race", "deactivate-keys", "d1", change)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1
    owner = won.index(True)
    workers[owner].change_finished("r-race", "deactivate-keys", "d1", "applied")
    # nobody sends it again: not the others, nor a worker that started after it was applied and saw the plan
    # before (it is a different change only once the account drifts and a new plan lists it again)
    assert not any(w.change_started("r-race", "deactivate-keys", "d1", change) for w in workers)
    assert [c.status for c in workers[0].changes("r-race")] == ["applied"]
    late = DynamoJournal(TABLE, client=client)
    assert late.change_started("r-race", "deactivate-keys", "d1", change)  # drift seen by a fresh plan: re-sent
    # a failed attempt may be tried again by anyone
    workers[1].change_finished("r-race", "deactivate-keys", "d1", "failed", "Throttling")
    assert workers[2].change_started("r-race", "deactivate-keys", "d1", change)
    [record] = workers[3].changes("r-race")
    assert record.status == "applying" and record.error is None


def test_a_live_lease_refuses_an_expired_one_is_taken_over_and_the_old_holder_is_fenced(
        moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_table(moto_server, tmp_path, monkeypatch)
    client = table_client("us-east-1")
    old, new = DynamoJournal(TABLE, client=client, lease_seconds=1), DynamoJournal(TABLE, client=client,
                                                                                   lease_seconds=1)
    old.create_run(RunRecord("r-lease", "INC-lease", "pb", "applying", False, now_iso(), now_iso(), {}, {}),
                   lock=True)
    with old.hold("r-lease"):  # a live worker: its heartbeat keeps the lease past lease_seconds
        time.sleep(1.5)
        assert new.is_held("r-lease")
        with pytest.raises(RunBusyError), new.hold("r-lease"):
            pass
    assert not new.is_held("r-lease")
    monkeypatch.setattr(old, "_heartbeat", lambda run_id, stop: None)  # a worker that stops beating (hangs)
    hung = old.hold("r-lease")
    hung.__enter__()
    assert old.change_started("r-lease", "s", "d-left-applying", {"operation": "x"})
    time.sleep(1.2)
    with new.hold("r-lease"):
        # the change the hung holder left `applying` (and the re-plan still lists) is the new holder's now
        assert new.change_started("r-lease", "s", "d-left-applying", {"operation": "x"})
        with pytest.raises(LeaseLostError):  # the old holder can no longer write over the new one
            old.save_step("r-lease", "s", "applied", None)
        with pytest.raises(LeaseLostError):
            old.change_started("r-lease", "s", "d-other", {"operation": "y"})
        new.set_run_status("r-lease", "contained", {"status": "contained"})
    hung.__exit__(None, None, None)  # the lease was taken over: nothing of the new holder's is deleted
    assert new.get_run("r-lease").status == "contained"


def test_killed_worker_is_taken_over_by_resume_and_no_change_is_sent_twice(
        moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    incident, _ = seeded(moto_server, tmp_path)
    lease = 2
    use_table(moto_server, tmp_path, monkeypatch, lease_seconds=lease)
    iam = boto3.Session(region_name="us-east-1").client("iam")
    for i in range(4):  # work left to do after the kill
        iam.create_user(UserName=f"persist-{i}")
        iam.create_access_key(UserName=f"persist-{i}")
        iam.add_user_to_group(GroupName="ecs_dev", UserName=f"persist-{i}")
    stalled = tmp_path / "stalled"
    ddb = moto_server.client("dynamodb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.stallpoint", "6", str(stalled),
                             "run", str(incident), "--approve-all", "--approve", "contain-suspects",
                             "--max-changes", "500"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "STANCH_STATE_DIR": str(tmp_path / "m1")})
    run_id = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if stalled.exists():
            runs = ddb.query(TableName=TABLE, IndexName="status-index", KeyConditionExpression="gsi1pk = :p",
                             ExpressionAttributeValues={":p": {"S": "status#applying"}})["Items"]
            if runs:
                run_id = runs[0]["run_id"]["S"]
                if sum(e["event"] == "change.applied" for e in audit_events(moto_server, run_id)) >= 5:
                    proc.send_signal(signal.SIGKILL)
                    break
        time.sleep(0.05)
    else:
        proc.kill()
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL and run_id, "the run finished before it could be killed"
    killed_at = time.monotonic()
    left = {i["sk"]["S"] for i in table_items(moto_server, run_id, "change#") if i["status"]["S"] == "applying"}
    assert left  # the stalled write reached AWS; the journal never heard back

    machine(tmp_path, monkeypatch, "m2")
    if time.monotonic() - killed_at < lease - 0.5:  # the dead worker's lease is still live: refused
        busy = cli("resume", run_id, "--approve-all", check_codes=(4,))
        assert "being executed" in busy.stderr
    time.sleep(max(0.0, lease + 0.3 - (time.monotonic() - killed_at)))
    resumed = stanch("resume", run_id, "--approve-all", "--approve", "contain-suspects", "--output", "json",
                     check_codes=(0,))
    assert json.loads(resumed.stdout)["status"] == "contained"
    events = audit_events(moto_server, run_id)
    applied = Counter((e["step"], e["digest"]) for e in events if e["event"] == "change.applied")
    assert applied and max(applied.values()) == 1, [k for k, v in applied.items() if v > 1]
    assert any(e.get("confirmed_by") == "replan" for e in events if e["event"] == "change.applied")
    assert {i["status"]["S"] for i in table_items(moto_server, run_id, "change#")} <= {"applied", "already_done"}
    for i in range(4):
        assert {k["Status"] for k in iam.list_access_keys(UserName=f"persist-{i}")["AccessKeyMetadata"]} == {"Inactive"}
    assert not table_items(moto_server, run_id, "lease")  # released by the worker that finished
    cli("audit", "verify", check_codes=(0,))


def test_bad_journal_settings_are_bad_input_and_change_nothing(moto_server: MotoServer, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    incident, _ = seeded(moto_server, tmp_path)
    before = moto_server.client("iam").list_users()["Users"]
    for value, said in [("postgres://db", "not a journal"), ("dynamodb://", "not a journal"),
                        ("dynamodb://t?colour=red", "unknown: colour"), ("dynamodb://no-such-table", "stanch journal init")]:
        monkeypatch.setenv("STANCH_JOURNAL", value)
        for args in (["run", str(incident), "--approve-all"], ["status"]):
            result = cli(*args, check_codes=(2,))
            assert said in result.stderr and "Traceback" not in result.stderr
    assert moto_server.client("iam").list_users()["Users"] == before
    assert not list(Path(os.environ["STANCH_STATE_DIR"]).glob("journal.sqlite3"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[journal]\nbackend = "dynamodb"\n')
    monkeypatch.delenv("STANCH_JOURNAL")
    monkeypatch.setenv("STANCH_CONFIG", str(bad))
    assert "needs table" in cli("status", check_codes=(2,)).stderr


def test_large_values_ttl_and_listing_without_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    from runner.dynamo_journal import create_table

    with mock_aws():
        client = table_client("us-east-1")
        create_table(client, TABLE)
        journal = DynamoJournal(TABLE, client=client, ttl_days=30)
        created = "2026-01-02T03:04:05.000Z"
        for n, status in enumerate(["contained", "awaiting_approval", "failed"]):
            journal.create_run(RunRecord(f"r{n}", f"INC-{n}", "pb", status, False, f"2026-01-0{n + 2}T00:00:00.000Z",
                                         created, {"id": f"INC-{n}"}, {}), lock=False)
        # a step plan beyond what an item holds (the limits scaled down from DynamoDB's 400 KB, to stay fast)
        monkeypatch.setattr("runner.dynamo_journal._INLINE_LIMIT", 2_000)
        monkeypatch.setattr("runner.dynamo_journal._PART_SIZE", 1_500)
        plan = {"changes": [{"target": f"arn:aws:iam::123456789012:user/u-{i}-{i * 7919 % 10007}", "n": i}
                            for i in range(1_000)]}
        journal.save_step("r0", "contain", "applied", plan)
        journal.save_step("r0", "contain", "applied", None, "a note")  # no plan given: the plan is kept
        step = journal.steps("r0")["contain"]
        assert step.plan == plan and step.error == "a note"
        journal.set_run_status("r0", "contained", {"steps": [plan]})
        assert journal.get_run("r0").result == {"steps": [plan]}
        journal.set_run_status("r0", "contained", {"small": True})  # back inline: the parts are not read
        assert journal.get_run("r0").result == {"small": True}
        items = client.query(TableName=TABLE, KeyConditionExpression="pk = :p",
                             ExpressionAttributeValues={":p": {"S": "run#r0"}})["Items"]
        assert sum(i["sk"]["S"].startswith("blob#step#contain#plan#") for i in items) > 2
        expiry = {i["expires_at"]["N"] for i in items}  # the whole run expires at once, 30 days after it started
        assert expiry == {str(int(datetime(2026, 1, 2, tzinfo=UTC).timestamp()) + 30 * 86400)}
        assert [r.run_id for r in journal.list_runs()] == ["r2", "r1", "r0"]  # newest first, every status
        assert [r.run_id for r in journal.list_runs(limit=1)] == ["r2"]

        def no_scan(**_: Any) -> None:
            raise AssertionError("the journal never scans its table")

        monkeypatch.setattr(client, "scan", no_scan)
        journal.list_runs()
        journal.anchors()


def test_runs_of_incident_reads_the_incident_items_consistently_never_the_status_index() -> None:
    from moto import mock_aws

    from runner.dynamo_journal import create_table

    with mock_aws():
        client = table_client("us-east-1")
        create_table(client, TABLE)
        journal = DynamoJournal(TABLE, client=client)
        for n, (incident, status) in enumerate([("INC-7", "contained"), ("INC-70", "failed"),
                                                ("INC-7", "awaiting_approval"), ("INC-8", "contained")]):
            at = f"2026-01-0{n + 2}T00:00:00.000Z"
            journal.create_run(RunRecord(f"r{n}", incident, "pb", status, False, at, at, {"id": incident}, {}),
                               lock=False)
        calls: list[dict[str, Any]] = []
        client.meta.events.register("provide-client-params.dynamodb.*",
                                    lambda params, model, **_: calls.append({"op": model.name, **params}))
        runs = journal.runs_of_incident("INC-7")
        assert [(r.run_id, r.status) for r in runs] == [("r2", "awaiting_approval"), ("r0", "contained")]
        assert journal.runs_of_incident("INC-9") == []
        assert calls and not [c for c in calls if c["op"] == "Scan" or "IndexName" in c]
        assert all(c.get("ConsistentRead") is True for c in calls if c["op"] in ("Query", "GetItem"))
