"""Take the screenshots of the campaign page that docs/ shows.

Starts a flowtrack server of its own (a SQLite file in a temporary folder,
open mode: no API key, loopback only), drives a simulated campaign into it
(`flowtrack simulate`), opens the campaign's page in headless Chromium
(Playwright) and writes:

    docs/campaign-page.png      the top of the page: title, live line, the tiles
    docs/page-timeline.png      the timeline: status events, clicks and engagement
    docs/page-clicks.png        clicks: the map, per link, country, region, city
    docs/page-ab.png            the A/B test: which variant leads on which rate
    docs/page-replies.png       the Replies tab

    python3 scripts/screenshots.py                # all of them, into docs/
    python3 scripts/screenshots.py --out /tmp/x   # elsewhere

Needs Chromium (/usr/bin/chromium, or FLOWTRACK_CHROMIUM) and Playwright,
as tests/test_browser.py does. Run it from the checkout whose page you
want: the server is this checkout's (`PYTHONPATH=src` is set for it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FLOWTRACK_CHROMIUM", "/usr/bin/chromium")
CAMPAIGN = "spring-sale"
WIDTH = 1280


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def shoot(url: str, out: Path) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    written: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.on("pageerror", lambda e: print("page error:", e, file=sys.stderr))
        page.on("console", lambda m: print("console:", m.text, file=sys.stderr) if m.type == "error" else None)
        page.goto(f"{url}/campaigns/{CAMPAIGN}")
        page.wait_for_selector("#tiles .tile", timeout=60_000)
        page.wait_for_selector("#timeline-chart svg .y-tick", timeout=60_000)
        page.wait_for_selector("#map circle.point", timeout=60_000)
        page.wait_for_selector("#reply-table tbody tr", state="attached", timeout=60_000)
        page.wait_for_selector("table.ab", timeout=60_000)
        page.wait_for_timeout(500)

        def save(name: str, selector: str | None = None) -> None:
            path = out / name
            if selector is None:
                page.screenshot(path=str(path), full_page=False)
            else:
                page.locator(selector).screenshot(path=str(path))
            written.append(path)

        save("campaign-page.png")
        save("page-timeline.png", "#timeline")
        save("page-clicks.png", "#clicks")
        save("page-ab.png", "#ab")
        page.click("#tab-replies")
        expect(page.locator("#replies")).to_be_visible()
        save("page-replies.png", "#messages")
        browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNG files (default docs/)")
    parser.add_argument("--recipients", type=int, default=2000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    grpc, http = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="flowtrack-shots-") as tmp:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flowtrack",
                "serve",
                "--listen",
                f"127.0.0.1:{grpc}",
                "--http",
                f"127.0.0.1:{http}",
                "--database",
                str(Path(tmp) / "flowtrack.db"),
                "--log-level",
                "WARNING",
            ],
            env=env,
            cwd=tmp,
        )
        try:
            url = f"http://127.0.0.1:{http}"
            wait_http(url + "/openapi.json", time.monotonic() + 60)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "flowtrack",
                    "simulate",
                    "--campaign",
                    CAMPAIGN,
                    "--recipients",
                    str(args.recipients),
                    "--seed",
                    "7",
                    "--quiet",
                    "--address",
                    f"127.0.0.1:{grpc}",
                ],
                env=env,
                cwd=tmp,
                check=True,
            )
            for path in shoot(url, args.out):
                print(path)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
