"""Regenerate the committed stubs in src/flowtrack/v1 from protos/flowtrack/v1.

Runs grpc_tools.protoc with the Python, gRPC, mypy and mypy-grpc plugins into a
temporary folder and replaces the stubs with its output, so a removed .proto
leaves no stale stub behind.
Usage: python scripts/gen_protos.py           regenerate in place
       python scripts/gen_protos.py --check   exit 1 if the committed stubs differ
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
DESCRIPTORS = "flowtrack_v1.binpb"


def generate(out: Path) -> None:
    """Generate every stub of protos/flowtrack/v1 into `out` (a folder that
    will hold exactly the stubs and the package __init__)."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "flowtrack" / "v1").glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            # The protos with their comments, served by reflection for `grpcurl describe`.
            f"--descriptor_set_out={Path(tmp) / DESCRIPTORS}",
            "--include_source_info",
            *protos,
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"protoc failed:\n{done.stderr}")
        generated = Path(tmp) / "flowtrack" / "v1"
        for old in [*out.glob("*_pb2*"), *out.glob("*.binpb")]:
            old.unlink()
        out.mkdir(parents=True, exist_ok=True)
        for src in [*sorted(generated.iterdir()), Path(tmp) / DESCRIPTORS]:
            shutil.copyfile(src, out / src.name)
    (out / "__init__.py").write_text(
        '"""Generated gRPC and protobuf stubs of flowtrack.v1 (scripts/gen_protos.py). Do not edit."""\n'
    )


def main() -> int:
    if "--check" not in sys.argv[1:]:
        generate(OUT)
        print(f"generated {len(list(OUT.glob('*_pb2*')))} files in {OUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "v1"
        generate(fresh)
        names = sorted({p.name for p in fresh.iterdir()} | {p.name for p in OUT.iterdir() if p.is_file()})
        stale = [
            n
            for n in names
            if not (fresh / n).exists() or not (OUT / n).exists() or (fresh / n).read_bytes() != (OUT / n).read_bytes()
        ]
    if stale:
        print("stale generated stubs (run python scripts/gen_protos.py): " + ", ".join(stale))
        return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
