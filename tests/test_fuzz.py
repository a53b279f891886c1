"""A fixed sample of the mutation fuzzer on every commit (bench/fuzz.py runs thousands): no input
format and no CLI input ends in a traceback, and a refused input never reaches AWS."""

from __future__ import annotations

from pathlib import Path

from tests.fuzzing import fuzz_cli, fuzz_intake


def test_mutated_detections_are_incidents_or_refusals() -> None:
    outcome = fuzz_intake(400)
    assert not [k for k in outcome if k.startswith("BUG")], outcome
    assert outcome["refused (exit 2)"] > 30


def test_mutated_cli_inputs_exit_2_without_an_aws_call_and_never_a_traceback(tmp_path: Path) -> None:
    outcome = fuzz_cli(15, tmp_path)
    assert not [k for k in outcome if k.startswith("BUG")], outcome
    assert outcome["refused (exit 2)"] > 3
