"""The native incident: strict validation, every problem with its path, exit 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.errors import InputError
from runner.incident import MAX_INCIDENT_BYTES, load_incident, validate_incident
from tests.conftest import EXAMPLE_INCIDENT, write_json


def base() -> dict[str, Any]:
    return json.loads(EXAMPLE_INCIDENT.read_text())


def problems(doc: Any) -> list[str]:
    with pytest.raises(InputError) as info:
        validate_incident("incident.json", doc)
    return [str(p) for p in info.value.problems]


def test_reference_incident_loads() -> None:
    inc = load_incident(str(EXAMPLE_INCIDENT))
    assert inc.id == "INC-2026-0042"
    assert inc.window_start_dt is not None
    assert [p.type for p in inc.principals] == ["root", "user", "group"]


def test_unknown_field_is_named_with_a_suggestion() -> None:
    doc = base() | {"sumary": "x"}
    doc["principals"][1] = {"type": "user", "nmae": "cluster_admin"}
    found = problems(doc)
    assert "sumary: unknown field 'sumary'; did you mean 'summary'?" in found
    assert "principals[1].nmae: unknown field 'nmae'; did you mean 'name'?" in found
    assert "principals[1].name: required field is missing" in found


@pytest.mark.parametrize(("field", "value", "expect"), [
    ("account_id", "12345678901", "account_id: '12345678901' is not an AWS account id; it must be exactly 12 digits"),
    ("account_id", 123456789012, "account_id: wrong type"),
    ("detected_at", "yesterday", "detected_at: 'yesterday' is not an RFC 3339 timestamp"),
    ("detected_at", "2026-11-20 10:14:00", "is not an RFC 3339 timestamp"),
    ("window_start", "2026-11-21T00:00:00Z", "window_start is after detected_at"),
    ("principals", "cluster_admin", "principals: wrong type"),
    ("severity", "apocalyptic", "severity"),
])
def test_bad_values_are_reported_with_their_path(field: str, value: Any, expect: str) -> None:
    found = problems(base() | {field: value})
    assert any(expect in p for p in found), found


def test_control_characters_in_ids_are_rejected() -> None:
    doc = base()
    doc["principals"][1] = {"type": "user", "name": "cluster\u0000admin"}
    doc["id"] = "INC-\n1"
    found = problems(doc)
    assert any(p.startswith("id:") for p in found)
    assert any(p.startswith("principals[1].name") for p in found)


def test_every_problem_is_listed_at_once() -> None:
    found = problems({"kind": "cryptojacking", "account_id": "1", "principals": [{"type": "wizard"}]})
    paths = {p.split(":")[0] for p in found}
    assert {"id", "region", "detected_at", "account_id", "principals[0]"} <= paths


@pytest.mark.parametrize(("content", "expect"), [
    (b"", "empty file"),
    (b"   \n", "empty file"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"[" * 100 + b"]" * 100, "nested deeper than"),
])
def test_unreadable_documents(tmp_path: Path, content: bytes, expect: str) -> None:
    path = tmp_path / "incident.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_incident(str(path))
    assert expect in str(info.value)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b'{"summary": "' + b"x" * MAX_INCIDENT_BYTES + b'"}')
    with pytest.raises(InputError, match="byte limit"):
        load_incident(str(path))


def test_cli_bad_incident_exits_2_without_traceback_or_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an endpoint that nothing listens on: any AWS call would fail loudly, not exit 2
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    doc = base() | {"account_id": "12", "regoin": "us-east-1"}
    path = write_json(tmp_path / "bad.json", doc)
    result = CliRunner().invoke(app, ["run", str(path), "--approve-all"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "account_id" in result.output and "did you mean 'region'" in result.output
    assert not (tmp_path / "state" / "journal.sqlite3").exists()


def test_cli_reads_stdin() -> None:
    result = CliRunner().invoke(app, ["run", "-", "--dry-run"], input='{"kind": "cryptojacking", "acount_id": "1"}')
    assert result.exit_code == 2
    assert "<stdin>" in result.output and "id: required field is missing" in result.output
    assert "did you mean 'account_id'?" in result.output
    empty_object = CliRunner().invoke(app, ["run", "-", "--dry-run"], input="{}")
    assert empty_object.exit_code == 2 and "unrecognised input" in empty_object.output


def test_cli_missing_file() -> None:
    result = CliRunner().invoke(app, ["run", "/nonexistent/incident.json"])
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_unusable_state_directory_is_exit_2(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = CliRunner().invoke(app, ["status", "--state-dir", str(not_a_dir)])
    assert result.exit_code == 2 and "cannot use this state directory" in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "journal.sqlite3").write_text("garbage, not sqlite")
    result = CliRunner().invoke(app, ["status", "--state-dir", str(broken)])
    assert result.exit_code == 2 and "not a stanch journal" in result.output
    assert "Traceback" not in result.output


def test_missing_credentials_record_no_run_and_hold_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    state = tmp_path / "state"
    result = CliRunner().invoke(app, ["run", str(EXAMPLE_INCIDENT), "--state-dir", str(state)])
    assert result.exit_code == 2 and "no AWS credentials found" in result.output
    listing = CliRunner().invoke(app, ["status", "--state-dir", str(state)])
    assert "no runs" in listing.output
