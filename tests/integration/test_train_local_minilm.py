"""The real thing: `fedtl train-local` on a bundled site with all-MiniLM-L6-v2, on CPU."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def fedtl_bin() -> str:
    exe = Path(sys.executable).with_name("fedtl")
    return str(exe) if exe.exists() else shutil.which("fedtl")


def test_train_local_minilm_improves_over_untrained_head(tmp_path):
    subprocess.run([fedtl_bin(), "examples", str(tmp_path)], check=True, capture_output=True)
    out = tmp_path / "clinic.json"
    start = time.monotonic()
    proc = subprocess.run(
        [fedtl_bin(), "train-local", "--config", str(tmp_path / "sites" / "clinic.yaml"), "--json", str(out), "-q"],
        capture_output=True, text=True, timeout=300,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["encoder"] == "minilm"
    before = summary["metrics"]["before"]["sentiment"]["macro_f1"]
    final = summary["metrics"]["final"]["sentiment"]["macro_f1"]
    assert final > before + 0.1, (before, final)
    assert (tmp_path / "state" / "clinic" / "local" / "heads" / "sentiment.safetensors").exists()
    print(f"train-local clinic (minilm, cpu): macro-F1 {before:.3f} -> {final:.3f} in {elapsed:.0f}s")
