"""What deploy/security-account.yaml routes to the worker, generated from the config's [routing]:
the EventBridge patterns of GuardDuty findings and Security Hub imported findings. A test fails when
the template drifts from them; `stanch drill --live` checks a deployed rule against the same config."""

from __future__ import annotations

from typing import Any

from runner.config import Config

GUARDDUTY_DETAIL_TYPE = "GuardDuty Finding"
SECURITYHUB_DETAIL_TYPE = "Security Hub Findings - Imported"


def routed_types(config: Config) -> list[str]:
    """The finding types (exact or shell-style patterns) [routing] sends to a playbook; incident kinds
    (no ':') are not finding types."""
    return sorted(key for key in config.routing if ":" in key)


def _match(pattern: str, prefix: str = "") -> Any:
    """An EventBridge matcher for a routing key: exact, or wildcard (EventBridge's `*` as fnmatch's)."""
    if prefix and not pattern.startswith(prefix):
        pattern = prefix + pattern  # EventBridge takes no consecutive wildcards
    if "*" in pattern:
        return {"wildcard": pattern}
    return pattern


def guardduty_pattern(config: Config) -> dict[str, Any]:
    return {"source": ["aws.guardduty"], "detail-type": [GUARDDUTY_DETAIL_TYPE],
            "detail": {"type": [_match(t) for t in routed_types(config)]}}


def securityhub_pattern(config: Config) -> dict[str, Any]:
    """ASFF `Types` hold the GuardDuty type as a suffix (`TTPs/.../CryptoCurrency:EC2-...`); active records only."""
    return {"source": ["aws.securityhub"], "detail-type": [SECURITYHUB_DETAIL_TYPE],
            "detail": {"findings": {"Types": [_match(t, "*") for t in routed_types(config)],
                                    "RecordState": ["ACTIVE"]}}}


def pattern_types(pattern: dict[str, Any]) -> list[str]:
    """The finding types (or type patterns) a deployed rule's pattern forwards: GuardDuty `detail.type` or
    Security Hub `detail.findings.Types`."""
    detail = pattern.get("detail") or {}
    entries = detail.get("type") or (detail.get("findings") or {}).get("Types") or []
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(entry)
        elif isinstance(entry, dict):
            value = entry.get("wildcard") or entry.get("prefix")
            if isinstance(value, str):
                out.append(value)
    return out


def unrouted(config: Config, types: list[str]) -> list[str]:
    """The forwarded types no playbook is routed for (a Security Hub entry may carry a leading `*`)."""
    return [t for t in types if not any(config.route("", [c]) for c in {t, t.removeprefix("*")} if c)]
