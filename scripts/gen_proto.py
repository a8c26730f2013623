"""Regenerate the checked-in Python for every `.proto` under `proto/`.

Run as `python scripts/gen_proto.py` (or `make proto`). Output goes to
`services/common/pb/`; the files are never edited by hand, and the test suite
fails when they drift from the `.proto` sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_PACKAGE = "services/common/pb"


def generate(out_root: Path = ROOT) -> list[Path]:
    """Run protoc; return the generated files (relative to `out_root`)."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_DIR.glob("*.proto"))
    # Map proto/ onto the package path so generated imports are absolute
    # (`from services.common.pb import inference_pb2`).
    args = [
        "protoc",
        f"-I{OUT_PACKAGE}={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{OUT_PACKAGE}/{p.name}" for p in protos),
    ]
    (out_root / OUT_PACKAGE).mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for module in (out_root / OUT_PACKAGE).glob("*_pb2.py"):
        _use_private_pool(module)
    return sorted((out_root / OUT_PACKAGE).glob("*_pb2*.py*"))


def _use_private_pool(module: Path) -> None:
    """Register our descriptors in hfmesh's own pool, not protobuf's default.

    `tritonclient` registers the same `inference.*` message names in the default
    pool; two registrations of one name in one process are an error, and tests,
    benches and users' programs import both. Wire compatibility is unaffected.
    """
    text = module.read_text()
    marker = "_descriptor_pool.Default().AddSerializedFile("
    if marker not in text:
        raise SystemExit(f"unexpected protoc output in {module}")
    text = text.replace(marker, "_hfmesh_pool.POOL.AddSerializedFile(")
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        "from google.protobuf import descriptor_pool as _descriptor_pool\n"
        "from services.common.pb import pool as _hfmesh_pool\n",
    )
    module.write_text(text)


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
