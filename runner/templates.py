"""Playbook templates: `{{ path.to.value }}` substitution only. No expressions, no code.

A template that is the whole string yields the value itself (a list stays a list); a
template inside a longer string is interpolated as text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}")
_WHOLE = re.compile(r"^\s*\{\{\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}\s*$")
_BRACES = re.compile(r"\{\{|\{%")  # an opening delimiter that is not a plain substitution


class TemplateError(ValueError):
    pass


def references(value: Any) -> Iterator[str]:
    """Every template path used anywhere in `value`."""
    if isinstance(value, str):
        for m in TEMPLATE.finditer(value):
            yield m.group(1)
    elif isinstance(value, dict):
        for v in value.values():
            yield from references(v)
    elif isinstance(value, list):
        for v in value:
            yield from references(v)


def malformed(value: Any) -> list[str]:
    """Strings that contain template braces which are not a plain `{{ path }}` substitution."""
    bad: list[str] = []
    if isinstance(value, str):
        if _BRACES.search(TEMPLATE.sub("", value)):
            bad.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            bad += malformed(v)
    elif isinstance(value, list):
        for v in value:
            bad += malformed(v)
    return bad


def lookup(path: str, scope: dict[str, Any]) -> Any:
    cur: Any = scope
    walked = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise TemplateError(f"'{{{{ {path} }}}}': nothing at '{'.'.join(walked)}'")
    return cur


def render(value: Any, scope: dict[str, Any]) -> Any:
    """Substitute templates in `value` from `scope`."""
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return lookup(whole.group(1), scope)
        return TEMPLATE.sub(lambda m: str(lookup(m.group(1), scope)), value)
    if isinstance(value, dict):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    return value
