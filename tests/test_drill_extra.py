"""moto is the `drill` extra: stanch installs without it, and `stanch drill` says how to get it."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_moto_is_not_a_runtime_dependency_but_the_drill_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("moto")]
    assert [d for d in project["optional-dependencies"]["drill"] if d.lower().startswith("moto")]
    readme = (ROOT / "README.md").read_text()
    assert "pip install '.[drill]' && stanch drill" in readme  # the quick start installs what it runs


def test_drill_without_moto_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "moto", None)  # `import moto` now fails as if it were not installed
    result = CliRunner().invoke(app, ["drill", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2, result.output
    assert "pip install 'stanch[drill]'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "state").exists()  # nothing was run
