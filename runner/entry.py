"""The `stanch` console script. `stanch --version` answers before the CLI (typer, rich) is imported;
everything else is runner.cli."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from runner import __version__

        sys.stdout.write(f"stanch {__version__}\n")
        return
    from runner.cli import main as cli

    cli()
