"""Configuration: a TOML file validated into a frozen model. Passed explicitly, never global."""

from __future__ import annotations

import fnmatch
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from runner.errors import InputError, Problem, did_you_mean
from runner.incident import format_loc

RiskTier = Literal["read-only", "reversible", "irreversible"]
NotifyStatus = Literal["awaiting_approval", "contained", "needs_manual_action", "partially_contained", "failed",
                       "refused", "cancelled"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunnerSection(_Section):
    max_workers: int = Field(8, ge=1, le=64)
    max_changes_per_step: int = Field(50, ge=1)
    #: steps the cap never holds back: revoking keys and stopping miners are what an attacker that
    #: creates many identities must not be able to switch off
    uncapped_steps: list[str] = Field(default_factory=lambda: ["deactivate-keys", "scale-miner-services",
                                                               "stop-miner-tasks"])


class AwsSection(_Section):
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = Field(8, ge=1, le=10)
    #: reads (Describe/List/Get/Lookup...) retry harder than writes: discovery must survive throttling
    read_max_attempts: int = Field(16, ge=1, le=20)
    connect_timeout: float = Field(5, gt=0)
    read_timeout: float = Field(20, gt=0)
    #: regions to search; empty: every region enabled for the account (the home region always)
    regions: list[str] = Field(default_factory=list)
    #: deprecated: every enabled region is searched by default; these are added to `regions`
    extra_regions: list[str] = Field(default_factory=list)
    #: answer a read asked again in the same run from memory until a write to its service
    #: (verification always reads AWS afresh); false: every read goes to AWS
    read_cache: bool = True


class ApprovalSection(_Section):
    require_for_tiers: list[RiskTier] = Field(default_factory=lambda: list[RiskTier](["irreversible"]))
    pre_approved_steps: list[str] = Field(default_factory=list)


class GuardrailSection(_Section):
    protected_principals: list[str] = Field(default_factory=list)


class DiscoverySection(_Section):
    miner_patterns: list[str] = Field(default_factory=lambda: ["xmrig"])
    admin_policy_arns: list[str] = Field(
        default_factory=lambda: ["arn:aws:iam::aws:policy/AdministratorAccess"]
    )
    #: an incident window starting more than this many days before detection is refused (exit 2)
    #: unless `stanch run --window-start TIME` sets the window explicitly
    max_window_days: float = Field(7, gt=0)


class IntakeSection(_Section):
    #: finding type pattern -> incident kind
    kinds: dict[str, str] = Field(default_factory=dict)
    #: CloudTrail attribution: how long after the first root use attacker activity is followed
    window_hours: float = Field(24, gt=0)
    #: CloudTrail LookupEvents calls per second per region (the API allows 2)
    lookup_events_tps: float = Field(2, gt=0)
    #: trail files (s3://bucket/prefix/) read by discovery to attribute ECS work to the attacker
    cloudtrail_s3_uri: str = Field("", pattern=r"^(s3://[a-z0-9.\-]{3,63}(/.*)?)?$")


class EvidenceSection(_Section):
    #: optional write-once copy of every bundle: s3://bucket/prefix/<incident>/<run>/...
    s3_bucket: str = ""
    s3_prefix: str = "stanch-evidence"
    object_lock_mode: Literal["", "GOVERNANCE", "COMPLIANCE"] = ""
    retention_days: int = Field(365, ge=1)
    #: how far CloudTrail LookupEvents looks back before window_start
    lookback_minutes: int = Field(30, ge=0)


class VerifySection(_Section):
    #: IAM is eventually consistent: a step with IAM changes whose verification fails is checked once
    #: more after this many seconds before it counts as unverified
    iam_settle_seconds: float = Field(10, ge=0, le=300)


class AccountsSection(_Section):
    """A runner in a security account: for an incident in another account it assumes
    `arn:aws:iam::<account>:role/<role_name>` (the run id as session name) and works there."""

    #: the responder role's name (and path) in every member account; empty: runs need credentials
    #: for the incident's own account, and any other account is refused
    role_name: str = Field("", pattern=r"^(([\w+=,.@-]+/)*[\w+=,.@-]{1,64})?$")
    #: the ExternalId the member role's trust policy requires, if any
    external_id: str = Field("", max_length=1224, pattern=r"^([\w+=,.@:/-]{2,})?$")


class RootSection(_Section):
    organizations_role_arn: str = ""


class PricingSection(_Section):
    """On-demand prices the report's mining cost estimate uses (USD, us-east-1 Linux/x86)."""

    as_of: str = Field("2026-11-01", pattern=r"^\d{4}-\d{2}-\d{2}$")
    currency: str = "USD"
    fargate_vcpu_hour: float = Field(0.04048, ge=0)
    fargate_gb_hour: float = Field(0.004445, ge=0)
    ec2_vcpu_hour: float = Field(0.0496, ge=0)
    ec2_gb_hour: float = Field(0.0062, ge=0)


#: run statuses a notification is sent for by default
NOTIFY_STATUSES: tuple[NotifyStatus, ...] = ("awaiting_approval", "contained", "needs_manual_action",
                                             "partially_contained", "failed")


class NotifySection(_Section):
    """Where run outcomes are sent: an SNS topic and/or a webhook (JSON POST, HMAC-SHA256 signed)."""

    sns_topic_arn: str = Field("", pattern=r"^(arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256})?$")
    webhook_url: str = Field("", pattern=r"^(https?://\S+)?$")
    #: the signing secret itself (prefer webhook_secret_env); never logged, never kept in a run's snapshot
    webhook_secret: SecretStr = Field(SecretStr(""), exclude=True)
    #: the name of an environment variable holding the signing secret
    webhook_secret_env: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")
    webhook_timeout: float = Field(5, gt=0, le=60)
    #: link to a run in the notification, e.g. "https://soc.example.com/stanch/runs/{run_id}"
    run_url: str = ""
    #: the run statuses that are notified
    on: list[NotifyStatus] = Field(default_factory=lambda: list(NOTIFY_STATUSES))

    @property
    def enabled(self) -> bool:
        return bool(self.sns_topic_arn or self.webhook_url)

    def secret(self) -> str:
        """The webhook signing secret: from the environment variable if one is named, else the file's."""
        if self.webhook_secret_env:
            return os.environ.get(self.webhook_secret_env, "")
        return self.webhook_secret.get_secret_value()


class WorkerSection(_Section):
    """`stanch worker`: the SQS queue findings (and resume requests) arrive on."""

    queue_url: str = Field("", pattern=r"^(https?://\S+)?$")
    #: seconds a received message stays invisible to other workers; extended while its run works
    visibility_timeout: int = Field(300, ge=2, le=43200)
    #: messages taken per receive (SQS allows 1-10)
    max_messages: int = Field(1, ge=1, le=10)
    #: long-poll wait per receive, seconds (SQS allows 0-20)
    wait_seconds: int = Field(20, ge=0, le=20)
    #: a message that could not be finished (bad input, a failed run, the run busy elsewhere) is
    #: received again after this many seconds, until the queue's redrive policy moves it to the DLQ
    retry_delay: int = Field(30, ge=0, le=43200)
    #: recorded as the runs' starter (`by`)
    by: str = "stanch-worker"


class JournalSection(_Section):
    """Where runs, locks, approvals and the audit log live. `STANCH_JOURNAL` (sqlite, or
    dynamodb://TABLE[?region=R]) overrides it."""

    backend: Literal["sqlite", "dynamodb"] = "sqlite"
    #: DynamoDB table (create it with `stanch journal init`)
    table: str = Field("", pattern=r"^([A-Za-z0-9_.-]{3,255})?$")
    #: the table's region; empty: the standard chain (AWS_REGION, AWS_DEFAULT_REGION, the profile)
    region: str = Field("", pattern=r"^([a-z]{2}(-[a-z]+)+-\d)?$")
    #: an AWS-compatible endpoint for the table only (else AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL)
    endpoint_url: str = ""
    #: a worker's hold on a run lasts this long unless its heartbeat renews it (every third of it)
    lease_seconds: float = Field(60, ge=1, le=3600)
    #: items of a run expire (DynamoDB TTL) this many days after the run started; 0: never
    ttl_days: int = Field(400, ge=0)

    @model_validator(mode="after")
    def _table_named(self) -> JournalSection:
        if self.backend == "dynamodb" and not self.table:
            raise ValueError('backend "dynamodb" needs table = "NAME"')
        return self


class Config(_Section):
    runner: RunnerSection = Field(default_factory=RunnerSection)
    aws: AwsSection = Field(default_factory=AwsSection)
    approval: ApprovalSection = Field(default_factory=ApprovalSection)
    guardrails: GuardrailSection = Field(default_factory=GuardrailSection)
    discovery: DiscoverySection = Field(default_factory=DiscoverySection)
    routing: dict[str, str] = Field(default_factory=dict)
    root: RootSection = Field(default_factory=RootSection)
    accounts: AccountsSection = Field(default_factory=AccountsSection)
    intake: IntakeSection = Field(default_factory=IntakeSection)
    evidence: EvidenceSection = Field(default_factory=EvidenceSection)
    pricing: PricingSection = Field(default_factory=PricingSection)
    verify: VerifySection = Field(default_factory=VerifySection)
    notify: NotifySection = Field(default_factory=NotifySection)
    worker: WorkerSection = Field(default_factory=WorkerSection)
    journal: JournalSection = Field(default_factory=JournalSection)
    source: str = Field("<defaults>", exclude=True)

    def is_protected(self, name: str, arn: str = "") -> bool:
        """True when a principal's name or ARN matches a protected pattern."""
        for pattern in self.guardrails.protected_principals:
            target = arn if pattern.startswith("arn:") else name
            if target and fnmatch.fnmatchcase(target, pattern):
                return True
        return False

    def route(self, kind: str, types: list[str] | None = None) -> str | None:
        """The playbook for an incident: by finding type first (exact, then pattern), then by kind."""
        for key in [*(types or []), kind]:
            if key in self.routing:
                return self.routing[key]
        for key in [*(types or []), kind]:
            for pattern, playbook in self.routing.items():
                if fnmatch.fnmatchcase(key, pattern):
                    return playbook
        return None


def default_config_text() -> str:
    return resources.files("config").joinpath("stanch.toml").read_text(encoding="utf-8")


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | None = None) -> Config:
    """Load `path`, else $STANCH_CONFIG, over the packaged default config/stanch.toml."""
    path = path or os.environ.get("STANCH_CONFIG") or None
    label = path or "config/stanch.toml (default)"
    try:
        text = Path(path).read_text(encoding="utf-8") if path else default_config_text()
    except OSError as exc:
        raise InputError(label, [Problem("", f"cannot read config: {exc.strerror}")]) from None
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(label, [Problem("", f"not valid TOML: {exc}")]) from None
    if path:  # a user's file overrides the packaged defaults key by key
        raw = _overlay(tomllib.loads(default_config_text()), raw)
    overlay = os.environ.get("STANCH_CONFIG_OVERLAY")
    if overlay:  # TOML text over the file (deploy/security-account.yaml sets it from the stack's resources)
        label += " + $STANCH_CONFIG_OVERLAY"
        try:
            raw = _overlay(raw, tomllib.loads(overlay))
        except tomllib.TOMLDecodeError as exc:
            raise InputError("$STANCH_CONFIG_OVERLAY", [Problem("", f"not valid TOML: {exc}")]) from None
    try:
        return Config.model_validate({**raw, "source": label})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                section = Config.model_fields.get(str(loc[0])) if len(loc) > 1 else None
                names: list[str] = list(Config.model_fields)
                if section is not None and isinstance(section.annotation, type):
                    names = list(section.annotation.model_fields)
                msg = f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), names) or '; remove it'}"
            else:
                msg = err["msg"]
            problems.append(Problem(format_loc(loc), msg))
        raise InputError(label, problems) from None
