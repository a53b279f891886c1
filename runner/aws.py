"""AWS session handling: the only place boto3 clients are built.

`AwsSession` wraps a boto3 session with the run's retry and timeout settings, an optional
endpoint (moto server in tests and drills), a per-operation call counter, and the dry-run
guarantee: when `dry_run` is set, a botocore `before-call` hook refuses every operation that
is not a read before a request is signed or sent.

It also holds the run's read cache (`ReadCache`, off until the engine turns it on): an
idempotent read asked again with the same parameters in the same region is answered from memory
until a write to that service, and two threads asking the same read at once make one call.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
from botocore.retries import quota, standard

from runner.config import AwsSection
from runner.errors import DryRunViolation

if TYPE_CHECKING:  # boto3 is imported by the first session, not by commands that never call AWS
    import boto3

READ_PREFIXES = ("Describe", "List", "Get", "Lookup", "Search", "Head", "BatchGet", "Query", "Scan", "Simulate")


#: obtain credentials without changing the account; needed to plan the Organizations root path
CREDENTIAL_OPERATIONS = frozenset({"AssumeRole", "AssumeRoot"})
ROOT_TASK_DELETE_CREDENTIALS = "arn:aws:iam::aws:policy/root-task/IAMDeleteRootUserCredentials"


def is_read_operation(operation: str) -> bool:
    """True for operations that only read (by the AWS naming convention), or only obtain credentials."""
    return operation.startswith(READ_PREFIXES) or operation in CREDENTIAL_OPERATIONS


#: retry tokens (botocore's quota: a throttled retry costs 5, a success gives 1 back) per client.
#: Writes keep botocore's 500; reads get more, so a throttled discovery slows down but finishes.
WRITE_RETRY_QUOTA = 500
READ_RETRY_QUOTA = 5000


THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled",
    "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
})


def _throttled_or_dropped(kwargs: dict[str, Any]) -> bool:
    caught = kwargs.get("caught_exception")
    if caught is not None:  # a reset or a read timeout passes; nothing listening at all does not
        return not isinstance(caught, EndpointConnectionError | ConnectTimeoutError)
    response = kwargs.get("response")
    if not response:
        return False
    http, parsed = response
    code = (parsed or {}).get("Error", {}).get("Code")
    return code in THROTTLING_CODES or getattr(http, "status_code", 0) == 429


class BudgetedRetries:
    """botocore's standard retry handler, with one attempt budget (and retry quota) for reads and a
    smaller one for writes. Reads are safe to repeat; a write retried many times against a struggling
    API is worse than a failed step that `stanch resume` re-plans."""

    def __init__(self, service: str, read_attempts: int, write_attempts: int) -> None:
        self.read = self._handler(service, read_attempts, READ_RETRY_QUOTA)
        self.write = self._handler(service, write_attempts, WRITE_RETRY_QUOTA)

    @staticmethod
    def _handler(service: str, attempts: int, capacity: int) -> tuple[Any, Any]:
        adapter = standard.RetryEventAdapter()
        throttling = standard.ThrottlingErrorDetector(adapter)
        checker = standard.RetryQuotaChecker(quota.RetryQuota(capacity), throttling)
        handler = standard.RetryHandler(
            retry_policy=standard.RetryPolicy(
                retry_checker=standard.StandardRetryConditions(max_attempts=attempts),
                retry_backoff=standard.ExponentialBackoff(service_name=service, throttling_detector=throttling)),
            retry_event_adapter=adapter, retry_quota=checker, service_name=service)
        return handler, checker

    def _for(self, operation: Any) -> tuple[Any, Any]:
        """(retry handler, retry quota) for a read or for a write."""
        return self.read if is_read_operation(getattr(operation, "name", "")) else self.write

    def needs_retry(self, **kwargs: Any) -> float | None:
        """Reads get the large budget against throttling and dropped connections, which pass; other
        errors (a 500 from an API that is down or unsupported) get the write budget, which fails fast."""
        handler = self._for(kwargs.get("operation"))[0]
        if handler is self.read[0] and not _throttled_or_dropped(kwargs):
            handler = self.write[0]
        delay: float | None = handler.needs_retry(**kwargs)
        return delay

    def release_quota(self, **kwargs: Any) -> None:
        self._for(kwargs.get("model"))[1].release_retry_quota(**kwargs)

    def install(self, client: Any) -> None:
        """Replace the handler botocore registered for the client's retry mode (adaptive mode keeps
        its client-side rate limiter, which is registered separately)."""
        event = client.meta.service_model.service_id.hyphenize()
        client.meta.events.unregister(f"needs-retry.{event}", unique_id=f"retry-config-{event}")
        client.meta.events.register(f"needs-retry.{event}", self.needs_retry, unique_id=f"retry-config-{event}")
        client.meta.events.register(f"after-call.{event}", self.release_quota, unique_id=f"retry-quota-{event}")


_LOADERS: dict[str, Any] = {}
_LOADERS_LOCK = threading.Lock()


def _boto_session(profile: str | None, region: str) -> boto3.Session:
    """A boto3 session whose botocore service models are parsed once per process: every run (and a
    worker runs many) would otherwise parse the same JSON again, over half a CPU second per service."""
    import boto3
    import botocore.loaders
    import botocore.session

    core = botocore.session.Session()
    path = str(core.get_config_variable("data_path") or "")
    with _LOADERS_LOCK:
        loader = _LOADERS.get(path)
        if loader is None:
            loader = _LOADERS[path] = botocore.loaders.create_loader(path or None)
        core.register_component("data_loader", loader)
        session = boto3.Session(botocore_session=core, profile_name=profile, region_name=region)
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))  # boto3 adds its own path per session
    return session


#: reads never kept: they return credentials or secret values, which stay out of memory we keep
UNCACHED_READS = frozenset({
    "GetSessionToken", "GetFederationToken", "GetSecretValue", "BatchGetSecretValue", "GetParameter",
    "GetParameters", "GetParametersByPath", "GetPasswordData", "GetAuthorizationToken", "GetCredentialReport",
})
#: refusals about the request rather than the account (credentials, signature, clock): never kept as answers
UNKEPT_ERRORS = frozenset({
    "ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "IncompleteSignature", "InvalidSignatureException", "AuthFailure", "RequestTimeout",
    "RequestTimeoutException", "IDPCommunicationError",
})
#: a write to the key also changes what reads of these services return
COUPLED_SERVICES = {
    "ec2": ("autoscaling",), "autoscaling": ("ec2",),
    "ecs": ("application-autoscaling",), "application-autoscaling": ("ecs",),
}
#: how long a thread waits for another thread's identical read before asking AWS itself
SINGLE_FLIGHT_WAIT_S = 120.0

_Key = tuple[str, str, str, str]  # region, service, operation, canonical parameters
_Answer = tuple[int, dict[str, str], dict[str, Any]]  # HTTP status, headers, parsed response


def is_cacheable(model: Any) -> bool:
    """An idempotent read whose answer is a document (not a stream, not a credential or a secret)."""
    name = str(model.name)
    return (name.startswith(READ_PREFIXES) and name not in UNCACHED_READS
            and not getattr(model, "has_streaming_output", False))


@dataclass
class _Flight:
    """One read being asked: the threads waiting for it wake up when it has an answer (or failed)."""

    generation: int
    done: threading.Event = field(default_factory=threading.Event)


class ReadCache:
    """The run's memo of reads, fed by botocore's events (so every action and paginator uses it).

    * key: (region, service, operation, parameters); only `is_cacheable` reads;
    * a write to a service (or to one coupled with it: ECS and Application Auto Scaling, EC2 and
      Auto Scaling) forgets every read of it, before the write is sent and again when it answers, and
      a read that was in flight across a write is not kept;
    * single flight: a thread asking a read another thread is already asking waits for that answer;
    * a definite error (4xx such as NoSuchEntity; not throttling, not an expired token or a bad
      signature) is an answer like any other;
    * a read that AWS answered with a server error (5xx, not throttling) after every retry is not
      asked again with the same parameters until the run writes to that service: the same error is
      given at once. The same operation with other parameters is still asked (one user's failing
      read must not fail every other user's);
    * answers are copied in and out: a caller never sees another caller's changes to a response.

    Off by default; the engine turns it on for a run and clears it before verification, which must
    see AWS as it is, not as it was.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._answers: dict[_Key, _Answer] = {}
        self._flights: dict[_Key, _Flight] = {}
        self._generation: Counter[str] = Counter()
        self._unavailable: dict[_Key, _Answer] = {}

    # -- control ---------------------------------------------------------------------------------
    def enable(self, on: bool = True) -> None:
        with self._lock:
            self.enabled = on
            if not on:
                self._forget_all()

    def clear(self) -> None:
        """Forget every answer (verification reads AWS afresh)."""
        with self._lock:
            self._forget_all()

    def _forget_all(self) -> None:
        self._answers.clear()
        self._unavailable.clear()
        for service in list(self._generation):
            self._generation[service] += 1
        self._generation["*"] += 1

    def _invalidate(self, service: str) -> None:
        with self._lock:
            for svc in (service, *COUPLED_SERVICES.get(service, ())):
                self._generation[svc] += 1
                for key in [k for k in self._answers if k[1] == svc]:
                    del self._answers[key]
                for key in [k for k in self._unavailable if k[1] == svc]:
                    del self._unavailable[key]

    # -- botocore event handlers -----------------------------------------------------------------
    def key_for(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        """before-parameter-build: remember the caller's parameters as the read's key."""
        if self.enabled and is_cacheable(model):
            body = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
            context["stanch_read_key"] = (str(context.get("client_region") or ""),
                                          model.service_model.service_name, model.name, body)

    def lookup(self, model: Any, context: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        """before-call: a kept answer (as botocore's (http, parsed)), or None to ask AWS. A write
        forgets its service's reads first. The caller that asks AWS becomes the read's flight."""
        from botocore.awsrequest import AWSResponse

        service = model.service_model.service_name
        context["stanch_call"] = (service, model.name)
        if not is_read_operation(model.name):
            self._invalidate(service)
            return None
        key = context.get("stanch_read_key")
        if key is None:
            return None
        deadline = time.monotonic() + SINGLE_FLIGHT_WAIT_S
        while True:
            with self._lock:
                if not self.enabled:
                    return None
                answer = self._answers.get(key) or self._unavailable.get(key)
                if answer is None:
                    flight = self._flights.get(key)
                    if flight is None or time.monotonic() > deadline:
                        self._flights[key] = _Flight(self._generation[service] + self._generation["*"])
                        context["stanch_read_flight"] = True
                        return None
                else:
                    self.hits[f"{model.service_model.signing_name}:{model.name}"] += 1
                    context["stanch_read_hit"] = True
                    status, headers, parsed = answer
                    return AWSResponse("", status, headers, None), copy.deepcopy(parsed)
            flight.done.wait(max(0.0, deadline - time.monotonic()))

    def store(self, http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any],
              **_: Any) -> None:
        """after-call (before botocore's own after-call handlers change `parsed` in place): keep the
        flight's answer, unless a write to its service happened while it was in flight."""
        service = model.service_model.service_name
        if not is_read_operation(model.name):
            self._invalidate(service)
            return
        key = context.get("stanch_read_key")
        if key is None or context.get("stanch_read_hit") or not context.get("stanch_read_flight"):
            return
        status = int(getattr(http_response, "status_code", 0) or 0)
        with self._lock:
            flight = self._flights.pop(key, None)
            current = self._generation[service] + self._generation["*"]
            if self.enabled and flight is not None and flight.generation == current:
                answer = (status, dict(getattr(http_response, "headers", {}) or {}), copy.deepcopy(parsed))
                code = (parsed or {}).get("Error", {}).get("Code")
                throttled = status == 429 or code in THROTTLING_CODES
                if 200 <= status < 300 or (300 <= status < 500 and not throttled and code not in UNKEPT_ERRORS):
                    # an answer, or a definite refusal about the account's state (NoSuchEntity)
                    self._answers[key] = answer
                elif status >= 500 and not throttled:
                    self._unavailable[key] = answer
        if flight is not None:
            flight.done.set()

    def failed(self, context: dict[str, Any], **_: Any) -> None:
        """after-call-error (no answer at all: a dropped connection after every retry): a write still
        forgets its service's reads; the waiters of a read wake up and ask themselves."""
        service, operation = context.get("stanch_call", ("", ""))
        if not is_read_operation(operation):
            self._invalidate(service)
            return
        key = context.get("stanch_read_key")
        if key is None or not context.get("stanch_read_flight"):
            return
        with self._lock:
            flight = self._flights.pop(key, None)
        if flight is not None:
            flight.done.set()

    def hit_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.hits.items()))


#: what STS accepts as a RoleSessionName
_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]")


def session_name(text: str) -> str:
    """`text` (a run id) as an STS RoleSessionName: 2-64 characters of [A-Za-z0-9_+=,.@-]."""
    name = _SESSION_NAME_BAD.sub("-", text)[:64]
    return name if len(name) >= 2 else f"stanch-{name}"


@dataclass(frozen=True)
class AssumedRole:
    """The role a security-account runner assumed in the incident's account (`[accounts] role_name`)."""

    role_arn: str
    session_name: str
    external_id: bool

    def to_json(self) -> dict[str, Any]:
        return {"role_arn": self.role_arn, "session_name": self.session_name, "external_id": self.external_id}


@dataclass(frozen=True)
class Identity:
    account: str
    arn: str
    principal_arn: str  # the IAM user or role behind an assumed-role session

    @staticmethod
    def from_caller(resp: dict[str, Any]) -> Identity:
        arn = str(resp["Arn"])
        principal = arn
        if ":assumed-role/" in arn:
            role = arn.split(":assumed-role/", 1)[1].split("/", 1)[0]
            principal = f"arn:aws:iam::{resp['Account']}:role/{role}"
        return Identity(account=str(resp["Account"]), arn=arn, principal_arn=principal)


class AwsSession:
    """A boto3 session for one run. Thread-safe: clients are created once under a lock."""

    def __init__(
        self,
        *,
        region: str,
        profile: str | None = None,
        endpoint_url: str | None = None,
        settings: AwsSection | None = None,
        dry_run: bool = False,
        max_pool_connections: int = 16,
        boto_session: boto3.Session | None = None,
    ) -> None:
        from botocore.config import Config as BotoConfig

        self.region = region
        self.endpoint_url = endpoint_url or None
        self.dry_run = dry_run
        self._settings = settings or AwsSection()
        self._session = boto_session or _boto_session(profile, region)
        self._boto_config = BotoConfig(
            retries={"mode": self._settings.retry_mode, "total_max_attempts": self._settings.max_attempts},
            connect_timeout=self._settings.connect_timeout,
            read_timeout=self._settings.read_timeout,
            max_pool_connections=max_pool_connections,
            user_agent_extra="stanch/0.1",
        )
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.refused: list[str] = []
        self._identity: Identity | None = None
        self._derived: dict[tuple[str, str], AwsSession] = {}
        #: the runner's own session: an incident account's session (assume_member) points back to it, so
        #: the Organizations role and the evidence bucket are reached with the runner's own credentials
        self.home: AwsSession = self
        self.assumed_role: AssumedRole | None = None
        self.started = time.monotonic()
        #: the run's read cache; off until the engine turns it on (each derived session has its own)
        self.reads = ReadCache()

    # -- hooks ---------------------------------------------------------------------------
    def _before_call(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]] | None:
        op = f"{model.service_model.signing_name}:{model.name}"
        if self.dry_run and not is_read_operation(model.name):
            with self._lock:
                self.refused.append(op)
            raise DryRunViolation(op)
        kept = self.reads.lookup(model, context)
        if kept is not None:  # answered from the run's cache: not an API call
            return kept
        with self._lock:
            self.calls[op] += 1
        return None

    # -- clients -------------------------------------------------------------------------
    def client(self, service: str, region: str | None = None) -> Any:
        key = (service, region or self.region)
        with self._lock:
            existing = self._clients.get(key)
            if existing is not None:
                return existing
            client = self._session.client(
                service, region_name=key[1], endpoint_url=self.endpoint_url, config=self._boto_config
            )
            client.meta.events.register("before-parameter-build.*.*", self.reads.key_for)
            client.meta.events.register("before-call.*.*", self._before_call)
            # after-call.*.* runs before botocore's own after-call handlers (which decode IAM policy
            # documents in place), so the cache keeps the answer as it came and replays it through them
            client.meta.events.register("after-call.*.*", self.reads.store)
            client.meta.events.register("after-call-error.*.*", self.reads.failed)
            BudgetedRetries(client.meta.service_model.service_id.hyphenize(), self._settings.read_max_attempts,
                            self._settings.max_attempts).install(client)
            self._clients[key] = client
            return client

    # -- derived sessions (same guard, counters and settings) -----------------------------------
    def _derive(self, creds: dict[str, Any]) -> AwsSession:
        import boto3

        return self._derive_session(boto3.Session(
            aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds.get("SessionToken"), region_name=self.region))

    def _derive_session(self, boto_session: boto3.Session) -> AwsSession:
        child = AwsSession(region=self.region, endpoint_url=self.endpoint_url, settings=self._settings,
                           dry_run=self.dry_run, max_pool_connections=self._boto_config.max_pool_connections,
                           boto_session=boto_session)
        child.calls, child.refused, child._lock = self.calls, self.refused, self._lock
        return child

    def assume_role(self, role_arn: str) -> AwsSession:
        """A session as `role_arn` (e.g. the Organizations management role), cached for the run. Always
        assumed from the runner's own credentials, never from an incident account's role."""
        if self.home is not self:
            return self.home.assume_role(role_arn)
        key = ("role", role_arn)
        if key not in self._derived:
            creds = self.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="stanch")["Credentials"]
            self._derived[key] = self._derive(creds)
        return self._derived[key]

    def assume_member(self, account: str, role_name: str, *, run_id: str, external_id: str = "") -> AwsSession:
        """The incident account's session: `arn:aws:iam::<account>:role/<role_name>` assumed from the
        runner's own credentials, the run id as session name (CloudTrail in that account names the run).
        botocore refreshes the credentials through the same AssumeRole before they expire."""
        import boto3
        import botocore.session
        from botocore.credentials import CredentialProvider, RefreshableCredentials

        home = self.home
        partition = "aws"
        with contextlib.suppress(KeyError, IndexError, ValueError):
            partition = home.identity().arn.split(":")[1] or "aws"
        role_arn = f"arn:{partition}:iam::{account}:role/{role_name}"
        key = ("member", role_arn)
        if key in home._derived:
            return home._derived[key]
        args: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": session_name(run_id)}
        if external_id:
            args["ExternalId"] = external_id

        def fetch() -> dict[str, Any]:
            c = home.client("sts").assume_role(**args)["Credentials"]
            expiry = c["Expiration"]
            return {"access_key": c["AccessKeyId"], "secret_key": c["SecretAccessKey"], "token": c["SessionToken"],
                    "expiry_time": expiry.isoformat() if hasattr(expiry, "isoformat") else str(expiry)}

        credentials = RefreshableCredentials.create_from_metadata(fetch(), fetch, "assume-role")

        class _Assumed(CredentialProvider):  # type: ignore[misc]
            METHOD = "assume-role"

            def load(self) -> Any:
                return credentials

        core = botocore.session.Session()
        core.get_component("credential_provider").insert_before("env", _Assumed())
        child = home._derive_session(boto3.Session(botocore_session=core, region_name=home.region))
        child.home = home
        child.assumed_role = AssumedRole(role_arn, args["RoleSessionName"], bool(external_id))
        home._derived[key] = child
        return child

    def assume_root(self, account: str, task_policy_arn: str = ROOT_TASK_DELETE_CREDENTIALS) -> AwsSession:
        """A task-scoped root session in a member account (sts:AssumeRoot), cached for the run."""
        key = ("root", f"{account}:{task_policy_arn}")
        if key not in self._derived:
            creds = self.client("sts").assume_root(
                TargetPrincipal=account, TaskPolicyArn={"arn": task_policy_arn}, DurationSeconds=900)["Credentials"]
            self._derived[key] = self._derive(creds)
        return self._derived[key]

    def identity(self) -> Identity:
        """The runner's own identity (sts:GetCallerIdentity), fetched once per run."""
        if self._identity is None:
            self._identity = Identity.from_caller(self.client("sts").get_caller_identity())
        return self._identity

    def call_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.calls.items()))

    def cached_counts(self) -> dict[str, int]:
        """Reads answered from the run's cache (not API calls), per operation."""
        return self.reads.hit_counts()
