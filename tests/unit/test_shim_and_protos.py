import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_clientapp_shim_imports_neither_torch_nor_transformers():
    code = ("import sys, fedtl.client.shim as s; "
            "assert s.app is not None; "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_generated_proto_code_is_up_to_date(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_protos
    finally:
        sys.path.pop(0)
    fresh = gen_protos.generate(tmp_path)
    assert fresh
    for path in fresh:
        committed = ROOT / "protos" / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} missing: run python scripts/gen_protos.py"
        assert filecmp.cmp(path, committed, shallow=False), f"{committed} is stale: run python scripts/gen_protos.py"
