"""Shared fixtures. Every AWS call goes to moto: in-process (`aws`) or a private moto server on
127.0.0.1 (`moto_server`). Credentials are fake and AWS_PROFILE is unset for every test.

The suite runs in parallel (pytest-xdist, `-n auto` in pyproject.toml): every worker process has
its own moto server on a port the kernel picked, and every test its own state directory. What is
slow and identical between tests is done once per worker: botocore's service models are parsed
once (not once per boto3 session), and moto loads only the AWS-managed policies the tests use."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, settings

from tests.motoserver import TEST_MANAGED_POLICIES, only_managed_policies
from tests.motoserver import start as start_moto_server
from tests.motoserver import stop as stop_moto_server

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EXAMPLE_INCIDENT = ROOT / "tests" / "data" / "incident-cryptojacking.json"

# property tests that set no max_examples of their own take the profile's: a few dozen examples in the
# suite (hypothesis replays any failure it found from its database first), hundreds with
# HYPOTHESIS_PROFILE=thorough; bench/fuzz.py runs thousands
settings.register_profile("suite", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

_HIDDEN = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "STANCH_CONFIG",
           "STANCH_JOURNAL")


def _fake_credentials(mp: pytest.MonkeyPatch) -> None:
    for var in _HIDDEN:
        mp.delenv(var, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_CONFIG_FILE", os.devnull)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each `xdist_group` on one worker. pytest-xdist's loadgroup groups the node ids a worker
    collected by an `@group` suffix, which it writes to `item._nodeid`; pytest 9.2 keeps the node id
    in `item._id` instead, so the suffix never appeared, every group was split across workers and
    their module-scoped fixtures (one recorded containment) ran once per worker. Write the suffix
    where this pytest reads it; nothing to do where xdist's own suffix shows."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # an older pytest, where xdist's suffix works
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix) and isinstance(getattr(item, "_id", None), NodeId):
            item._id = NodeId.parse(item.nodeid + suffix)


@pytest.fixture(scope="session", autouse=True)
def _fake_aws_env_for_the_session() -> Iterator[None]:
    """Fake credentials before any fixture runs, module-scoped ones included."""
    with pytest.MonkeyPatch.context() as mp:
        _fake_credentials(mp)
        # moto's EC2 loads its catalogue of public AMIs for every fresh account (a quarter of a CPU
        # second); the tests use EC2 only for the default VPC's subnet and security group
        mp.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        yield


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_credentials(monkeypatch)
    monkeypatch.setenv("STANCH_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture(scope="session", autouse=True)
def _parse_service_models_once() -> Iterator[None]:
    """Every new boto3 session re-reads and re-parses botocore's service models (ec2's alone is
    megabytes of JSON): share one loader between the sessions of this test process. Read-only data;
    the loader caches what it parsed."""
    import botocore.loaders
    import botocore.session

    loaders: dict[Any, Any] = {}
    original = botocore.session.Session._register_data_loader

    def shared_loader(self: botocore.session.Session) -> None:
        def make() -> Any:
            path = self.get_config_variable("data_path")
            if path not in loaders:
                loaders[path] = botocore.loaders.create_loader(path)
            return loaders[path]

        self._components.lazy_register_component("data_loader", make)

    botocore.session.Session._register_data_loader = shared_loader
    try:
        yield
    finally:
        botocore.session.Session._register_data_loader = original


@pytest.fixture(scope="session", autouse=True)
def _build_clients_from_shared_parts() -> Iterator[None]:
    """botocore builds a new service model and a new client class (a method per operation: ec2 has
    about 600) for every client, and walks every operation for endpoint discovery. A run searching
    every region makes ~100 clients of a few services: share each service's model between clients
    (read-only; same loader, same model) and build its class once per boto3 session (same event
    handlers, same class). About half of a run's CPU in the tests."""
    import threading
    import weakref

    import botocore.client

    lock = threading.Lock()
    models: weakref.WeakKeyDictionary[Any, dict[tuple[str, str | None], Any]] = weakref.WeakKeyDictionary()
    classes: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], type]] = weakref.WeakKeyDictionary()
    creator = botocore.client.ClientCreator
    load_model, create_class = creator._load_service_model, creator._create_client_class

    def shared(cache: weakref.WeakKeyDictionary[Any, dict[Any, Any]], owner: Any, key: Any, make: Any) -> Any:
        with lock:
            found = cache.setdefault(owner, {}).get(key)
        if found is None:
            found = make()
            with lock:
                cache[owner][key] = found
        return found

    def load_service_model(self: Any, service_name: str, api_version: str | None = None) -> Any:
        return shared(models, self._loader, (service_name, api_version),
                      lambda: load_model(self, service_name, api_version))

    def create_client_class(self: Any, service_name: str, service_model: Any) -> type:
        return shared(classes, self._event_emitter, (service_name, service_model.api_version),
                      lambda: create_class(self, service_name, service_model))

    creator._load_service_model, creator._create_client_class = load_service_model, create_client_class
    try:
        yield
    finally:
        creator._load_service_model, creator._create_client_class = load_model, create_class


@pytest.fixture(scope="session", autouse=True)
def _few_managed_policies() -> None:
    """Where a test asks moto for AWS-managed policies, it gets AdministratorAccess and a few broad
    decoys instead of all ~1,600 (parsed again on every reset: about a second per test)."""
    only_managed_policies(TEST_MANAGED_POLICIES)


@pytest.fixture
def aws() -> Iterator[boto3.Session]:
    """In-process moto, without AWS-managed policies (fast)."""
    from moto import mock_aws

    with mock_aws():
        yield boto3.Session(region_name="us-east-1")


@pytest.fixture
def aws_managed() -> Iterator[boto3.Session]:
    """In-process moto with AWS-managed policies (AdministratorAccess and a few others)."""
    from moto import mock_aws

    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        yield boto3.Session(region_name="us-east-1")


@pytest.fixture
def aws_all_managed(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    """In-process moto with every AWS-managed policy moto knows: about a second slower per test, for
    a test that needs one outside tests.motoserver.TEST_MANAGED_POLICIES."""
    import moto.iam.aws_managed_policies
    import moto.iam.models
    from moto import mock_aws

    monkeypatch.setattr(moto.iam.models, "aws_managed_policies_data",
                        moto.iam.aws_managed_policies.aws_managed_policies_data)
    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        yield boto3.Session(region_name="us-east-1")


class MotoServer:
    def __init__(self, url: str) -> None:
        self.url = url

    def reset(self) -> None:
        import urllib.request

        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=60).read()  # a run that searched every region leaves a lot to reset

    def session(self) -> boto3.Session:
        return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")

    def client(self, service: str) -> Any:
        return self.session().client(service, endpoint_url=self.url)


@pytest.fixture(scope="session")
def moto_server_process() -> Iterator[MotoServer]:
    """One moto server per test process (each xdist worker has its own, on its own port)."""
    proc, url = start_moto_server()
    try:
        yield MotoServer(url)
    finally:
        stop_moto_server(proc)


@pytest.fixture
def moto_server(moto_server_process: MotoServer, monkeypatch: pytest.MonkeyPatch,
                tmp_path_factory: pytest.TempPathFactory) -> MotoServer:
    """A clean private moto server on 127.0.0.1; AWS_ENDPOINT_URL points at it. Runs search two regions
    (STANCH_CONFIG): the all-region search has its own in-process tests, and over HTTP it is slow."""
    moto_server_process.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server_process.url)
    config = tmp_path_factory.mktemp("config") / "two-regions.toml"
    config.write_text(TWO_REGIONS + "\n" + TRAIL_CONFIG)
    monkeypatch.setenv("STANCH_CONFIG", str(config))
    return moto_server_process


#: what a test's runs search when the region search is not its subject: the home region and one more.
#: Searching every region moto knows (~25) costs a run about a second of CPU; the all-region search
#: has its own tests (tests/test_regions.py, the drill), and most modules still search them all
TWO_REGIONS = '[aws]\nregions = ["us-east-1", "eu-west-1"]\n'


@pytest.fixture
def two_regions(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs without a --config of their own search two regions (STANCH_CONFIG); the config's path."""
    config = tmp_path_factory.mktemp("config") / "two-regions.toml"
    config.write_text(TWO_REGIONS)
    monkeypatch.setenv("STANCH_CONFIG", str(config))
    return config


@pytest.fixture(scope="session")
def dry_run_drill(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`stanch drill --dry-run` run once, its output read by the tests that only look at it (mark them
    `xdist_group("dry-run-drill")` so they share a worker and so this run)."""
    from typer.testing import CliRunner

    from runner.cli import app

    return CliRunner().invoke(app, ["drill", "--dry-run", "--state-dir", str(tmp_path_factory.mktemp("drill"))])


#: the organization trail's bucket in test accounts (see publish_trail)
TRAIL_BUCKET = "org-cloudtrail-test"


def publish_trail(session: Any, seeded: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> None:
    """Write the CloudTrail of `seed`'s attack to the test account's trail bucket, as an organization
    trail would: runs against `moto_server` read it through `[intake] cloudtrail_s3_uri`."""
    import gzip

    from runner.drill import attack_trail

    s3 = session.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=TRAIL_BUCKET)
    records = [*attack_trail(seeded).records, *(extra or [])]
    key = f"AWSLogs/{seeded['incident']['account_id']}/CloudTrail/us-east-1/trail-{len(records)}.json.gz"
    s3.put_object(Bucket=TRAIL_BUCKET, Key=key, Body=gzip.compress(json.dumps({"Records": records}).encode()))


TRAIL_CONFIG = f'[intake]\ncloudtrail_s3_uri = "s3://{TRAIL_BUCKET}/AWSLogs/"\n'


def use_attack_trail(session: Any, seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                     two_regions: bool = False) -> None:
    """Publish the seeded attack's CloudTrail to the trail bucket and point this test's runs at it
    (STANCH_CONFIG), as an account with an organization trail would be set up; `two_regions`: the
    runs search two regions (TWO_REGIONS), not every one."""
    publish_trail(session, seeded)
    config = tmp_path / "trail-config.toml"
    config.write_text((TWO_REGIONS + "\n" if two_regions else "") + TRAIL_CONFIG)
    monkeypatch.setenv("STANCH_CONFIG", str(config))


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    return path


#: the webhook secret of the tests' notifications (`webhook_secret_env` names a variable holding it)
HOOK_SECRET = "whsec-test-0123456789abcdef"


class Hook:
    """A webhook receiver on 127.0.0.1 that keeps what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stanch?token=hook-url-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def messages(self) -> list[dict[str, Any]]:
        """What was sent, each signed with HOOK_SECRET (and not with another secret, nor for another body)."""
        from runner.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

        out = []
        for headers, body in self.received:
            assert verify_signature(HOOK_SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
            assert not verify_signature("another-secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
            assert not verify_signature(HOOK_SECRET, headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
            out.append(json.loads(body))
        return out


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()
