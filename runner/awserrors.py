"""AWS errors in one line a responder can read: `Service:Operation code: message`.

Some endpoints answer an error with an HTML page (a proxy, a moto server without the API); it is
reduced to its title or text and trimmed, so no page body reaches a plan, a status or a report."""

from __future__ import annotations

import re
import traceback
from typing import Any

ERROR_LIMIT = 240

_TAG = re.compile(r"<[^>]+>")
_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_BOTO = re.compile(r"An error occurred \((?P<code>[^)]*)\) when calling the (?P<op>\w+) operation"
                   r"(?: \(reached max retries: \d+\))?: ?(?P<msg>.*)", re.DOTALL)


def clean_message(text: str, limit: int = ERROR_LIMIT) -> str:
    """One line of plain text: an HTML error page becomes its title (or its text), long text is trimmed."""
    text = str(text)
    if "<" in text and ">" in text and re.search(r"<(!doctype|html|head|body|title|h1|p)\b", text, re.IGNORECASE):
        title = _TITLE.search(text)
        text = title.group(1) if title else _TAG.sub(" ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def summarize_error(text: Any) -> str:
    """`Operation code: message` for botocore's wording; any text is cleaned (no HTML, one trimmed line)."""
    if text is None:
        return ""
    raw = str(text)
    m = _BOTO.search(raw)
    if m:
        return f"{m['op']} {m['code']}: {clean_message(m['msg'])}"
    return clean_message(raw)


def describe_client_error(exc: Any) -> str:
    """`Service:Operation code: message` for a botocore ClientError.

    botocore does not store the service on the exception; the client that raised it is the
    `self` of the `_make_api_call` frame in the traceback, and its service model names it."""
    error = exc.response.get("Error", {}) if hasattr(exc, "response") else {}
    code = error.get("Code") or "Error"
    message = clean_message(error.get("Message") or "")
    operation = getattr(exc, "operation_name", "") or "Unknown"
    service = ""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        client = frame.f_locals.get("self")
        model = getattr(getattr(client, "meta", None), "service_model", None)
        if model is not None:
            service = str(getattr(model, "service_name", "") or "")
            break
    where = f"{service}:{operation}" if service else operation
    return f"{where} {code}: {message}".rstrip(": ").rstrip()
