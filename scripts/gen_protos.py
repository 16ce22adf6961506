"""Regenerate the Python code for protos/fedtl/v1/*.proto, next to the .proto files.

The proto package ``fedtl.v1`` is installed as the Python package ``fedtl.v1`` (see
pyproject.toml), so generated imports such as ``from fedtl.v1 import site_pb2`` resolve.
tests/unit/test_protos.py fails when the committed code is stale.

    python scripts/gen_protos.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "protos"


def generate(out: Path = ROOT) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "fedtl").rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
            f"--pyi_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in out.rglob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
