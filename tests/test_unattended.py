"""Unattended at scale, end to end (issue 11): GuardDuty findings about MEMBER accounts arrive on SQS,
`stanch worker` processes in the security account assume `[accounts] role_name` there and contain, and
every machine shares one DynamoDB journal table (STANCH_JOURNAL) on the private moto server: no machine
keeps a journal of its own. Each test has a member account of its own, seeded once for the module with
the drill's attack; the security account holds look-alikes with the very same names, never touched."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from runner.drill import seed
from tests.conftest import HOOK_SECRET, ROOT, Hook, MotoServer
from tests.members import NAMES, ROLE, SECURITY, seed_member, state_of
from tests.test_dynamo_journal import TABLE, audit_events, table_items
from tests.test_worker import FINDING_TYPE, STANCH, depth, finding, finish, queues, worker

pytestmark = pytest.mark.xdist_group("unattended")  # one worker seeds the accounts once

#: a member account per test: each contains its own incident
MEMBERS = {"contain": "210987654321", "approve": "210987654322", "race": "210987654323"}
GATED = "scale-miner-services"
PLAYBOOK = f"""version: 1
name: unattended-test
description: discovery, the attacker's keys, and the (gated) miner scale-down
steps:
  - id: discover-scope
    action: scope.discover
  - id: deactivate-keys
    action: iam.deactivate-access-keys
    with: {{access_keys: "{{{{ scope.access_keys }}}}"}}
  - id: {GATED}
    action: ecs.scale-services-to-zero
    approval: required
    with: {{services: "{{{{ scope.ecs_services }}}}"}}
"""


class World:
    def __init__(self, moto: MotoServer, home: boto3.Session, members: dict[str, dict[str, Any]],
                 playbook: Path) -> None:
        self.moto, self.home, self.members, self.playbook = moto, home, members, playbook
        self.journal = f"dynamodb://{TABLE}?region=us-east-1&endpoint_url={moto.url}"


@pytest.fixture(scope="module")
def world(moto_server_process: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The security account's look-alikes, three member accounts with the attack, the role and an
    organization-style trail each, and the journal table: once for the module."""
    from runner.dynamo_journal import create_table

    moto = moto_server_process
    moto.reset()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", moto.url)
        home = moto.session()
        seed(home, NAMES)
        members = {}
        for name, account in MEMBERS.items():
            made = seed_member(home, account)
            s3 = made["member"].client("s3")
            s3.create_bucket(Bucket=f"trail-{account}")
            s3.put_object(Bucket=f"trail-{account}", Key=f"AWSLogs/{account}/CloudTrail/us-east-1/attack.json.gz",
                          Body=gzip.compress(json.dumps({"Records": made["records"]}).encode()))
            members[name] = made
        create_table(moto.client("dynamodb"), TABLE)
    playbook = tmp_path_factory.mktemp("unattended") / "unattended.yaml"
    playbook.write_text(PLAYBOOK)
    yield World(moto, home, members, playbook)
    moto.reset()


@pytest.fixture(autouse=True)
def _on_the_server(fake_aws_env: None, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", world.moto.url)
    monkeypatch.setenv("STANCH_JOURNAL", world.journal)


def config(world: World, tmp: Path, member: str, *, queue_url: str, pre_approved: bool, notify: str = "") -> Path:
    """A security-account worker's config: the member role, the member's trail, the test playbook."""
    account = MEMBERS[member]
    cfg = tmp / f"{member}.toml"
    cfg.write_text(
        f'[aws]\nregions = ["us-east-1"]\nmax_attempts = 2\n[verify]\niam_settle_seconds = 0\n'
        f'[intake]\ncloudtrail_s3_uri = "s3://trail-{account}/AWSLogs/"\nlookup_events_tps = 100\n'
        f'[routing]\n"{FINDING_TYPE}" = "{world.playbook}"\n[accounts]\nrole_name = "{ROLE}"\n'
        f'[approval]\npre_approved_steps = {json.dumps([GATED] if pre_approved else [])}\n'
        f'[worker]\nqueue_url = "{queue_url}"\nvisibility_timeout = 30\nretry_delay = 0\nwait_seconds = 1\n'
        f'max_messages = 1\n' + notify)
    return cfg


def member_finding(world: World, member: str) -> dict[str, Any]:
    """GuardDuty's finding about the attacker's key in the member account, from the attack's start."""
    made = world.members[member]
    return finding(NAMES["user"], made["seeded"]["attacker_key"]["AccessKeyId"], account=MEMBERS[member],
                   first_seen=made["incident"]["window_start"], finding_id=f"f{MEMBERS[member]}{member}")


def decoded(item: dict[str, Any], name: str) -> Any:
    return json.loads(gzip.decompress(item[name]["B"]))


def incident_items(world: World, incident_id: str) -> dict[str, dict[str, Any]]:
    out = world.moto.client("dynamodb").query(
        TableName=TABLE, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": f"incident#{incident_id}"}})
    return {i["sk"]["S"]: i for i in out["Items"]}


def no_local_journal(*states: Path) -> None:
    for state in states:
        assert not (state / "journal.sqlite3").exists() and not (state / "audit.jsonl").exists(), state


UNTOUCHED = {"key": "Active", "desired": 2, "groups": [NAMES["group"]]}


# ------------------------------------------------------------------ a member account's finding, contained

def test_a_member_accounts_finding_is_contained_there_by_a_worker_on_the_dynamodb_journal(
        world: World, tmp_path: Path) -> None:
    moto, made = world.moto, world.members["contain"]
    account = MEMBERS["contain"]
    main, dlq = queues(moto, name="contain")
    cfg = config(world, tmp_path, "contain", queue_url=main, pre_approved=True)
    moto.client("sqs").send_message(QueueUrl=main, MessageBody=json.dumps(member_finding(world, "contain")))
    state = tmp_path / "machine-a"

    [handled] = finish(worker(cfg, state, "--once", "--wait", "2"))["messages"]
    assert (handled["kind"], handled["fate"], handled["status"]) == ("finding", "delete", "contained"), handled
    run_id, incident_id = handled["run_id"], handled["incident_id"]
    # contained in the member account, through the role; the look-alikes at home are untouched
    assert state_of(made["member"])["key"] == "Inactive" and state_of(made["member"])["desired"] == 0
    assert state_of(world.home) == UNTOUCHED
    assert depth(moto, main) == 0 and depth(moto, dlq) == 0

    # the run, its changes and its audit log are in the table; the worker's machine keeps no journal
    [run] = table_items(moto, run_id, "run")
    assert run["status"]["S"] == "contained" and run["incident_id"]["S"] == incident_id
    result = decoded(run, "result")
    assert result["assumed_role"]["role_arn"] == f"arn:aws:iam::{account}:role/{ROLE}"
    changes = [(i["status"]["S"], decoded(i, "change")) for i in table_items(moto, run_id, "change#")]
    assert {status for status, _ in changes} == {"applied"}
    ops = {(c["operation"], c["target"]) for _, c in changes}
    assert ("iam:UpdateAccessKey", f"arn:aws:iam::{account}:user/{NAMES['user']}") in ops
    assert any(op == "ecs:UpdateService" and f":{account}:service/{NAMES['cluster']}/{NAMES['service']}" in target
               for op, target in ops), ops
    assert all(f":{SECURITY}:" not in target for _, target in ops)
    events = [e["event"] for e in audit_events(moto, run_id)]
    assert events.count("change.applied") == len(changes) and "run.finished" in events
    items = incident_items(world, incident_id)
    assert [sk for sk in items if sk.startswith("run#")] == [f"run#{run['created_at']['S']}#{run_id}"]
    assert "lock" not in items and "claim" not in items  # released: the incident is free
    no_local_journal(state)


# ------------------------------------------------------------------ a gate, approved from anywhere

def test_a_paused_member_run_is_approved_from_an_empty_machine_and_resumed_by_a_worker(
        world: World, tmp_path: Path, hook: Hook) -> None:
    moto, made = world.moto, world.members["approve"]
    account = MEMBERS["approve"]
    main, dlq = queues(moto, name="approve")
    notify = (f'[notify]\nwebhook_url = "{hook.url}"\nwebhook_secret_env = "STANCH_TEST_HOOK_SECRET"\n'
              'run_url = "https://soc.example/runs/{run_id}"\n')
    cfg = config(world, tmp_path, "approve", queue_url=main, pre_approved=False, notify=notify)
    secret = {"STANCH_TEST_HOOK_SECRET": HOOK_SECRET}
    moto.client("sqs").send_message(QueueUrl=main, MessageBody=json.dumps(member_finding(world, "approve")))
    first = tmp_path / "machine-a"

    [paused] = finish(worker(cfg, first, "--once", "--wait", "2", extra_env=secret))["messages"]
    assert (paused["fate"], paused["status"]) == ("delete", "awaiting_approval"), paused
    run_id = paused["run_id"]
    assert state_of(made["member"])["key"] == "Inactive" and state_of(made["member"])["desired"] == 2
    [note] = hook.messages()  # signed with the secret (checked there)
    assert note["event"] == "awaiting_approval" and note["run_id"] == run_id
    [pending] = note["awaiting_approval"]
    assert pending["step"] == GATED and [c["operation"] for c in pending["changes"]] == ["ecs:UpdateService"]
    assert f":{account}:service/" in pending["changes"][0]["target"]

    # a responder on another machine: no state; a config naming only the shared table; the queue
    empty = tmp_path / "responder"
    laptop = tmp_path / "laptop.toml"
    laptop.write_text(f'[journal]\nbackend = "dynamodb"\ntable = "{TABLE}"\nregion = "us-east-1"\n'
                      f'endpoint_url = "{moto.url}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("STANCH_JOURNAL", "STANCH_CONFIG")}
    approved = subprocess.run([*STANCH, "approve", run_id, "--all-pending", "--by", "alice", "--reason", "xmrig",
                               "--queue-url", main, "--config", str(laptop), "-o", "json"], capture_output=True,
                              text=True, timeout=60, check=False,
                              env={**env, "STANCH_STATE_DIR": str(empty), "PYTHONPATH": str(ROOT)})
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["resume_message_id"] and depth(moto, main) == 1
    assert state_of(made["member"])["desired"] == 2  # the approval itself changes nothing in AWS

    third = tmp_path / "machine-c"
    [resumed] = finish(worker(cfg, third, "--once", "--wait", "2", extra_env=secret))["messages"]
    assert (resumed["kind"], resumed["fate"], resumed["status"], resumed["run_id"]) == (
        "resume", "delete", "contained", run_id), resumed
    assert state_of(made["member"]) == {"key": "Inactive", "desired": 0, "groups": [NAMES["group"]]}
    assert state_of(world.home) == UNTOUCHED
    assert [m["event"] for m in hook.messages()] == ["awaiting_approval", "contained"]
    assert depth(moto, main) == 0 and depth(moto, dlq) == 0
    [approval] = table_items(moto, run_id, "approval#")
    assert (approval["step_id"]["S"], approval["by"]["S"]) == (GATED, "alice")
    [run] = table_items(moto, run_id, "run")
    assert run["status"]["S"] == "contained"
    no_local_journal(first, empty, third)
    # the webhook secret and the hook URL's token are nowhere in the table
    for item in moto.client("dynamodb").scan(TableName=TABLE)["Items"]:
        for value in item.values():
            data = value.get("S", "").encode() or value.get("B", b"")
            text = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            assert HOOK_SECRET.encode() not in text and b"hook-url-token" not in text


# ------------------------------------------------------------------ one finding, two machines

def test_the_same_finding_on_two_machines_at_once_starts_one_run(world: World, tmp_path: Path) -> None:
    """Two workers with state directories of their own (two machines) each receive a copy of the
    finding. Each waits, before its first AssumeRole (after it decided the incident needs a run), at a
    gate this test opens one worker at a time: without a claim shared by the machines, both decide,
    the first contains and frees the incident, and the second starts a run of its own."""
    moto, made = world.moto, world.members["race"]
    main, dlq = queues(moto, name="race")
    cfg = config(world, tmp_path, "race", queue_url=main, pre_approved=True)
    body = json.dumps(member_finding(world, "race"))
    moto.client("sqs").send_message_batch(QueueUrl=main, Entries=[{"Id": str(n), "MessageBody": body}
                                                                  for n in range(2)])
    states = [tmp_path / f"machine-{n}" for n in range(2)]
    gates = [tmp_path / f"gate-{n}" for n in range(2)]
    procs = [worker(cfg, states[n], "--once", "--wait", "5", "--max-messages", "1", stall=(10**9, gates[n]),
                    extra_env={"STALLPOINT_BEFORE": "AssumeRole"}) for n in range(2)]
    outs: dict[int, tuple[str, str]] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(p.poll() is not None or g.exists()
                                                      for p, g in zip(procs, gates, strict=True)):
            time.sleep(0.05)
        waiting = [n for n in range(2) if procs[n].poll() is None and gates[n].exists()]
        for n in waiting:  # one at a time: the next only once the one before has finished
            gates[n].with_name(gates[n].name + ".go").touch()
            outs[n] = procs[n].communicate(timeout=90)
        for n, p in enumerate(procs):
            outs.setdefault(n, p.communicate(timeout=60))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for n, p in enumerate(procs):
        assert p.returncode == 0 and "Traceback" not in outs[n][1], outs[n][1][-3000:]
    handled = [m for n in range(2) for m in json.loads(outs[n][0])["messages"]]
    assert len(handled) == 2 and {m["fate"] for m in handled} == {"delete"}, handled
    incident_id = handled[0]["incident_id"]
    runs = [sk for sk in incident_items(world, incident_id) if sk.startswith("run#")]
    assert len(runs) == 1, [(m["run_id"], m["reason"]) for m in handled]
    [ran] = [m for m in handled if m.get("run_id")]
    [refused] = [m for m in handled if not m.get("run_id")]
    assert ran["status"] == "contained"
    assert refused["reason"] == f"duplicate: another worker is taking incident {ran['incident_id']} now"
    assert len(waiting) == 1  # the other never got as far as the member account
    assert runs[0].endswith(f"#{ran['run_id']}") and ran["incident_id"] == incident_id
    assert "claim" not in incident_items(world, incident_id)
    assert state_of(made["member"])["key"] == "Inactive" and state_of(made["member"])["desired"] == 0
    assert state_of(world.home) == UNTOUCHED
    assert depth(moto, main) == 0 and depth(moto, dlq) == 0
    no_local_journal(*states)


def test_an_incident_claim_is_one_holders_lapses_when_its_holder_dies_and_sqlite_keeps_a_file_lock(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.dynamo_journal import DynamoJournal, table_client
    from runner.journal import SqliteJournal

    client = table_client("us-east-1")
    a, b = DynamoJournal(TABLE, client=client), DynamoJournal(TABLE, client=client)
    with a.claim_incident("INC-claim", "host-a/1/x", 1) as first:
        time.sleep(1.3)  # renewed by its heartbeat past `seconds`
        with b.claim_incident("INC-claim", "host-b/2/y", 1) as second:
            assert (first, second) == (True, False)
    with b.claim_incident("INC-claim", "host-b/2/y", 1) as again:
        assert again  # released when the block ended
    monkeypatch.setattr(a, "_renew_claim", lambda *args: None)  # a holder that dies (no heartbeat, no release)
    dead = a.claim_incident("INC-claim", "host-a/1/x", 1)
    assert dead.__enter__()
    with b.claim_incident("INC-claim", "host-b/2/y", 1) as early:
        assert not early
    time.sleep(1.1)
    with b.claim_incident("INC-claim", "host-b/2/y", 30) as late:
        assert late
        dead.__exit__(None, None, None)  # the dead holder's late release leaves the new claim alone
        held = incident_items(world, "INC-claim")["claim"]
        assert held["owner"]["S"] == "host-b/2/y"
    assert "claim" not in incident_items(world, "INC-claim")

    one, other = SqliteJournal(tmp_path / "m"), SqliteJournal(tmp_path / "m")
    with one.claim_incident("INC-claim", "", 1) as mine, other.claim_incident("INC-claim", "", 1) as theirs:
        assert (mine, theirs) == (True, False)
    with other.claim_incident("INC-claim", "", 1) as free:
        assert free
    one.close()
    other.close()
