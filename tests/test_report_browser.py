"""report.html in a real headless browser (Debian's chromium): what it shows, and that it fetches nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pyinfra_ratos.fleet.report import finish, render_html, set_printer, write_report

from test_report import fleet  # pytest puts tests/ on sys.path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run.sh installs it)")
# a reason a hostile Pi could send: markup and URLs that would fetch if they were not text
BROWSER_OWN = (".google.com", ".googleapis.com", ".gvt1.com", ".gstatic.com")
HOSTILE = ('see <img src="http://198.51.100.7/x.png"> and <link rel=stylesheet href="https://example.com/a.css">'
           ' <script src="//example.com/x.js"></script>')


def chromium(tmp_path: Path, page: Path, *extra: str, width: int = 1400) -> subprocess.CompletedProcess[str]:
    # no traffic leaves 127.0.0.0/8: as root the browser runs in a network namespace of its own
    # (loopback only), and every name resolves nowhere, every connection goes to a dead proxy
    isolate = ["unshare", "--net", "--"] if os.geteuid() == 0 and shutil.which("unshare") else []
    argv = [*isolate, str(CHROMIUM), "--headless", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9", "--disable-features=NetworkTimeServiceQuerying,OptimizationHints", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={width},900", *extra, page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def hostile_report() -> dict[str, Any]:
    report = fleet()
    set_printer(report, "vcore-04", reason=HOSTILE)
    return finish(report, stopped_early=report["stopped_early"], finished=report["finished"])


def test_the_attention_block_comes_first_and_nothing_is_fetched(tmp_path: Path) -> None:
    paths = write_report(hostile_report(), tmp_path / "report")
    net_log = tmp_path / "net-log.json"
    done = chromium(tmp_path, paths["html"], "--dump-dom", f"--log-net-log={net_log}")
    assert done.returncode == 0, done.stderr
    dom = done.stdout
    attention = re.search(r'<section id="attention">(.*?)</section>', dom, re.S)
    assert attention is not None and dom.index('id="attention"') < dom.index("<table")
    assert "Needs attention: 4 printers" in attention.group(1)
    for host in ("vcore-03", "vcore-04", "vcore-05", "vcore-06"):
        assert f"<b>{host}</b>" in attention.group(1)
    assert "--limit vcore-06 --attended-flash" in attention.group(1)
    # the hostile reason is text in the DOM: no element, so nothing to fetch
    assert "<img" not in dom and "<script" not in dom and "<link" not in dom
    assert "&lt;img src=" in dom
    # chromium's own record of every network request: none the page made. What is left is the
    # browser's own housekeeping (component updates, time), which never leaves the namespace
    events = json.loads(net_log.read_text() or "{}").get("events", [])
    assert events, "chromium wrote no net log"
    urls = {str(e.get("params", {}).get("url")) for e in events if "url" in e.get("params", {})}
    hosts = {urlsplit(url).hostname or "" for url in urls if not url.startswith(("file:", "data:", "chrome"))}
    assert not [h for h in hosts if not h.endswith(BROWSER_OWN)], urls


def _measure(tmp_path: Path, report: dict[str, Any], width: int) -> dict[str, Any]:
    """Lay the page out at ``width`` and measure it (a copy with a measuring script and no CSP:
    the report itself runs no script)."""
    page = render_html(report)
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    script = ("<script>const w=innerWidth;const out={width:w,scroll:document.documentElement.scrollWidth,"
              "reasons:[...document.querySelectorAll('tr.reason td')].map(e=>e.getBoundingClientRect().right),"
              "klippy:[...document.querySelectorAll('td[data-label=Klippy]')].filter(e=>e.offsetParent).length};"
              "document.body.setAttribute('data-measure',JSON.stringify(out));</script>")
    copy = tmp_path / f"measure-{width}.html"
    copy.write_text(page.replace("</body>", script + "</body>"), encoding="utf-8")
    done = chromium(tmp_path, copy, "--dump-dom", width=width)
    found = re.search(r'data-measure="([^"]*)"', done.stdout)
    assert found is not None, done.stderr
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.parametrize("width", [1400, 390])
def test_every_reason_and_klippy_state_is_visible_without_scrolling_sideways(tmp_path: Path, width: int) -> None:
    measured = _measure(tmp_path, fleet(), width)
    assert measured["reasons"] and max(measured["reasons"]) <= measured["width"], measured
    assert measured["scroll"] <= measured["width"], measured
    assert measured["klippy"] == 6
