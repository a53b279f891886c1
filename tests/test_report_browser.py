"""The HTML report in a real browser (headless Chromium driven by Playwright's Python API): at a
desktop and a phone width nothing overflows sideways and no timestamp wraps; it has a print
stylesheet that prints.

Chromium is Debian's `chromium` package (`.ci/run` installs it as root when missing), never a
browser Playwright downloads; set STANCH_CHROMIUM to use another executable. Screenshots go to the test run's state directory
(and to $STANCH_SCREENSHOT_DIR, when set, for CI to keep)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.drill import root_keys_present, seed
from tests.conftest import use_attack_trail, write_json

NAMES = {"user": "deploy-bot-7", "group": "release-eng", "cluster": "search-indexing", "service": "reindex-nightly",
         "image": "ghcr.io/some-org/xmrig-cuda-very-long-image-name-for-layout-tests:6.21.0"}
WIDTHS = (1280, 390)

MEASURE = """() => {
  const broken = [...document.querySelectorAll('time')].filter(el => el.getClientRects().length > 1)
    .map(el => el.textContent);
  const wide = [...document.querySelectorAll('body *')].filter(el => el.getBoundingClientRect().right >
    window.innerWidth + 1).slice(0, 5).map(el => el.tagName + ': ' + el.textContent.slice(0, 60));
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
          times: document.querySelectorAll('time').length, brokenTimes: broken, wide: wide,
          bodyMaxWidth: getComputedStyle(document.body).maxWidth};
}"""


def chromium() -> str | None:
    for name in (os.environ.get("STANCH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture
def report_page(aws_managed: boto3.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = seed(aws_managed, NAMES)
    use_attack_trail(aws_managed, data, monkeypatch, tmp_path)
    root_keys_present(True)
    state = os.environ["STANCH_STATE_DIR"]
    incident = write_json(tmp_path / "incident.json", data["incident"])
    run = CliRunner().invoke(app, ["run", str(incident), "--approve-all", "--by", "night-shift", "-o", "json",
                                   "--state-dir", state])
    assert run.exit_code == 5, run.output
    page = tmp_path / "report.html"
    out = CliRunner().invoke(app, ["report", data["incident"]["id"], "-o", "html", "-f", str(page),
                                   "--state-dir", state])
    assert out.exit_code == 0, out.output
    return page


def test_html_report_fits_desktop_and_phone_and_prints(report_page: Path) -> None:
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, as .ci/run does as root; or set STANCH_CHROMIUM): "
                    "the browser check of the HTML report did not run")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed: "
                                   "the browser check of the HTML report did not run")
    html = report_page.read_text()
    assert "<script" not in html
    shots = Path(os.environ["STANCH_STATE_DIR"]) / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(report_page.as_uri())
                m: dict[str, Any] = page.evaluate(MEASURE)
                assert m["innerWidth"] == width
                assert m["scrollWidth"] <= m["innerWidth"], (width, m)
                assert m["times"] > 10 and m["brokenTimes"] == [], (width, m["brokenTimes"])
                page.screenshot(path=str(shots / f"report-{width}.png"), full_page=True)
                page.close()
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report_page.as_uri())
            assert page.evaluate(MEASURE)["bodyMaxWidth"] == "1100px"
            page.emulate_media(media="print")  # the print stylesheet applies
            printed = page.evaluate(MEASURE)
            assert printed["bodyMaxWidth"] == "none" and printed["brokenTimes"] == []
            page.pdf(path=str(shots / "report-print.pdf"), format="A4")
        finally:
            browser.close()
    assert (shots / "report-print.pdf").read_bytes().startswith(b"%PDF")
    assert all((shots / f"report-{w}.png").stat().st_size > 10_000 for w in WIDTHS)
    keep = os.environ.get("STANCH_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for f in shots.iterdir():
            shutil.copy2(f, Path(keep) / f.name)
