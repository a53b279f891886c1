"""The console script: `stanch --version` answers without importing the CLI; the rest is runner.cli."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runner import __version__
from runner.entry import main

PROBE = """
import sys
sys.argv = ["stanch", *sys.argv[1:]]
from runner.entry import main
main()
print(sorted(m for m in ("typer", "rich", "pydantic", "boto3") if m in sys.modules))
"""


def test_version_answers_before_the_cli_is_imported() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, "--version"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"stanch {__version__}", "[]"]


def test_everything_else_is_the_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["stanch", "--version", "--help"])  # not the bare fast path
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    assert f"stanch {__version__}" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["stanch", "playbook", "nonsense"])
    with pytest.raises(SystemExit) as bad:
        main()
    assert bad.value.code == 2
