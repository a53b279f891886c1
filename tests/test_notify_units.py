"""Notification and queue-message edge cases a reviewer found: a webhook URL carrying credentials
never reaches a record or a log, and a message nested past the JSON parser is bad input, not a crash."""

from __future__ import annotations

from typing import Any

import pytest

from runner.config import AwsSection, NotifySection
from runner.errors import InputError
from runner.notify import Channels, send
from runner.worker import parse_body


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(f"{event} {kw}")


def test_a_webhook_url_with_credentials_is_named_by_host_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET_TEST", "s3cr3t-value")
    settings = NotifySection(webhook_url="http://hookuser:TOKEN-abc123@127.0.0.1:9/hook",
                             webhook_secret_env="HOOK_SECRET_TEST", webhook_timeout=1)
    monkeypatch.setattr("runner.notify.time.sleep", lambda _s: None)
    log = Log()
    records = send({"status": "contained", "run_id": "r-1", "incident_id": "INC-1", "steps": []},
                   Channels(settings=settings, aws=AwsSection()), log)
    assert [r["status"] for r in records] == ["failed"]  # port 9: nothing listens; the run goes on
    assert records[0]["to"] == "127.0.0.1:9"
    seen = repr(records) + "\n".join(log.lines)
    assert "TOKEN-abc123" not in seen and "hookuser" not in seen and "s3cr3t-value" not in seen


def test_a_message_nested_past_the_parser_is_bad_input() -> None:
    with pytest.raises(InputError, match="nested"):
        parse_body("[" * 100_000)
