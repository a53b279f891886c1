"""A seeded mutation fuzzer over every input format stanch takes (native incident, GuardDuty,
Security Hub, CloudTrail) and over the CLI. Used by tests/test_fuzz.py (a fixed sample on every
commit) and bench/fuzz.py (thousands of cases)."""

from __future__ import annotations

import copy
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "data"
_ODD_VALUES: list[Any] = [None, True, 0, -1, 10**20, 1.5, "", " ", "x" * 5000, "\u0000", "<script>", "../../etc",
                          "2026-13-45T99:99:99Z", [], {}, [None], {"": {}}, "AKIA" + "A" * 16, "123456789012"]


def seeds() -> list[Any]:
    """Valid documents of every format, to mutate."""
    docs: list[Any] = [json.loads((SAMPLES / "incident-cryptojacking.json").read_text())]
    for path in sorted((SAMPLES / "samples").rglob("*.json")):
        try:
            docs.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return docs


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:5]):
            yield from _paths(v, (*prefix, i))


def mutate(doc: Any, rng: random.Random, steps: int = 3) -> Any:
    """Delete, replace or retype a few values anywhere in the document."""
    doc = copy.deepcopy(doc)
    for _ in range(steps):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return rng.choice(_ODD_VALUES)
        path = rng.choice(paths)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = rng.random()
        if action < 0.35 and isinstance(parent, dict):
            del parent[last]
        elif action < 0.5 and isinstance(parent, list):
            parent.pop(last)
        elif action < 0.8:
            parent[last] = rng.choice(_ODD_VALUES)
        else:
            value = parent[last]
            parent[last] = [value] if not isinstance(value, list) else {"v": value}
    return doc


def fuzz_intake(cases: int, seed: int = 7) -> Counter[str]:
    """Every mutated document is an incident or an InputError; anything else is counted as a bug."""
    from runner.config import load_config
    from runner.errors import InputError
    from runner.intake import IntakeOptions, to_incident

    config = load_config()
    options = IntakeOptions(allow_sample=True, allow_archived=True)
    rng = random.Random(seed)
    docs = seeds()
    outcome: Counter[str] = Counter()
    for _ in range(cases):
        doc = mutate(rng.choice(docs), rng, rng.randint(1, 4))
        try:
            to_incident("fuzz", doc, config, options)
            outcome["accepted"] += 1
        except InputError:
            outcome["refused (exit 2)"] += 1
        except Exception as exc:  # noqa: BLE001 - the fuzzer's job is to count what nothing should raise
            outcome[f"BUG {type(exc).__name__}: {str(exc)[:80]}"] += 1
    return outcome


def fuzz_cli(cases: int, tmp: Path, seed: int = 11) -> Counter[str]:
    """`stanch run FILE --dry-run` on mutated inputs: a refused input exits 2 with a message and makes no
    AWS client; nothing ends in a traceback."""
    import botocore.session
    from typer.testing import CliRunner

    from runner.cli import app

    created: list[str] = []
    real = botocore.session.Session.create_client

    def spy(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        created.append(service_name)
        return real(self, service_name, *args, **kwargs)

    botocore.session.Session.create_client = spy  # type: ignore[method-assign]
    # valid inputs go on to AWS: fake credentials and a closed port, so they end at "unreachable" (exit 1)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")}
    os.environ.update(AWS_ACCESS_KEY_ID="fuzzing", AWS_SECRET_ACCESS_KEY="fuzzing")
    os.environ.pop("AWS_PROFILE", None)
    rng = random.Random(seed)
    docs = seeds()
    outcome: Counter[str] = Counter()
    try:
        for i in range(cases):
            doc = mutate(rng.choice(docs), rng, rng.randint(1, 4))
            path = tmp / f"fuzz-{i}.json"
            path.write_text(json.dumps(doc) if rng.random() > 0.05 else json.dumps(doc)[: rng.randint(0, 50)])
            created.clear()
            result = CliRunner().invoke(app, ["run", str(path), "--dry-run", "--state-dir", str(tmp / "state"),
                                              "--endpoint-url", "http://127.0.0.1:9"])
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                outcome[f"BUG traceback {type(result.exception).__name__}"] += 1
            elif "Traceback" in result.output:
                outcome["BUG traceback in output"] += 1
            elif result.exit_code == 2:
                outcome["BUG exit 2 after an AWS client" if created else "refused (exit 2)"] += 1
            else:
                outcome[f"exit {result.exit_code}"] += 1
    finally:
        botocore.session.Session.create_client = real  # type: ignore[method-assign]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return outcome
