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


# ------------------------------------------------------------------ the journal's group commit
def test_journal_writes_made_at_once_share_commits_and_all_land(tmp_path: Path) -> None:
    import sqlite3

    from runner.journal import RunRecord, SqliteJournal, now_iso

    journal = SqliteJournal(tmp_path)
    journal.create_run(RunRecord("r-1", "INC-1", "pb", "applying", False, now_iso(), now_iso(), {}, {}), lock=True)
    commits = [0]
    journal._db.set_trace_callback(lambda sql: commits.__setitem__(0, commits[0] + (sql == "COMMIT")))
    slow = threading.Event()

    def hold_first_commit(db: sqlite3.Connection) -> None:  # a slow disk: the others queue behind it
        slow.wait(0.3)

    first = threading.Thread(target=journal._grouped, args=(hold_first_commit,))
    first.start()
    time.sleep(0.05)
    workers = [threading.Thread(target=lambda i=i: (journal.change_started("r-1", "s", f"d{i}", {"n": i}),
                                                    journal.change_finished("r-1", "s", f"d{i}", "applied")))
               for i in range(20)]
    for w in workers:
        w.start()
    slow.set()
    for w in [first, *workers]:
        w.join()
    assert sorted((c.digest, c.status) for c in journal.changes("r-1")) == sorted((f"d{i}", "applied")
                                                                                  for i in range(20))
    assert commits[0] < 41  # 40 writes and the slow one, in fewer commits than writes

    def broken(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO nonexistent VALUES (1)")

    with pytest.raises(sqlite3.OperationalError):
        journal._grouped(broken)
    journal.save_step("r-1", "s", "applied", {"changes": []})  # the journal goes on
    assert journal.steps("r-1")["s"].status == "applied"
    journal.close()
