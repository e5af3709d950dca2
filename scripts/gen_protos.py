"""Regenerate the committed stubs in src/flowtrack/v1 from protos/flowtrack/v1.

Runs grpc_tools.protoc with the Python, gRPC, mypy and mypy-grpc plugins into a
temporary folder and replaces the stubs with its output, so a removed .proto
leaves no stale stub behind.
Usage: python scripts/gen_protos.py   (CI runs it and fails on any diff)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "src" / "flowtrack" / "v1"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "flowtrack" / "v1").glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTO_ROOT}", f"-I{well_known}",
            f"--python_out={tmp}", f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}", f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        subprocess.run(cmd, check=True, cwd=ROOT)
        generated = Path(tmp) / "flowtrack" / "v1"
        for old in OUT.glob("*_pb2*"):
            old.unlink()
        OUT.mkdir(parents=True, exist_ok=True)
        for src in sorted(generated.iterdir()):
            shutil.copyfile(src, OUT / src.name)
    init = OUT / "__init__.py"
    init.write_text('"""Generated gRPC and protobuf stubs of flowtrack.v1 (scripts/gen_protos.py). Do not edit."""\n')
    print(f"generated {len(list(OUT.glob('*_pb2*')))} files in {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
