"""Each benchmark runs once at tiny sizes, as `make bench*` runs it, so none can rot unseen.
Slow (each script starts fresh processes and measures). The figures are not checked: the
benchmarks print measurements, and a smoke run only shows that they still measure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL_RUNS = {
    "bench_model": ["--frames", "2", "--size", "16", "--repeats", "1", "--only", "basicvsr_tiny",
                    "--inference-frames", "2", "--inference-backbones", "basicvsr"],
    "bench_upscale": ["--sizes", "32x24:3", "--no-paper-plan", "--encoder", "--soundtrack",
                      "0.1", "0.2"],
    "bench_data_ave": ["--sections", "ave", "--ave-clips", "2", "--ave-batches", "1"],
}


@pytest.mark.parametrize("run", SMALL_RUNS)
def test_a_benchmark_runs_at_tiny_sizes(run: str, tmp_path: Path) -> None:
    script = BENCHMARKS / f"{run.removesuffix('_ave')}.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCHMARKS.parent / "src")}
    result = subprocess.run([sys.executable, str(script), *SMALL_RUNS[run]], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the benchmark printed nothing"
