"""Every benchmark in bench/ runs at its ``--smoke`` size, so a benchmark that no longer runs fails here.

These tests time nothing: the ceiling only catches a benchmark that hangs. The figures come from the
scripts themselves at full size (bench/README.md).
"""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))
HANG_CEILING_SECONDS = 300


def test_every_benchmark_is_covered():
    assert {"close.py", "ingest.py", "matching.py", "posting.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_at_smoke_size(script, tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=HANG_CEILING_SECONDS)
    assert done.returncode == 0, f"{script} --smoke failed:\n{done.stdout}\n{done.stderr}"
    assert "goal" in done.stdout, f"{script} does not print its goal:\n{done.stdout}"
