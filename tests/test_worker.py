"""Queue workers, the Lambda handler, notifications and approvals through the queue, against the
private moto server (SQS with a redrive policy and a DLQ, SNS) and a webhook on 127.0.0.1.

Findings are GuardDuty `UnauthorizedAccess:IAMUser/MaliciousIPCaller` events naming one user's
access key each, routed to a trimmed playbook (discovery, key deactivation and, where a test needs a
gate, an approval-gated quarantine), so twenty runs stay cheap. Every account also holds a decoy
user whose key must stay active."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HOOK_SECRET, ROOT, TRAIL_BUCKET, Hook, MotoServer

ACCOUNT = "123456789012"
FINDING_TYPE = "UnauthorizedAccess:IAMUser/MaliciousIPCaller"
STANCH = [sys.executable, "-m", "runner.cli"]


def playbook(gated: bool, sequential: bool = False) -> str:
    quarantine = ("  - id: quarantine\n    action: iam.quarantine-principals\n"
                  "    with: {users: \"{{ scope.users }}\"}\n")
    if gated:
        quarantine += "    approval: required\n"
    if sequential:
        quarantine += "    needs: [deactivate-keys]\n"
    return ("version: 1\nname: worker-test\ndescription: discovery, keys, and a quarantine\nsteps:\n"
            "  - id: discover-scope\n    action: scope.discover\n"
            "  - id: deactivate-keys\n    action: iam.deactivate-access-keys\n"
            "    with: {access_keys: \"{{ scope.access_keys }}\"}\n" + (quarantine if gated or sequential else ""))


def write_config(tmp: Path, *, queue_url: str = "", gated: bool = False, sequential: bool = False,
                 visibility: int = 30, notify: str = "") -> Path:
    pb = tmp / "worker-playbook.yaml"
    pb.write_text(playbook(gated, sequential))
    cfg = tmp / "worker.toml"
    cfg.write_text(
        f'[aws]\nregions = ["us-east-1"]\nmax_attempts = 2\n[verify]\niam_settle_seconds = 0\n'
        f'[intake]\ncloudtrail_s3_uri = "s3://{TRAIL_BUCKET}/AWSLogs/"\nlookup_events_tps = 100\n'
        f'[routing]\n"{FINDING_TYPE}" = "{pb}"\n'
        f'[worker]\nqueue_url = "{queue_url}"\nvisibility_timeout = {visibility}\nretry_delay = 0\nwait_seconds = 1\n'
        f'max_messages = 2\n' + notify)
    return cfg


def account(moto: MotoServer, users: int) -> dict[str, str]:
    """`users` users with one active key each, a decoy user, and an (empty) organization trail."""
    iam = moto.client("iam")
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=TRAIL_BUCKET)
    s3.put_object(Bucket=TRAIL_BUCKET, Key=f"AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/empty.json",
                  Body=json.dumps({"Records": []}).encode())
    keys = {}
    for name in [*(f"svc-{i:02d}" for i in range(users)), "decoy-ops"]:
        iam.create_user(UserName=name)
        keys[name] = iam.create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
    return keys


def key_status(moto: MotoServer, user: str) -> set[str]:
    return {k["Status"] for k in moto.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]}


def incident_id(user: str) -> str:
    return "GD-" + hashlib.sha256(user.encode()).hexdigest()[:32]


def finding(user: str, key: str, *, count: int = 1, account: str = ACCOUNT, first_seen: str | None = None,
            finding_id: str | None = None) -> dict[str, Any]:
    """A GuardDuty finding event about `user`'s key in `account`; a re-publication has a higher count, a
    later update. The activity starts after the account was seeded (or at `first_seen`): the other users
    are not inside the window (not suspects every run would examine)."""
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    seen = first_seen or now.isoformat().replace("+00:00", "Z")
    fid = finding_id or hashlib.sha256(user.encode()).hexdigest()[:32]
    detail = {
        "schemaVersion": "2.0", "accountId": account, "region": "us-east-1", "partition": "aws", "id": fid,
        "arn": f"arn:aws:guardduty:us-east-1:{account}:detector/d0c1/finding/{fid}", "type": FINDING_TYPE,
        "resource": {"resourceType": "AccessKey", "accessKeyDetails": {
            "accessKeyId": key, "principalId": "AIDA" + fid[:16].upper(), "userType": "IAMUser", "userName": user}},
        "service": {"serviceName": "guardduty", "detectorId": "d0c1", "archived": False, "count": count,
                    "eventFirstSeen": seen,
                    "eventLastSeen": now.isoformat().replace("+00:00", "Z")},
        "severity": 8, "title": f"API called from a known malicious IP by {user}",
        "createdAt": now.isoformat().replace("+00:00", "Z"),
        "updatedAt": (now + timedelta(seconds=count)).isoformat().replace("+00:00", "Z"),
    }
    return {"version": "0", "id": f"evt-{fid[:8]}-{count}", "detail-type": "GuardDuty Finding",
            "source": "aws.guardduty", "account": account, "time": detail["updatedAt"], "region": "us-east-1",
            "resources": [], "detail": detail}


def security_hub_copy(event: dict[str, Any]) -> dict[str, Any]:
    f = event["detail"]
    akd = f["resource"]["accessKeyDetails"]
    asff = {
        "SchemaVersion": "2018-10-08", "Id": f["arn"], "GeneratorId": f["arn"].split("/finding/")[0],
        "ProductArn": "arn:aws:securityhub:us-east-1::product/aws/guardduty", "AwsAccountId": ACCOUNT,
        "Region": "us-east-1", "Types": ["TTPs/Initial Access/UnauthorizedAccess:IAMUser-MaliciousIPCaller"],
        "FirstObservedAt": f["service"]["eventFirstSeen"], "CreatedAt": f["createdAt"], "UpdatedAt": f["updatedAt"],
        "Severity": {"Label": "HIGH", "Normalized": 80}, "Title": f["title"],
        "ProductFields": {"aws/securityhub/ProductName": "GuardDuty", "archived": "false"},
        "Resources": [{"Type": "AwsIamAccessKey", "Id": f"AWS::IAM::AccessKey:{akd['accessKeyId']}",
                       "Region": "us-east-1", "Details": {"AwsIamAccessKey": {
                           "PrincipalType": "IAMUser", "PrincipalName": akd["userName"],
                           "AccessKeyId": akd["accessKeyId"]}}}],
        "RecordState": "ACTIVE", "Workflow": {"Status": "NEW"},
    }
    return {"version": "0", "id": "sh-copy", "detail-type": "Security Hub Findings - Imported",
            "source": "aws.securityhub", "account": ACCOUNT, "time": f["updatedAt"], "region": "us-east-1",
            "resources": [asff["Id"]], "detail": {"findings": [asff]}}


def queues(moto: MotoServer, max_receives: int = 2, name: str = "findings") -> tuple[str, str]:
    sqs = moto.client("sqs")
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    main = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)})})["QueueUrl"]
    return main, dlq


def depth(moto: MotoServer, url: str) -> int:
    attrs = moto.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def env(cfg: Path, state: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "STANCH_CONFIG": str(cfg), "STANCH_STATE_DIR": str(state),
            "PYTHONPATH": str(ROOT), **extra}


def worker(cfg: Path, state: Path, *args: str, stall: tuple[int, Path] | None = None,
           extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    prefix = [sys.executable, "-m", "tests.stallpoint", str(stall[0]), str(stall[1])] if stall else STANCH
    return subprocess.Popen([*prefix, "worker", "--config", str(cfg), "-o", "json", *args], text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env(cfg, state, **(extra_env or {})))


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, errs = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, errs[-3000:]
    assert "Traceback" not in errs
    return dict(json.loads(out))


def audit(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]


def once_per_change(state: Path) -> Counter[tuple[str, str]]:
    """Each change (run, digest) recorded applied exactly once, whichever process applied it. (A change a
    killed process had started but never got to AWS is sent again by the resume: still applied once.)"""
    events = audit(state)
    started = Counter((e["run_id"], e["digest"]) for e in events if e["event"] == "change.started")
    applied = Counter((e["run_id"], e["digest"]) for e in events if e["event"] == "change.applied")
    assert applied and max(applied.values()) == 1, [k for k, v in applied.items() if v > 1]
    assert set(applied) == set(started)
    return applied


def runs(state: Path) -> list[dict[str, Any]]:
    out = subprocess.run([*STANCH, "status", "-o", "json", "--state-dir", str(state)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return list(json.loads(out.stdout))


# ------------------------------------------------------------------ one finding, one worker

def test_a_queued_guardduty_finding_is_contained_by_a_worker_and_its_message_deleted(
        moto_server: MotoServer, tmp_path: Path) -> None:
    keys = account(moto_server, 1)
    main, dlq = queues(moto_server)
    cfg = write_config(tmp_path, queue_url=main)
    state = tmp_path / "state"
    moto_server.client("sqs").send_message(QueueUrl=main, MessageBody=json.dumps(finding("svc-00", keys["svc-00"])))
    doc = finish(worker(cfg, state, "--once", "--wait", "2"))
    [handled] = doc["messages"]
    assert handled["fate"] == "delete" and handled["status"] == "contained" and handled["kind"] == "finding"
    assert handled["incident_id"].startswith("GD-")
    assert key_status(moto_server, "svc-00") == {"Inactive"}
    assert key_status(moto_server, "decoy-ops") == {"Active"}
    assert depth(moto_server, main) == 0 and depth(moto_server, dlq) == 0
    [run] = runs(state)
    assert run["run_id"] == handled["run_id"] and run["status"] == "contained"


# ------------------------------------------------------------------ many findings, four workers

def test_four_workers_run_twenty_incidents_once_each_refuse_duplicates_and_dead_letter_poison(
        moto_server: MotoServer, tmp_path: Path) -> None:
    keys = account(moto_server, 20)
    main, dlq = queues(moto_server, max_receives=2)
    cfg = write_config(tmp_path, queue_url=main)
    state = tmp_path / "state"
    events = [finding(f"svc-{i:02d}", keys[f"svc-{i:02d}"]) for i in range(20)]
    duplicates = [
        finding("svc-00", keys["svc-00"], count=2),  # GuardDuty re-publishes: count+1, later updatedAt
        security_hub_copy(events[1]),               # its Security Hub copy
        copy.deepcopy(events[2]),                   # SQS at-least-once: the same body again
    ]
    sqs = moto_server.client("sqs")
    bodies = [json.dumps(e) for e in [*events, *duplicates]] + ["not json {"]
    for i in range(0, len(bodies), 10):
        sqs.send_message_batch(QueueUrl=main, Entries=[{"Id": str(n), "MessageBody": b}
                                                       for n, b in enumerate(bodies[i:i + 10])])
    t0 = time.monotonic()
    procs = [worker(cfg, state, "--wait", "1") for _ in range(4)]
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and (depth(moto_server, main) or depth(moto_server, dlq) < 1):
            time.sleep(0.3)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)  # idle in a long poll: they stop at once
    docs = [finish(p, timeout=60) for p in procs]
    elapsed = time.monotonic() - t0
    handled = [m for d in docs for m in d["messages"]]
    assert all(d["stopped"] for d in docs)

    incident_runs = runs(state)
    assert len(incident_runs) == 20 and len({r["incident_id"] for r in incident_runs}) == 20
    assert {r["status"] for r in incident_runs} == {"contained"}
    applied = once_per_change(state)
    assert len(applied) == 20  # one key per incident, each deactivated once
    for i in range(20):
        assert key_status(moto_server, f"svc-{i:02d}") == {"Inactive"}
    assert key_status(moto_server, "decoy-ops") == {"Active"}

    dups = [m for m in handled if m.get("duplicate")]
    started = [m for m in handled if m["kind"] == "finding" and not m.get("duplicate")]
    done = [m for m in started if m["fate"] == "delete"]
    assert len(done) == 20 and len({m["incident_id"] for m in done}) == 20
    # on this loaded machine a moto call may fail before a run is recorded: that delivery comes back
    assert all(m["fate"] == "retry" and m["reason"].startswith("not finished") for m in started
               if m["fate"] != "delete"), [(m["fate"], m["reason"][:200]) for m in started if m["fate"] != "delete"]
    assert len(dups) == 3 and {m["fate"] for m in dups} == {"delete"}
    assert {m["incident_id"] for m in dups} == {incident_id(f"svc-{i:02d}") for i in range(3)}
    poison = [m for m in handled if m["kind"] == "poison"]
    assert poison and {m["fate"] for m in poison} == {"retry"} and "not JSON" in poison[0]["reason"], [
        (m["kind"], m["fate"], m["reason"][:80]) for m in handled if m["kind"] != "finding"]
    [dead] = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1)["Messages"]
    assert dead["Body"] == "not json {"
    assert depth(moto_server, main) == 0
    print(f"20 incidents + 3 duplicates + 1 poison, 4 workers: {elapsed:.1f} s")


# ------------------------------------------------------------------ a worker killed mid-apply

def test_a_worker_killed_mid_apply_leaves_its_message_to_another_that_resumes_the_run(
        moto_server: MotoServer, tmp_path: Path) -> None:
    keys = account(moto_server, 1)
    iam = moto_server.client("iam")
    iam.create_access_key(UserName="svc-00")  # a second key: one change left to do after the kill
    main, _ = queues(moto_server, max_receives=5)
    cfg = write_config(tmp_path, queue_url=main, visibility=2, sequential=True)
    state = tmp_path / "state"
    moto_server.client("sqs").send_message(QueueUrl=main, MessageBody=json.dumps(finding("svc-00", keys["svc-00"])))
    stalled = tmp_path / "stalled"
    first = worker(cfg, state, "--once", "--wait", "2", stall=(1, stalled), extra_env={"STALLPOINT_IGNORE": "sqs"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None and not stalled.exists():
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL and stalled.exists(), "the worker finished before it was killed"
    [run] = runs(state)
    assert run["status"] == "applying"
    time.sleep(2.5)  # the visibility timeout of the last heartbeat runs out
    doc = finish(worker(cfg, state, "--once", "--wait", "5"))
    [handled] = doc["messages"]
    assert handled["fate"] == "delete" and handled["status"] == "contained"
    assert handled["run_id"] == run["run_id"] and "resumed interrupted run" in handled["reason"]
    assert handled.get("receive_count") == 2
    once_per_change(state)
    # the key deactivation the killed worker had sent is recognised from the re-plan, never sent again
    confirmed = [e["event"] for e in audit(state) if e.get("confirmed_by") == "replan"]
    assert confirmed and set(confirmed) == {"change.applied"}
    assert key_status(moto_server, "svc-00") == {"Inactive"}
    assert key_status(moto_server, "decoy-ops") == {"Active"}
    assert len(runs(state)) == 1


def test_sigterm_finishes_the_change_in_flight_and_another_worker_finishes_the_run(
        moto_server: MotoServer, tmp_path: Path) -> None:
    keys = account(moto_server, 1)
    main, _ = queues(moto_server, max_receives=5)
    cfg = write_config(tmp_path, queue_url=main, sequential=True)
    state = tmp_path / "state"
    moto_server.client("sqs").send_message(QueueUrl=main, MessageBody=json.dumps(finding("svc-00", keys["svc-00"])))
    slowed = tmp_path / "slowed"
    first = worker(cfg, state, "--once", "--wait", "2", stall=(1, slowed),
                   extra_env={"STALLPOINT_IGNORE": "sqs", "STALLPOINT_SLEEP": "1.5"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None and not slowed.exists():
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)  # during the key deactivation: it completes, the quarantine never starts
    doc = finish(first)
    [handled] = doc["messages"]
    assert doc["stopped"] and handled["fate"] == "release", handled
    [run] = runs(state)
    assert run["status"] in ("applying", "planning")
    assert key_status(moto_server, "svc-00") == {"Inactive"}
    assert moto_server.client("iam").list_user_policies(UserName="svc-00")["PolicyNames"] == []
    doc = finish(worker(cfg, state, "--once", "--wait", "2"))  # released at once: no timeout to wait for
    [handled] = doc["messages"]
    assert handled["status"] == "contained" and handled["run_id"] == run["run_id"]
    assert moto_server.client("iam").list_user_policies(UserName="svc-00")["PolicyNames"] == ["stanch-quarantine"]
    once_per_change(state)


# ------------------------------------------------------------------ approval from anywhere

def test_a_gated_run_notifies_its_plan_and_an_approval_from_another_process_resumes_it_through_the_queue(
        moto_server: MotoServer, tmp_path: Path, hook: Hook) -> None:
    keys = account(moto_server, 1)
    main, _ = queues(moto_server)
    sqs, sns = moto_server.client("sqs"), moto_server.client("sns")
    topic = sns.create_topic(Name="stanch-runs")["TopicArn"]
    inbox = sqs.create_queue(QueueName="soc-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"})
    notify = (f'[notify]\nsns_topic_arn = "{topic}"\nwebhook_url = "{hook.url}"\n'
              f'webhook_secret_env = "STANCH_TEST_HOOK_SECRET"\nrun_url = "https://soc.example/runs/{{run_id}}"\n')
    cfg = write_config(tmp_path, queue_url=main, gated=True, notify=notify)
    state = tmp_path / "state"
    secret_env = {"STANCH_TEST_HOOK_SECRET": HOOK_SECRET}
    sqs.send_message(QueueUrl=main, MessageBody=json.dumps(finding("svc-00", keys["svc-00"])))

    [paused] = finish(worker(cfg, state, "--once", "--wait", "2", extra_env=secret_env))["messages"]
    assert paused["fate"] == "delete" and paused["status"] == "awaiting_approval"
    run_id = paused["run_id"]
    [note] = hook.messages()
    assert note["event"] == "awaiting_approval" and note["run_id"] == run_id
    assert note["run_url"] == f"https://soc.example/runs/{run_id}"
    [pending] = note["awaiting_approval"]
    assert pending["step"] == "quarantine"
    assert [c["operation"] for c in pending["changes"]] == ["iam:PutUserPolicy"]
    assert pending["changes"][0]["target"].endswith(":user/svc-00")
    assert note["approve_command"].startswith(f"stanch approve {run_id} --step quarantine")
    assert moto_server.client("iam").list_user_policies(UserName="svc-00")["PolicyNames"] == []
    via_sns = json.loads(sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=1)["Messages"][0]["Body"])
    assert via_sns["event"] == "awaiting_approval" and via_sns["run_id"] == run_id

    # a responder elsewhere: another process, the shared journal, the queue from the config
    approved = subprocess.run([*STANCH, "approve", run_id, "--step", "quarantine", "--by", "alice", "--reason",
                               "confirmed", "--config", str(cfg), "-o", "json"], capture_output=True, text=True,
                              env=env(cfg, state), timeout=60, check=False)
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["resume_message_id"]
    [resumed] = finish(worker(cfg, state, "--once", "--wait", "2", extra_env=secret_env))["messages"]
    assert resumed["kind"] == "resume" and resumed["status"] == "contained" and resumed["run_id"] == run_id
    assert moto_server.client("iam").list_user_policies(UserName="svc-00")["PolicyNames"] == ["stanch-quarantine"]
    assert [m["event"] for m in hook.messages()] == ["awaiting_approval", "contained"]
    assert depth(moto_server, main) == 0
    # the secret and the hook URL's token reach neither the journal, the audit log nor the run document
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert HOOK_SECRET.encode() not in data and b"hook-url-token" not in data


# ------------------------------------------------------------------ Lambda

def test_lambda_takes_an_eventbridge_event_and_an_sqs_batch_failing_only_the_bad_record(
        moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.lambda_handler import NotDone, handler

    keys = account(moto_server, 3)
    # notifications that cannot be delivered (no such topic, nothing listening) never fail a run
    notify = (f'[notify]\nsns_topic_arn = "arn:aws:sns:us-east-1:{ACCOUNT}:no-such-topic"\n'
              'webhook_url = "http://127.0.0.1:9/hook"\nwebhook_secret_env = "STANCH_TEST_HOOK_SECRET"\n')
    cfg = write_config(tmp_path, notify=notify)
    monkeypatch.setenv("STANCH_CONFIG", str(cfg))
    monkeypatch.setenv("STANCH_TEST_HOOK_SECRET", HOOK_SECRET)
    state = Path(os.environ["STANCH_STATE_DIR"])

    direct = handler(finding("svc-00", keys["svc-00"]), None)
    assert direct["fate"] == "delete" and direct["status"] == "contained"
    assert key_status(moto_server, "svc-00") == {"Inactive"}
    doc = runs(state)[0]
    status = subprocess.run([*STANCH, "status", doc["run_id"], "-o", "json", "--state-dir", str(state)],
                            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    notes = json.loads(status.stdout)["notifications"]
    assert {(n["channel"], n["status"]) for n in notes} == {("sns", "failed"), ("webhook", "failed")}
    assert any(e["event"] == "notify.failed" for e in audit(state))

    batch = {"Records": [
        {"messageId": "m-good", "eventSource": "aws:sqs", "body": json.dumps(finding("svc-01", keys["svc-01"]))},
        {"messageId": "m-bad", "eventSource": "aws:sqs", "body": '{"detail-type": "GuardDuty Finding", "detail": {}}'},
        {"messageId": "m-dup", "eventSource": "aws:sqs", "body": json.dumps(security_hub_copy(
            finding("svc-00", keys["svc-00"])))},
        {"messageId": "m-other", "eventSource": "aws:sqs", "body": json.dumps(finding("svc-02", keys["svc-02"]))},
    ]}
    assert handler(batch, None) == {"batchItemFailures": [{"itemIdentifier": "m-bad"}]}
    assert key_status(moto_server, "svc-01") == {"Inactive"} and key_status(moto_server, "svc-02") == {"Inactive"}
    assert key_status(moto_server, "decoy-ops") == {"Active"}
    assert len(runs(state)) == 3  # the Security Hub copy of svc-00's finding started nothing
    with pytest.raises(NotDone, match="bad input"):
        handler({"detail-type": "GuardDuty Finding", "source": "aws.guardduty", "detail": {"id": "x"}}, None)
    assert HOOK_SECRET not in (state / "audit.jsonl").read_text()


def test_lambda_near_its_timeout_hands_the_run_on_with_a_resume_request_not_the_visibility_timeout(
        moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.client import BaseClient
    from botocore.exceptions import ClientError

    from runner import lambda_handler
    from runner.lambda_handler import handler

    keys = account(moto_server, 1)
    main, _ = queues(moto_server, max_receives=3)
    other, _ = queues(moto_server, name="decoy-findings")
    cfg = write_config(tmp_path, sequential=True)  # no [worker] queue_url: the record's ARN names the queue
    monkeypatch.setenv("STANCH_CONFIG", str(cfg))
    state = Path(os.environ["STANCH_STATE_DIR"])
    sqs = moto_server.client("sqs")
    arn = sqs.get_queue_attributes(QueueUrl=main, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    original = BaseClient._make_api_call
    refuse_send = False

    def slow_writes(self: Any, op: str, params: dict[str, Any]) -> Any:
        if op == "UpdateAccessKey":
            time.sleep(1.0)  # the function's time runs out during the key deactivation
        if op == "SendMessage" and refuse_send:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, op)
        return original(self, op, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", slow_writes)
    monkeypatch.setattr(lambda_handler, "STOP_MARGIN_S", 0.0)

    class Ending:  # 0.3 s left: the run stops cleanly after the change in flight
        def get_remaining_time_in_millis(self) -> int:
            return 300

    def record(mid: str, body: str, handle: str = "rh") -> dict[str, Any]:
        return {"messageId": mid, "eventSource": "aws:sqs", "eventSourceARN": arn, "receiptHandle": handle,
                "body": body}

    body = json.dumps(finding("svc-00", keys["svc-00"]))
    assert handler({"Records": [record("m-1", body)]}, Ending()) == {"batchItemFailures": []}
    [run] = runs(state)
    assert run["status"] in ("applying", "planning")
    assert moto_server.client("iam").list_user_policies(UserName="svc-00")["PolicyNames"] == []
    msgs = sqs.receive_message(QueueUrl=main, MaxNumberOfMessages=10, WaitTimeSeconds=0)["Messages"]
    [resume] = [json.loads(m["Body"]) for m in msgs]
    assert resume["stanch"] == "resume" and resume["run_id"] == run["run_id"]
    assert depth(moto_server, other) == 0  # only the record's own queue
    sqs.delete_message(QueueUrl=main, ReceiptHandle=msgs[0]["ReceiptHandle"])
    # the next invocation takes the request and finishes the same run
    assert handler({"Records": [record("m-2", json.dumps(resume))]}, None) == {"batchItemFailures": []}
    [done] = runs(state)
    assert done["run_id"] == run["run_id"] and done["status"] == "contained"
    assert moto_server.client("iam").list_user_policies(UserName="svc-00")["PolicyNames"] == ["stanch-quarantine"]
    assert key_status(moto_server, "decoy-ops") == {"Active"}

    # the request cannot be sent: the record fails, and is visible again at once (not after 5400 s)
    moto_server.client("iam").create_user(UserName="svc-01")
    key = moto_server.client("iam").create_access_key(UserName="svc-01")["AccessKey"]["AccessKeyId"]
    sqs.send_message(QueueUrl=main, MessageBody=json.dumps(finding("svc-01", key)))
    [held] = sqs.receive_message(QueueUrl=main, VisibilityTimeout=600, AttributeNames=["All"])["Messages"]
    refuse_send = True
    out = handler({"Records": [record("m-3", held["Body"], held["ReceiptHandle"])]}, Ending())
    assert out == {"batchItemFailures": [{"itemIdentifier": "m-3"}]}
    [again] = sqs.receive_message(QueueUrl=main, WaitTimeSeconds=1)["Messages"]
    assert again["Body"] == held["Body"]


# ------------------------------------------------------------------ bad input

def test_worker_and_notify_bad_input_is_exit_2_without_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from runner.cli import app
    from runner.worker import handle_body

    runner = CliRunner()
    no_queue = runner.invoke(app, ["worker", "--once"])
    assert no_queue.exit_code == 2 and "--queue-url" in no_queue.stderr
    not_a_url = runner.invoke(app, ["worker", "--queue-url", "findings", "--once"])
    assert not_a_url.exit_code == 2 and "not a queue URL" in not_a_url.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[notify]\nwebhook_url = "ftp://example.com/x"\non = ["contained", "finished"]\n'
                   '[worker]\nvisibility_timeout = 1\nwebhok = 1\n')
    result = runner.invoke(app, ["worker", "--queue-url", "https://sqs.us-east-1.amazonaws.com/1/q", "--config",
                                 str(bad)])
    assert result.exit_code == 2, result.output
    for path in ("notify.webhook_url", "notify.on[1]", "worker.visibility_timeout", "worker.webhok"):
        assert path in result.stderr
    assert "Traceback" not in result.stderr
    # messages that are not a finding are refused before anything reads or writes AWS
    ctx_state = tmp_path / "state"
    from runner.worker import Context

    for body in ("", "[1, 2]", '{"stanch": "resume", "run_id": "../../etc"}', '{"stanch": "delete-everything"}'):
        handled = handle_body(body, Context(state=ctx_state))
        assert (handled.fate, handled.kind) == ("retry", "poison"), body
