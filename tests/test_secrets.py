"""Secrets never stored in the clear: a canary in every place a secret hides in this incident (task
definition environment and secrets, IAM tags, incident free text, an approval reason) must be absent
from every file under the state directory, the run document and every report format, while its
SHA-256 stays, so equality can still be proven."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from runner.audit import redact_value
from runner.cli import app
from runner.drill import _network, seed
from tests.conftest import use_attack_trail, write_json

NAMES = {"user": "build-agent", "group": "infra-ops", "cluster": "render", "service": "thumbnailer",
         "image": "xmrig/xmrig:6.20"}
CANARIES = {
    "env": "canary-db-Pa55-7f3a",
    "token_env": "canary-api-tok-91c2",
    "secret_ref": "arn:aws:secretsmanager:us-east-1:123456789012:secret:canary-sm-55aa",
    "tag": "canary-tag-0b1d",
    "tag_shaped": "ghp_canaryTagLooksLikeGithubTok3n0123456",
    "summary": "canary-summary-e4d2",
    "reason": "canary-reason-88f1",
}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def plant(session: boto3.Session) -> None:
    """The miner's task definition carries credentials; the attacker's user carries a token tag."""
    ecs, iam = session.client("ecs"), session.client("iam")
    td = ecs.register_task_definition(
        family=NAMES["service"], requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="1024",
        memory="2048", containerDefinitions=[{
            "name": "app", "image": NAMES["image"], "memory": 2048, "essential": True,
            "environment": [{"name": "DB_PASSWORD", "value": CANARIES["env"]},
                            {"name": "upstream_api_token", "value": CANARIES["token_env"]},
                            {"name": "POOL", "value": "pool.example.net:3333"}],
            "secrets": [{"name": "WALLET", "valueFrom": CANARIES["secret_ref"]}],
        }])["taskDefinition"]["taskDefinitionArn"]
    ecs.update_service(cluster=NAMES["cluster"], service=NAMES["service"], taskDefinition=td)
    ecs.run_task(cluster=NAMES["cluster"], taskDefinition=td, count=1, group=f"service:{NAMES['service']}",
                 startedBy=f"ecs-svc/{NAMES['service']}", launchType="FARGATE",
                 networkConfiguration=_network(session.client("ec2")))
    iam.tag_user(UserName=NAMES["user"], Tags=[{"Key": "deploy_token", "Value": CANARIES["tag"]},
                                               {"Key": "note", "Value": CANARIES["tag_shaped"]}])


def test_canaries_reach_no_file_document_or_report(aws_managed: boto3.Session, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.report import build_report, render_html, render_markdown

    data = seed(aws_managed, NAMES)
    use_attack_trail(aws_managed, data, monkeypatch, tmp_path)
    plant(aws_managed)
    incident = {**data["incident"], "summary": f"Root key used; a note on the host said password: "
                                               f"{CANARIES['summary']}"}
    path = write_json(tmp_path / "incident.json", incident)
    state = tmp_path / "state"
    out = CliRunner().invoke(app, ["run", str(path), "--approve-all", "--by", "oncall", "--output", "json",
                                   "--reason", f"approved; token={CANARIES['reason']}", "--state-dir", str(state)])
    assert out.exit_code in (0, 5), out.output[-3000:]
    run_id = json.loads(out.stdout)["run_id"]
    doc = build_report(run_id, state)
    texts = {"run output": out.output, "report.md": render_markdown(doc), "report.html": render_html(doc),
             "report.json": json.dumps(doc, default=str)}
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "journal.sqlite3" for p in files) and any(p.suffix == ".json" for p in files)
    texts |= {str(p.relative_to(state)): p.read_bytes().decode("utf-8", "replace") for p in files}
    for where, text in texts.items():
        for kind, canary in CANARIES.items():
            assert canary not in text, f"{kind} canary in {where}"
    ecs_evidence = next(t for name, t in texts.items() if name.startswith("evidence") and "/ecs/" in name)
    assert sha(CANARIES["env"]) in ecs_evidence  # equality stays provable
    assert "pool.example.net:3333" in ecs_evidence  # what is not secret stays readable
    assert sha(CANARIES["secret_ref"]) in ecs_evidence


def test_redaction_rules() -> None:
    doc = redact_value({
        "UserData": "IyEvYmluL2Jhc2gKZXhwb3J0IFRPS0VOPWFiYw==",
        "Tags": [{"Key": "Owner", "Value": "alice"}, {"Key": "github", "Value": CANARIES["tag_shaped"]}],
        "summary": 'leaked "api_key": "abc123" and -----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----',
        "AccessKeyId": "AKIAABCDEFGHIJKLMNOP",
    })
    assert doc["UserData"] == f"[REDACTED] sha256={sha('IyEvYmluL2Jhc2gKZXhwb3J0IFRPS0VOPWFiYw==')}"
    assert doc["Tags"][0]["Value"] == "alice" and CANARIES["tag_shaped"] not in json.dumps(doc)
    assert "abc123" not in doc["summary"] and "MIIE" not in doc["summary"]
    assert doc["AccessKeyId"] == "AKIAABCDEFGHIJKLMNOP"  # identifiers are not secrets
    assert redact_value(doc) == doc  # redacting twice changes nothing


# ------------------------------------------------------------------ state directory files

def test_state_dir_and_files_are_owner_only_and_looser_ones_are_tightened(tmp_path: Path) -> None:
    import stat

    from runner.audit import AuditLog
    from runner.journal import SqliteJournal

    fresh = tmp_path / "fresh"
    SqliteJournal(fresh).close()
    AuditLog(fresh / "audit.jsonl").write({"event": "x"})
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    for f in fresh.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f

    fresh.chmod(0o755)
    (fresh / "journal.sqlite3").chmod(0o644)
    (fresh / "audit.jsonl").chmod(0o644)
    out = CliRunner().invoke(app, ["status", "--state-dir", str(fresh)])
    assert out.exit_code == 0, out.output
    assert "tightened" in out.output
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert stat.S_IMODE((fresh / "journal.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE((fresh / "audit.jsonl").stat().st_mode) == 0o600


def test_symlinked_state_files_are_refused_and_their_targets_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in ("audit.jsonl", "journal.sqlite3"):
        state = tmp_path / f"state-{name}"
        state.mkdir(mode=0o700)
        (state / name).symlink_to(victim)
        out = CliRunner().invoke(app, ["status", "--state-dir", str(state)])
        assert out.exit_code == 2, out.output
        assert "symlink" in out.output
    assert victim.read_text() == "precious\n"
