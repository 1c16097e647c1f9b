"""benchmarks/gpu_check.sh --cpu-dry-run: the GPU check kit's parts run on the CPU with tiny sizes,
so the kit does not rot between the rare sessions that have a GPU (about 40 s on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = {"env.txt", "build.log", "pytest.xml", "pytest.log", "steps.json", "throughput.json", "throughput.md", "summary.md"}


@pytest.mark.slow
def test_cpu_dry_run_writes_every_file_and_says_what_ran(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    written = {p.name for p in out.iterdir()}
    assert written == FILES, f"{written} (output: {done.stdout[-2000:]})"

    summary = (out / "summary.md").read_text()
    parts = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines()
             if line.startswith("| ") and line.count("|") == 5}
    assert {k: parts.get(k) for k in ("env", "install", "build", "pytest", "steps", "throughput")} == {
        "env": "ok", "install": "ok", "build": "skipped", "pytest": "ok", "steps": "ok", "throughput": "ok"}, summary
    assert "CPU dry run" in summary and "PYTHONPATH shim" in summary and "MKGAN_DISABLE_CPP_EXT" in summary
    assert "Logs of the parts that failed" not in summary

    suite = ET.parse(out / "pytest.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) > 0 and suite.get("skipped") == suite.get("tests")  # no CUDA: all skipped
    steps = json.loads((out / "steps.json").read_text())
    for trainer in ("kernelgan", "zssr"):
        assert [r["members"] for r in steps[trainer]] == [1, 2]
        assert all(r["step_ms"] > 0 and r["aten_ops_per_step"] > 0 for r in steps[trainer]), steps[trainer]
    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["complete"] and [p["path"] for p in throughput["paths"]] == ["batched", "unbatched", "packed"]
    assert "| batched |" in (out / "throughput.md").read_text() and "| batched |" in summary
