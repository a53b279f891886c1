"""Shared fixtures. Every AWS call goes to moto: in-process (`aws`) or a private moto server on
127.0.0.1 (`moto_server`). Credentials are fake and AWS_PROFILE is unset for every test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EXAMPLE_INCIDENT = ROOT / "tests" / "data" / "incident-cryptojacking.json"


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "STANCH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("STANCH_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def aws() -> Iterator[boto3.Session]:
    """In-process moto, without AWS-managed policies (fast)."""
    from moto import mock_aws

    with mock_aws():
        yield boto3.Session(region_name="us-east-1")


@pytest.fixture
def aws_managed() -> Iterator[boto3.Session]:
    """In-process moto with AWS-managed policies (AdministratorAccess); about a second slower."""
    from moto import mock_aws

    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        yield boto3.Session(region_name="us-east-1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, url: str) -> None:
        self.url = url

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=60).read()  # a run that searched every region leaves a lot to reset

    def session(self) -> boto3.Session:
        return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")

    def client(self, service: str) -> Any:
        return self.session().client(service, endpoint_url=self.url)


@pytest.fixture(scope="session")
def moto_server_process() -> Iterator[MotoServer]:
    port = _free_port()
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("moto server did not start")
        yield MotoServer(url)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def moto_server(moto_server_process: MotoServer, monkeypatch: pytest.MonkeyPatch,
                tmp_path_factory: pytest.TempPathFactory) -> MotoServer:
    """A clean private moto server on 127.0.0.1; AWS_ENDPOINT_URL points at it. Runs search two regions
    (STANCH_CONFIG): the all-region search has its own in-process tests, and over HTTP it is slow."""
    moto_server_process.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server_process.url)
    config = tmp_path_factory.mktemp("config") / "two-regions.toml"
    config.write_text('[aws]\nregions = ["us-east-1", "eu-west-1"]\n')
    monkeypatch.setenv("STANCH_CONFIG", str(config))
    return moto_server_process


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    return path
