"""Commands that never call AWS start without loading boto3 or moto (a responder waits on `--help`
and `status`; moto belongs to the drill and the tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("boto3", "botocore.session", "botocore.client", "moto")

PROBE = """
import json, sys
from runner.cli import app
commands, out, heavy = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
seen = {}
for args in commands:
    try:
        app(args=args, prog_name="stanch")
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    seen[" ".join(args)] = {"exit": code, "loaded": [m for m in heavy if m in sys.modules]}
with open(out, "w") as f:
    json.dump(seen, f)
"""


def test_help_version_playbook_list_and_status_load_no_boto3_or_moto(tmp_path: Path) -> None:
    commands = [["--help"], ["--version"], ["run", "--help"], ["playbook", "list"],
                ["status", "--state-dir", str(tmp_path / "state")]]
    out = tmp_path / "seen.json"
    # one fresh interpreter, commands in turn: what is loaded after each includes what it loaded
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands), str(out), ",".join(HEAVY)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert "Exit codes" in proc.stdout and "stanch 0." in proc.stdout and "Playbooks:" in proc.stdout
    for command, found in seen.items():
        assert found["exit"] == 0, command
        assert found["loaded"] == [], f"`stanch {command}` loaded {found['loaded']}"


def test_the_probe_would_notice_boto3(tmp_path: Path) -> None:
    """The check above can fail: a command that reaches AWS loads boto3 (here against a closed port)."""
    out = tmp_path / "seen.json"
    config = tmp_path / "stanch.toml"
    config.write_text("[aws]\nmax_attempts = 1\nconnect_timeout = 1\n")
    incident = Path(__file__).parent / "data" / "incident-cryptojacking.json"
    command = ["run", str(incident), "--dry-run", "--config", str(config), "--endpoint-url", "http://127.0.0.1:9",
               "--state-dir", str(tmp_path / "state")]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([command]), str(out), ",".join(HEAVY)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [found] = json.loads(out.read_text()).values()
    assert found["exit"] == 1, proc.stderr[-3000:]  # AWS unreachable
    assert "boto3" in found["loaded"]
