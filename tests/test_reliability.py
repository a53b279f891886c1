"""Reliability under faults: the fault proxy itself, retries (reads harder than writes), every AWS
error at the CLI boundary, the run lock on resume, evidence reads retried per call, and a whole
containment through 50% throttling. Short and deterministic: fixed seeds, per-operation rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, ReadTimeoutError
from botocore.stub import Stubber
from typer.testing import CliRunner

from runner.aws import AwsSession
from runner.cli import app
from runner.config import AwsSection
from runner.drill import seed
from tests.conftest import MotoServer, publish_trail, write_json
from tests.faultproxy import FaultProxy

STANCH = [sys.executable, "-m", "runner.cli"]
NAMES = {"user": "svc-reporting", "group": "bi-team", "cluster": "warehouse", "service": "etl-loader",
         "image": "xmrig/xmrig:6.22"}


def fast(**over: Any) -> AwsSection:
    return AwsSection(**{"connect_timeout": 2, "read_timeout": 2, **over})


def raw_client(service: str, url: str) -> Any:
    """A botocore client with retries off: what the proxy answers, as botocore parses it."""
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                         region_name="eu-central-1").client(
        service, endpoint_url=url, config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 1}))


# ------------------------------------------------------------------ the proxy

def test_proxy_throttles_in_each_service_protocol(moto_server: MotoServer) -> None:
    expected = {("ecs", "list_clusters"): "ThrottlingException", ("iam", "list_users"): "Throttling",
                ("sts", "get_caller_identity"): "Throttling", ("ec2", "describe_vpcs"): "RequestLimitExceeded"}
    with FaultProxy(moto_server.url, rules={"ListClusters": "throttle:1", "ListUsers": "throttle:1",
                                            "GetCallerIdentity": "throttle:1", "DescribeVpcs": "throttle:1"}) as proxy:
        for (service, op), code in expected.items():
            client = raw_client(service, proxy.url)
            with pytest.raises(ClientError) as info:
                getattr(client, op)()
            assert info.value.response["Error"]["Code"] == code
            getattr(client, op)()  # the rule was for the first call only
        assert proxy.counts["throttle"] == 4
        assert proxy.forwarded["ListUsers"] == 1


def test_proxy_resets_times_out_and_fails_with_5xx_and_botocore_retries_each(moto_server: MotoServer) -> None:
    rules = {"ListUsers": "reset:2", "ListClusters": "timeout:1", "DescribeVpcs": "error5xx:2"}
    with FaultProxy(moto_server.url, rules=rules, hang_s=5) as proxy:
        aws = AwsSession(region="eu-central-1", endpoint_url=proxy.url, settings=fast(read_timeout=2))
        assert aws.client("iam").list_users()["Users"] == []
        assert aws.client("ecs").list_clusters()["clusterArns"] == []
        assert aws.client("ec2").describe_vpcs()["Vpcs"]
        assert proxy.counts == {"throttle": 0, "error5xx": 2, "reset": 2, "timeout": 1}
        assert proxy.forwarded["ListClusters"] >= 2  # the timed-out call reached the server, then was retried
    with FaultProxy(moto_server.url, rules={"ListClusters": "timeout"}, hang_s=5) as proxy:
        client = boto3.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name="eu-central-1").client(
            "ecs", endpoint_url=proxy.url, config=BotoConfig(read_timeout=0.5, retries={"total_max_attempts": 1}))
        with pytest.raises(ReadTimeoutError):
            client.list_clusters()


def test_random_faults_are_repeatable_with_a_seed(moto_server: MotoServer) -> None:
    seen = []
    for _ in range(2):
        with FaultProxy(moto_server.url, throttle=0.3, error5xx=0.1, seed=42) as proxy:
            client = raw_client("iam", proxy.url)
            outcome = []
            for _ in range(30):
                try:
                    client.list_users()
                    outcome.append("ok")
                except ClientError as exc:
                    outcome.append(exc.response["Error"]["Code"])
            seen.append((outcome, dict(proxy.counts)))
    assert seen[0] == seen[1]
    assert seen[0][1]["throttle"] > 0 and seen[0][1]["error5xx"] > 0


def test_proxy_only_talks_to_this_machine() -> None:
    for upstream in ("https://iam.amazonaws.com", "http://10.0.0.1:5000", "http://example.com:80"):
        with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
            FaultProxy(upstream)


# ------------------------------------------------------------------ retry budgets

def test_reads_retry_harder_than_writes(moto_server: MotoServer) -> None:
    with FaultProxy(moto_server.url, rules={"ListUsers": "throttle:5", "CreateUser": "throttle:5"}) as proxy:
        aws = AwsSession(region="eu-central-1", endpoint_url=proxy.url,
                         settings=fast(max_attempts=3, read_max_attempts=8))
        # botocore's backoff sleeps are real; patch them out so the test stays fast
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, ctx: 0)
            assert aws.client("iam").list_users()["Users"] == []
            with pytest.raises(ClientError) as info:
                aws.client("iam").create_user(UserName="never-created")
    assert info.value.response["Error"]["Code"] == "Throttling"
    assert proxy.forwarded["ListUsers"] == 1 and proxy.forwarded["CreateUser"] == 0
    assert proxy.counts["throttle"] == 5 + 3  # five reads refused, then three write attempts


# ------------------------------------------------------------------ the CLI boundary

def run_cli(incident: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["run", str(incident), "--approve-all", *extra])


@pytest.fixture
def seeded_incident(moto_server: MotoServer, tmp_path: Path) -> Path:
    data = seed(boto3.Session(region_name="us-east-1"), NAMES)
    publish_trail(boto3.Session(region_name="us-east-1"), data)  # the moto_server config reads this bucket
    return write_json(tmp_path / "incident.json", data["incident"])


def fast_config(tmp_path: Path, **aws: Any) -> Path:
    lines = "\n".join(f"{k} = {v}" for k, v in {"connect_timeout": 1, "read_timeout": 1, **aws}.items())
    path = tmp_path / "fast.toml"
    path.write_text(f"[aws]\n{lines}\n")
    return path


@pytest.mark.parametrize(("rule", "code", "words"), [
    ("throttle", 1, "Throttling"),
    ("timeout", 1, "not answering"),
    ("reset", 1, "AWS call failed"),
])
def test_identity_check_failures_end_with_a_message_not_a_traceback(
        seeded_incident: Path, moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        rule: str, code: int, words: str) -> None:
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, ctx: 0)
    config = fast_config(tmp_path, max_attempts=1, read_max_attempts=2)
    with FaultProxy(moto_server.url, rules={"GetCallerIdentity": rule}, hang_s=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        out = run_cli(seeded_incident, "--config", str(config))
    assert out.exit_code == code, out.output
    assert words in out.output and "Traceback" not in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)
    assert not (tmp_path / "state" / "journal.sqlite3").exists()  # nothing recorded, nothing changed


def test_rejected_credentials_are_bad_input_and_denied_calls_are_refusals() -> None:
    from runner.cli import aws_error_message

    def error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}}, "GetCallerIdentity")

    assert aws_error_message(error("InvalidClientTokenId"))[1] == 2
    assert aws_error_message(error("ExpiredToken"))[1] == 2
    assert aws_error_message(error("AccessDenied"))[1] == 4
    assert aws_error_message(error("InternalFailure"))[1] == 1


def test_nothing_listening_and_no_credentials_are_messages(seeded_incident: Path, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    config = fast_config(tmp_path, max_attempts=1, read_max_attempts=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing answers
    out = run_cli(seeded_incident, "--config", str(config))
    assert out.exit_code == 1 and "unreachable" in out.output and "Traceback" not in out.output
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    out = run_cli(seeded_incident, "--config", str(config))
    assert out.exit_code == 2 and "no AWS credentials" in out.output


# ------------------------------------------------------------------ the run lock

def paused_run(incident: Path, state: Path) -> str:
    """A run paused at its gated steps (in this process: the resumes are what is under test)."""
    first = CliRunner().invoke(app, ["run", str(incident), "--output", "json", "--state-dir", str(state)])
    assert first.exit_code == 3, first.output[-2000:]
    return str(json.loads(first.stdout)["run_id"])


def applied_per_change(state: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (state / "audit.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "change.applied":
            counts[rec["digest"]] = counts.get(rec["digest"], 0) + 1
    return counts


def test_a_resume_is_refused_while_another_process_executes_the_run(seeded_incident: Path, tmp_path: Path) -> None:
    from runner.journal import SqliteJournal

    state = tmp_path / "state"
    run_id = paused_run(seeded_incident, state)
    journal = SqliteJournal(state)
    try:
        with journal.hold(run_id):  # as a `stanch resume` in another process does while it works
            out = CliRunner().invoke(app, ["resume", run_id, "--approve-all", "--state-dir", str(state)])
            assert out.exit_code == 4, out.output
            assert "being executed by another stanch process" in out.output
    finally:
        journal.close()
    assert CliRunner().invoke(app, ["resume", run_id, "--approve-all", "--state-dir", str(state)]).exit_code == 0


def test_two_concurrent_resumes_never_send_a_change_twice(seeded_incident: Path, tmp_path: Path,
                                                          moto_server: MotoServer) -> None:
    state = tmp_path / "state"
    run_id = paused_run(seeded_incident, state)
    with FaultProxy(moto_server.url, latency_ms=20) as proxy:  # slow enough for the two to overlap
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
        procs = [subprocess.Popen([*STANCH, "resume", run_id, "--approve-all", "--state-dir", str(state)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL) for _ in range(2)]
        results = [(p.wait(300), p.communicate()[1]) for p in procs]
        sent = dict(proxy.forwarded)
    codes = sorted(code for code, _ in results)
    assert 0 in codes, results
    assert codes in ([0, 1], [0, 4]), results  # the other was refused, or found the run finished
    assert all("Traceback" not in err for _, err in results)
    assert all(n == 1 for n in applied_per_change(state).values())
    assert sent.get("UpdateService", 0) == 1 and sent.get("StopTask", 0) == 2  # each sent once


# ------------------------------------------------------------------ evidence reads

def test_lookup_events_is_retried_per_call_and_one_failure_does_not_abandon_the_rest(
        aws: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    from actions import evidence
    from tests.awshelp import context

    monkeypatch.setattr(evidence, "_sleep", lambda s: None)
    ctx = context(aws)
    bundle = evidence.Bundle(Path(os.environ["STANCH_STATE_DIR"]) / "bundle")
    scope = {"access_keys": [{"id": "AKIAONE"}, {"id": "AKIATWO"}], "users": [{"name": "u1"}]}
    stub = Stubber(ctx.aws.client("cloudtrail"))
    event = {"EventId": "e1", "EventName": "CreateUser", "CloudTrailEvent": "{\"eventName\": \"CreateUser\"}"}
    stub.add_client_error("lookup_events", "ThrottlingException", http_status_code=400)  # AKIAONE, try 1
    stub.add_response("lookup_events", {"Events": [event], "NextToken": "page2"})          # AKIAONE, page 1
    stub.add_client_error("lookup_events", "RequestLimitExceeded", http_status_code=400)  # page 2, try 1
    stub.add_response("lookup_events", {"Events": [{**event, "EventId": "e2"}]})           # page 2, try 2
    for _ in range(evidence.EVIDENCE_READ_TRIES):                                          # AKIATWO: never answers
        stub.add_client_error("lookup_events", "ThrottlingException", http_status_code=400)
    stub.add_response("lookup_events", {"Events": [{**event, "EventId": "e3"}]})           # u1
    with stub:
        evidence._cloudtrail(ctx, scope, bundle)
        stub.assert_no_pending_responses()
    doc = json.loads((bundle.root / "cloudtrail/lookup-events.json").read_text())
    assert [e["EventId"] for e in doc["events"]] == ["e1", "e2", "e3"]
    assert [g["reason"].split(":")[0] for g in bundle.gaps] == ["AccessKeyId=AKIATWO"]


# ------------------------------------------------------------------ a whole containment under faults

def test_containment_survives_half_the_calls_throttled(seeded_incident: Path, moto_server: MotoServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call has a 1 in 2 chance of being throttled (fixed seed). botocore's backoff pauses are
    skipped here (bench/soak.py keeps them); the attempt budgets are the real ones."""
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, ctx: 0)
    with FaultProxy(moto_server.url, throttle=0.5, seed=2026) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        out = CliRunner().invoke(app, ["run", str(seeded_incident), "--approve-all", "--output", "json"])
        throttled = proxy.counts["throttle"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    assert out.exit_code in (0, 5), out.output[-3000:]
    assert out.exception is None or isinstance(out.exception, SystemExit)
    assert json.loads(out.stdout)["status"] in ("contained", "needs_manual_action")
    assert throttled > 50
    session = boto3.Session(region_name="us-east-1")
    iam, ecs = session.client("iam"), session.client("ecs")  # moto directly, not through the proxy
    keys = iam.list_access_keys(UserName=NAMES["user"])["AccessKeyMetadata"]
    assert keys and all(k["Status"] == "Inactive" for k in keys)
    svc = ecs.describe_services(cluster=NAMES["cluster"], services=[NAMES["service"]])["services"][0]
    assert svc["desiredCount"] == 0
    assert ecs.list_tasks(cluster=NAMES["cluster"], desiredStatus="RUNNING")["taskArns"] == []
    alice = iam.list_access_keys(UserName="alice")["AccessKeyMetadata"]
    assert all(k["Status"] == "Active" for k in alice)  # the look-alike is untouched


# ------------------------------------------------------------------ bounded YAML

def test_yaml_alias_bomb_under_a_steps_with_is_refused_before_expansion(tmp_path: Path) -> None:
    """9**10 values once expanded: refused from the node graph, never built (no timing assert: an
    expansion would not finish at all)."""
    levels = "".join(f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("version: 1\nname: bomb\nsteps:\n  - id: keys\n    action: iam.deactivate-access-keys\n"
                    "    with:\n      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + levels)
    deep = tmp_path / "deep.yaml"
    deep.write_text("version: 1\nname: deep\nsteps: " + "[" * 200 + "]" * 200 + "\n")
    for path, words in ((bomb, "aliases are resolved"), (deep, "nested deeper")):
        out = CliRunner().invoke(app, ["playbook", "validate", str(path)])
        assert out.exit_code == 2 and words in out.output, out.output
    assert CliRunner().invoke(app, ["playbook", "validate", "cryptojacking-root-key"]).exit_code == 0


# ------------------------------------------------------------------ kill -9 at a change boundary

@pytest.mark.parametrize(("nth", "phase"), [(2, "before"), (3, "after")])
def test_kill_at_a_change_boundary_then_resume_applies_each_change_once(
        seeded_incident: Path, moto_server: MotoServer, tmp_path: Path, nth: int, phase: str) -> None:
    """The proxy kills the run exactly when its nth write is about to reach AWS ("before") or has
    reached it without the answer getting back ("after"): driven by the requests, not by timing."""
    import signal

    state = tmp_path / "state"
    proc: list[subprocess.Popen[str]] = []
    killed = threading.Event()

    def kill(operation: str, number: int, when: str) -> None:
        if number == nth and when == phase and not killed.is_set():
            killed.set()
            os.kill(proc[0].pid, signal.SIGKILL)
            if when == "before":
                raise ConnectionAbortedError("killed before the write reached AWS")  # never forwarded

    with FaultProxy(moto_server.url, on_write=kill) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
        proc.append(subprocess.Popen([*STANCH, "run", str(seeded_incident), "--approve-all", "--state-dir",
                                      str(state)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, stdin=subprocess.DEVNULL))
        _, err = proc[0].communicate(timeout=300)
        assert killed.is_set() and proc[0].returncode == -signal.SIGKILL, err[-3000:]
        run_id = json.loads((state / "audit.jsonl").read_text().splitlines()[0])["run_id"]
        with pytest.MonkeyPatch.context() as mp:  # the resume is a new invocation in this process
            mp.setenv("AWS_ENDPOINT_URL", proxy.url)
            resumed = CliRunner().invoke(app, ["resume", run_id, "--approve-all", "--state-dir", str(state)])
        sent = dict(proxy.forwarded)
    assert resumed.exit_code in (0, 5), resumed.output[-3000:]
    assert all(n == 1 for n in applied_per_change(state).values())
    assert sent.get("UpdateAccessKey", 0) <= len(seeded_access_keys())
    assert sent.get("UpdateService", 0) == 1 and sent.get("StopTask", 0) == 2  # each sent once
    assert CliRunner().invoke(app, ["audit", "verify", "--state-dir", str(state)]).exit_code == 0


def seeded_access_keys() -> list[Any]:
    iam = boto3.Session(region_name="us-east-1").client("iam")
    return list(iam.list_access_keys(UserName=NAMES["user"])["AccessKeyMetadata"])
