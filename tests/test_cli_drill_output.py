"""`stanch drill` shows its scorecard, not two runs' logs, unless asked (-v)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from runner.cli import app


@pytest.mark.xdist_group("dry-run-drill")
def test_drill_prints_the_scorecard_without_the_run_logs_by_default(dry_run_drill: Result) -> None:
    out = dry_run_drill
    assert out.exit_code == 0, out.output
    assert re.search(r"result +check", out.stdout) and "DRILL PASSED" in out.stdout
    assert re.search(r"scale-miner-services +ecs:UpdateService service \S+: desiredCount 2 -> 0", out.stdout)
    assert not re.search(r"^\d\d:\d\d:\d\d ", out.stderr, re.MULTILINE), out.stderr[:2000]


def test_drill_verbose_shows_the_run_log_on_stderr(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["drill", "--dry-run", "-v", "--state-dir", str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    assert re.search(r"^\d\d:\d\d:\d\d plan +discover-scope", out.stderr, re.MULTILINE), out.stderr[:2000]
    assert "  change " in out.stderr  # verbose: every planned change too
    assert "DRILL PASSED" in out.stdout and not re.search(r"^\d\d:\d\d:\d\d ", out.stdout, re.MULTILINE)
