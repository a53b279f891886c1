"""Tamper evidence: the audit log and evidence bundles checked against what the journal anchored.

One paused-approved-resumed run (other names than the reference) is recorded once per module; every
tamper case works on its own copy of the state directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.audit import AuditLog, line_hash, verify_chain, write_head
from runner.cli import app
from runner.drill import root_keys_present, seed
from tests.conftest import TRAIL_CONFIG, publish_trail, write_json

NAMES = {"user": "etl-runner", "group": "data-eng", "cluster": "analytics", "service": "nightly-batch",
         "image": "docker.io/minerd/cpuminer:2.5"}
CONFIG = '[discovery]\nminer_patterns = ["cpuminer"]\n'

pytestmark = pytest.mark.xdist_group("tamper")  # one worker, so the run is recorded once


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from moto import mock_aws

    tmp = tmp_path_factory.mktemp("tamper")
    state = tmp / "state"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "STANCH_CONFIG"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
            data = seed(boto3.Session(region_name="us-east-1"), NAMES)
            root_keys_present(True)
            publish_trail(boto3.Session(region_name="us-east-1"), data)
            incident = write_json(tmp / "incident.json", data["incident"])
            config = tmp / "stanch.toml"
            config.write_text(CONFIG + "\n" + TRAIL_CONFIG)
            first = invoke("run", str(incident), "--config", str(config), "--state-dir", str(state),
                           "--output", "json")
            assert first.exit_code == 3, first.output  # paused: the miner steps wait for approval
            run_id = json.loads(first.stdout)["run_id"]
            waiting = [s["id"] for s in json.loads(first.stdout)["steps"] if s["status"] == "awaiting_approval"]
            approved = invoke("approve", run_id, "--step", waiting[0], "--by", "oncall", "--state-dir", str(state))
            assert approved.exit_code == 0, approved.output
            done = invoke("resume", run_id, "--approve-all", "--state-dir", str(state), "--output", "json")
            assert done.exit_code == 5, done.output
            yield {"state": state, "run_id": run_id, "bundle": Path(json.loads(done.stdout)["evidence"]["path"])}


@pytest.fixture
def copy(recorded: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A private copy of the recorded state directory (the bundle path rewritten into it)."""
    state = tmp_path / "state"
    shutil.copytree(recorded["state"], state, symlinks=True)
    bundle = state / recorded["bundle"].relative_to(recorded["state"])
    return {"state": state, "run_id": recorded["run_id"], "bundle": bundle, "log": state / "audit.jsonl"}


def audit_verify(state: Path) -> Any:
    return invoke("audit", "verify", "--state-dir", str(state))


def forge(lines: list[str], event: dict[str, Any]) -> str:
    """A line an attacker who knows the format appends: right seq, right prev hash."""
    last = json.loads(lines[-1])
    return json.dumps({**event, "seq": last["seq"] + 1, "prev": line_hash(lines[-1])}, separators=(",", ":"))


def test_the_recorded_log_and_bundle_verify(copy: dict[str, Any]) -> None:
    out = audit_verify(copy["state"])
    assert out.exit_code == 0, out.output
    assert "intact" in out.output
    by_id = invoke("evidence", "verify", copy["run_id"], "--state-dir", str(copy["state"]))
    assert by_id.exit_code == 0, by_id.output
    assert f"the manifest is the one run {copy['run_id']} recorded" in by_id.output


AuditCase = Callable[[Path, list[str]], None]


def _write(log: Path, lines: list[str]) -> None:
    log.write_text("".join(line + "\n" for line in lines))


def _cut_tail_and_head(log: Path, lines: list[str]) -> None:
    _write(log, lines[:-4])
    (log.parent / "audit.jsonl.head").unlink()


def _cut_tail_rewrite_head(log: Path, lines: list[str]) -> None:
    kept = lines[:-4]
    _write(log, kept)
    write_head(log, json.loads(kept[-1])["seq"], line_hash(kept[-1]), log.stat().st_size)


def _empty(log: Path, lines: list[str]) -> None:
    log.write_text("")
    (log.parent / "audit.jsonl.head").unlink()


def _deleted(log: Path, lines: list[str]) -> None:
    log.unlink()
    (log.parent / "audit.jsonl.head").unlink()


def _duplicate_middle(log: Path, lines: list[str]) -> None:
    _write(log, [*lines[:8], lines[7], *lines[8:]])


def _duplicate_last(log: Path, lines: list[str]) -> None:
    _write(log, [*lines, lines[-1]])


def _append_forgery_with_head(log: Path, lines: list[str]) -> None:
    fake = forge(lines, {"event": "approval.recorded", "run_id": json.loads(lines[-1])["run_id"],
                         "by": "ceo", "message": "approved everything"})
    _write(log, [*lines, fake])
    write_head(log, json.loads(fake)["seq"], line_hash(fake), log.stat().st_size)


def _append_forgery_as_new_run(log: Path, lines: list[str]) -> None:
    fake = forge(lines, {"event": "run.finished", "run_id": "r-forged", "status": "contained"})
    _write(log, [*lines, fake])
    write_head(log, json.loads(fake)["seq"], line_hash(fake), log.stat().st_size)


def _rewrite_whole_chain(log: Path, lines: list[str]) -> None:
    """Edit one line and recompute every later hash and the head: only the journal anchors catch it."""
    out: list[str] = []
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if i == 10:
            rec["by"] = "someone-else"
        rec["prev"] = line_hash(out[-1]) if out else "0" * 64
        out.append(json.dumps(rec, separators=(",", ":")))
    _write(log, out)
    write_head(log, json.loads(out[-1])["seq"], line_hash(out[-1]), log.stat().st_size)


def _symlinked(log: Path, lines: list[str]) -> None:
    elsewhere = log.parent.parent / "elsewhere.jsonl"
    elsewhere.write_text(log.read_text())
    log.unlink()
    log.symlink_to(elsewhere)


@pytest.mark.parametrize("tamper", [
    _cut_tail_and_head, _cut_tail_rewrite_head, _empty, _deleted, _duplicate_middle, _duplicate_last,
    _append_forgery_with_head, _append_forgery_as_new_run, _rewrite_whole_chain, _symlinked,
], ids=lambda f: f.__name__.strip("_"))
def test_audit_verify_detects_tampering(copy: dict[str, Any], tamper: AuditCase) -> None:
    log = copy["log"]
    tamper(log, log.read_text().splitlines())
    out = audit_verify(copy["state"])
    assert out.exit_code == 1, out.output
    assert "intact" not in out.output


def test_legitimate_lines_after_the_last_anchor_pass_while_their_run_executes(copy: dict[str, Any]) -> None:
    from runner.journal import SqliteJournal

    log = copy["log"]
    journal = SqliteJournal(copy["state"])
    AuditLog(log).write({"event": "step.planned", "run_id": copy["run_id"]})
    try:
        with journal.hold(copy["run_id"]):  # as `stanch resume` does while it works
            assert audit_verify(copy["state"]).exit_code == 0
        out = audit_verify(copy["state"])  # the run is not executing and never anchored that line
        assert out.exit_code == 1 and "appended after the last head the journal anchored" in out.output
    finally:
        journal.close()


def _rewrite_file_and_manifest(bundle: Path) -> None:
    target = bundle / "iam/users/etl-runner.json"
    target.write_text('{"user": "nothing to see"}\n')
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["iam/users/etl-runner.json"] = {"sha256": __import__("hashlib").sha256(
        target.read_bytes()).hexdigest(), "size": target.stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_evidence_verify_checks_the_manifest_against_the_recorded_digest(copy: dict[str, Any]) -> None:
    bundle = copy["bundle"]
    _rewrite_file_and_manifest(bundle)
    for target in (copy["run_id"], str(bundle)):
        out = invoke("evidence", "verify", target, "--state-dir", str(copy["state"]))
        assert out.exit_code == 1, out.output
        assert "MANIFEST manifest.json" in out.output and "rewritten" in out.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["run_id"]  # the journal, not the manifest, says whose bundle it is
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert invoke("evidence", "verify", str(bundle), "--state-dir", str(copy["state"])).exit_code == 1


def test_evidence_verify_never_follows_symlinks(copy: dict[str, Any], tmp_path: Path) -> None:
    bundle = copy["bundle"]
    (bundle / "loop-a").symlink_to(bundle / "loop-b")
    (bundle / "loop-b").symlink_to(bundle / "loop-a")
    (bundle / "iam" / "up").symlink_to(bundle, target_is_directory=True)
    out = invoke("evidence", "verify", copy["run_id"], "--state-dir", str(copy["state"]))
    assert out.exit_code == 1, out.output
    assert "SYMLINK  loop-a" in out.output and "SYMLINK  iam/up" in out.output
    # a listed file swapped for a link to an identical copy outside the bundle
    outside = tmp_path / "scope-copy.json"
    shutil.copy(bundle / "scope.json", outside)
    (bundle / "scope.json").unlink()
    (bundle / "scope.json").symlink_to(outside)
    out = invoke("evidence", "verify", str(bundle), "--state-dir", str(copy["state"]))
    assert out.exit_code == 1 and "SYMLINK  scope.json" in out.output
    linked = tmp_path / "linked-bundle"
    linked.symlink_to(bundle, target_is_directory=True)
    assert invoke("evidence", "verify", str(linked), "--state-dir", str(copy["state"])).exit_code == 2


@pytest.mark.parametrize("manifest", ['["files"]', '"just a string"', '{"files": ["a"]}',
                                      '{"files": {"../../etc/passwd": {"sha256": "0", "size": 1}}}',
                                      '{"files": {"a.json": {"sha256": "0", "size": "1"}}}', "{not json"])
def test_malformed_manifest_is_exit_2_without_traceback(copy: dict[str, Any], manifest: str) -> None:
    (copy["bundle"] / "manifest.json").write_text(manifest)
    out = invoke("evidence", "verify", str(copy["bundle"]), "--state-dir", str(copy["state"]))
    assert out.exit_code == 2, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


def test_audit_append_reads_only_the_head_and_survives_a_lost_head_write(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import audit

    log = tmp_path / "audit.jsonl"
    writer = AuditLog(log)
    writer.write({"event": "one"})

    def no_scan(path: Path) -> tuple[int, str]:
        raise AssertionError("the log was read back during an append")

    monkeypatch.setattr(audit, "scan_head", no_scan)
    for i in range(20):
        AuditLog(log).write({"event": "more", "n": i})  # fresh objects, as other processes
    monkeypatch.undo()
    # a process killed between its append and its head write: the next append continues after that line
    lines = log.read_text().splitlines()
    lost = forge(lines, {"event": "killed"})
    with log.open("a") as fh:
        fh.write(lost + "\n")
    AuditLog(log).write({"event": "after the crash"})
    seqs = [json.loads(line)["seq"] for line in log.read_text().splitlines()]
    assert seqs == list(range(1, 24))
    assert verify_chain(log) == []


def test_audit_log_refuses_to_write_through_a_symlink(tmp_path: Path) -> None:
    from runner.audit import UnsafeFileError

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    log = tmp_path / "state" / "audit.jsonl"
    log.parent.mkdir()
    log.symlink_to(victim)
    with pytest.raises(UnsafeFileError):
        AuditLog(log).write({"event": "x"})
    assert victim.read_text() == "precious\n"
