"""Evidence bundles, their verification, the tamper-evident audit log, and the customer report."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.config import load_config
from runner.drill import root_keys_present, seed
from tests.awshelp import context, plan
from tests.conftest import TRAIL_CONFIG, publish_trail, write_json

pytestmark = pytest.mark.xdist_group("evidence-report")  # one worker, so one shared containment

NAMES = {"user": "svc-backup", "group": "k8s-ops", "cluster": "billing", "service": "report-gen",
         "image": "xmrig/xmrig:6.21"}


@pytest.fixture(scope="module")
def contained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One containment shared by the module's tests: they read its run document, state directory and
    bundle (the report needs no AWS). A test that alters files works on its own copy."""
    from moto import mock_aws

    tmp_path = tmp_path_factory.mktemp("contained")
    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        seeded = seed(boto3.Session(region_name="us-east-1"), NAMES)
        root_keys_present(True)
        publish_trail(boto3.Session(region_name="us-east-1"), seeded)
        config = tmp_path / "trail.toml"
        config.write_text(TRAIL_CONFIG)
        path = write_json(tmp_path / "incident.json", seeded["incident"])
        state = tmp_path / "state"
        result = CliRunner().invoke(app, ["run", str(path), "--approve-all", "--by", "oncall", "--output", "json",
                                          "--state-dir", str(state), "--config", str(config)])
    assert result.exit_code == 5, result.output  # contained; the root key is a manual action
    yield {"run": json.loads(result.stdout), "state": state, "seeded": seeded}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_run_names_a_bundle_that_holds_the_state_before_containment(contained: dict[str, Any]) -> None:
    run = contained["run"]
    bundle = Path(run["evidence"]["path"])
    assert bundle.is_dir() and len(run["evidence"]["manifest_sha256"]) == 64
    user = json.loads((bundle / "iam/users/svc-backup.json").read_text())
    assert user["user"]["UserName"] == "svc-backup"
    assert user["state_before_containment"]["groups"] == ["k8s-ops"]
    assert user["state_before_containment"]["login_profile"]["present"] is True
    ecs = json.loads((bundle / "ecs/us-east-1/billing.json").read_text())
    [td] = ecs["task_definitions"]
    assert td["containerDefinitions"][0]["image"] == "xmrig/xmrig:6.21"
    assert ecs["services"][0]["desiredCount"] == 2  # described before it was scaled to 0
    assert {t["desiredStatus"] for t in ecs["tasks"]} == {"RUNNING"}  # described before they were stopped
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["collector"]["account"] == "123456789012"
    assert {"incident.json", "scope.json", "posture.json", "iam/groups/k8s-ops.json"} <= set(manifest["files"])
    assert any(g["source"] == "cloudtrail:LookupEvents" for g in manifest["gaps"])  # moto has no LookupEvents
    for f in bundle.rglob("*"):
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == (0o600 if f.is_file() else 0o700), (f, oct(mode))


def test_evidence_verify_detects_altered_missing_and_extra_files(contained: dict[str, Any], tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(contained["run"]["evidence"]["path"], tmp_path / "bundle"))
    ok = invoke("evidence", "verify", str(bundle))
    assert ok.exit_code == 0 and "intact" in ok.output
    target = bundle / "iam/users/svc-backup.json"
    data = bytearray(target.read_bytes())
    data[10] ^= 0x01  # one bit of one byte
    target.write_bytes(bytes(data))
    (bundle / "scope.json").unlink()
    (bundle / "planted.json").write_text("{}")
    bad = invoke("evidence", "verify", str(bundle))
    assert bad.exit_code == 1
    assert "ALTERED  iam/users/svc-backup.json" in bad.output
    assert "MISSING  scope.json" in bad.output and "EXTRA    planted.json" in bad.output
    assert invoke("evidence", "verify", str(bundle.parent)).exit_code == 2


def test_audit_verify_reports_edits_deletions_and_reordering(contained: dict[str, Any], tmp_path: Path) -> None:
    state = Path(shutil.copytree(contained["state"], tmp_path / "state-copy"))
    log = state / "audit.jsonl"
    ok = invoke("audit", "verify", "--state-dir", str(state))
    assert ok.exit_code == 0, ok.output
    lines = log.read_text().splitlines()
    for name, mutate, expect in [
        ("edit", lambda ls: [*ls[:5], ls[5].replace('"step"', '"stepx"'), *ls[6:]], "line 6 (seq 6): edited"),
        ("delete", lambda ls: ls[:5] + ls[6:], "seq 6: line deleted"),
        ("reorder", lambda ls: [*ls[:5], ls[6], ls[5], *ls[7:]], "reordered"),
        ("truncate", lambda ls: ls[:-3], "lines cut from the end"),
        ("edit last", lambda ls: [*ls[:-1], ls[-1].replace('"event"', '"evnt"')], "the last line no longer matches"),
    ]:
        log.write_text("\n".join(mutate(list(lines))) + "\n")
        out = invoke("audit", "verify", "--state-dir", str(state))
        assert out.exit_code == 1, name
        assert expect in out.output, (name, out.output)


def test_report_markdown_and_html(contained: dict[str, Any], tmp_path: Path) -> None:
    run_id, state = contained["run"]["run_id"], contained["state"]
    md = invoke("report", run_id, "--format", "md", "--state-dir", str(state))
    assert md.exit_code == 0, md.output
    text = md.stdout
    html_path = tmp_path / "report.html"
    html = invoke("report", run_id, "--output", "html", "--file", str(html_path), "--state-dir", str(state))
    assert html.exit_code == 0
    page = html_path.read_text()
    for doc in (text, page):
        for needle in ("svc-backup", "k8s-ops", "billing/report-gen", "AKIAEXAMPLEROOTKEY01", "Executive summary",
                       "Critical", "xmrig/xmrig:6.21", "Manual actions still required"):
            assert needle in doc, needle
    actions = text.split("## Actions taken", 1)[1].split("## Deliberately left alone", 1)[0]
    left = text.split("## Deliberately left alone", 1)[1].split("## Manual actions", 1)[0]
    for decoy in ("alice", "ops-oncall", "breakglass", "platform-admins", "frontend", "web/"):
        assert decoy not in actions, decoy
    assert "platform-admins" in left and "web/frontend" in left and "breakglass-admin" in left
    assert "oncall (pre-approved with --approve-all)" in actions  # the approver of gated steps
    assert "| automatic |" in actions
    assert page.startswith("<!doctype html>") and "<script" not in page and "http://" not in page
    data = json.loads(invoke("report", run_id, "--format", "json", "--state-dir", str(state)).stdout)
    assert data["risk"]["level"] == "critical" and data["in_scope"]["users"] == ["svc-backup"]
    facts = {f["fact"]: f for f in data["hardening_facts"]}
    assert facts["Root access keys"]["value"] == "present"
    assert "group platform-admins" in facts["Principals holding AdministratorAccess"]["value"]
    assert "k8s-ops" not in facts["Principals holding AdministratorAccess"]["value"]  # read after containment


def test_report_escapes_html_from_the_incident(aws: boto3.Session, tmp_path: Path) -> None:
    doc = json.loads((Path(__file__).parent / "data" / "incident-cryptojacking.json").read_text())
    doc["summary"] = "<script>alert(1)</script>"
    doc["principals"] = [{"type": "root", "access_key_id": "AKIAEXAMPLEROOTKEY01"}]
    doc["resources"] = []
    path = write_json(tmp_path / "i.json", doc)
    state = tmp_path / "state"
    out = invoke("run", str(path), "--output", "json", "--state-dir", str(state))
    assert out.exit_code in (0, 1), out.output  # an empty account, no CloudTrail source: not "contained"
    page = invoke("report", json.loads(out.stdout)["run_id"], "--format", "html", "--state-dir", str(state)).stdout
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_unknown_run_for_report_is_exit_2(tmp_path: Path) -> None:
    out = invoke("report", "r-nope", "--state-dir", str(tmp_path))
    assert out.exit_code == 2 and "no run 'r-nope'" in out.output


def test_bundle_uploads_write_once_with_object_lock(aws: boto3.Session, tmp_path: Path) -> None:
    from actions.evidence import CaptureEvidence

    s3 = aws.client("s3")
    s3.create_bucket(Bucket="evidence-bucket", ObjectLockEnabledForBucket=True)
    cfg = load_config()
    cfg = cfg.model_copy(update={"evidence": cfg.evidence.model_copy(update={
        "s3_bucket": "evidence-bucket", "object_lock_mode": "GOVERNANCE", "retention_days": 30})})
    ctx = context(aws, config=cfg)
    ctx.evidence_dir = tmp_path / "bundle"
    scope = {"users": [], "groups": [], "roles": [], "access_keys": [], "ecs_services": [], "ecs_tasks": []}
    action = CaptureEvidence()
    first = plan(action, ctx, {"scope": scope})
    assert first.changes and all(c.operation == "s3:PutObject" for c in first.changes)
    assert {c.params["File"] for c in first.changes} >= {"manifest.json", "incident.json", "scope.json"}
    for c in first.changes:
        assert action.apply(ctx, c) == "applied"
    assert plan(action, ctx, {"scope": scope}).changes == []
    key = first.changes[0].params["Key"]
    head = s3.head_object(Bucket="evidence-bucket", Key=key, ChecksumMode="ENABLED")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert key.startswith("stanch-evidence/INC-TEST-1/r-test/")
    # write-once: a second put of the same key is refused by S3, and recorded as already done
    assert action.apply(ctx, first.changes[0]) == "already_done"
    # a file altered after hashing is never uploaded
    (ctx.evidence_dir / "incident.json").write_text("{}")
    altered = next(c for c in first.changes if c.params["File"] == "incident.json")
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError, match="EvidenceAltered"):
        action.apply(ctx, altered)
