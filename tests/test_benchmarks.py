"""The benchmark scripts run and write the JSON they promise (structure only: timings
are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_ops_writes_every_size_and_the_overhead_breakdown(tmp_path: Path) -> None:
    out = tmp_path / "ops.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_ops.py", "--ops", "sum", "--repeats", "1", "--json",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload = json.loads(out.read_text())
    assert [(r["op"], r["size"]) for r in payload["results"]] == [("sum", "64x64"), ("sum", "256x1024")]
    assert all(r["fwd_bwd_custom_s"] > 0 and r["fwd_bwd_native_s"] > 0 for r in payload["results"])
    variants = [row["variant"] for row in payload["overhead_breakdown"]]
    assert variants == ["torch.sigmoid", "bare autograd.Function, same kernels", "custom_ops.sigmoid"]
    assert payload["overhead_breakdown"][0]["ratio_to_torch"] == 1.0
    assert "where 64x64 sigmoid forward + backward time goes" in done.stdout
