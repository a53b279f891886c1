"""Audit log group commit: events written at once by many threads share appends and fsyncs, and the
hash chain stays intact and complete."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

import runner.audit as audit
from runner.audit import AuditLog, current_head, verify_chain


def test_concurrent_events_share_fsyncs_and_keep_the_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    syncs = [0]

    def slow_fsync(fd: int) -> None:  # a disk as slow as a loaded machine's: writers pile up behind it
        syncs[0] += 1
        time.sleep(0.01)
        real_fsync(fd)

    monkeypatch.setattr(audit.os, "fsync", slow_fsync)
    log = AuditLog(tmp_path / "audit.jsonl")
    threads = [threading.Thread(target=lambda i=i: [log.write({"event": "t", "thread": i, "n": n})
                                                    for n in range(10)]) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, 81))
    assert sorted((x["thread"], x["n"]) for x in lines) == [(i, n) for i in range(8) for n in range(10)]
    for i in range(8):  # each thread's events in the order it wrote them
        assert [x["n"] for x in lines if x["thread"] == i] == list(range(10))
    assert verify_chain(tmp_path / "audit.jsonl") == []
    assert current_head(tmp_path / "audit.jsonl")[0] == 80
    assert syncs[0] < 2 * 80  # one append used to cost two fsyncs (log and head) per event


def test_a_failed_append_fails_every_event_it_carried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.write({"event": "before"})

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit.os, "fsync", broken)
    with pytest.raises(OSError, match="No space"):
        log.write({"event": "lost"})
    monkeypatch.undo()
    log.write({"event": "after"})
    assert verify_chain(tmp_path / "audit.jsonl") == []  # the next append continues the chain from the log
    assert json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])["event"] == "after"
