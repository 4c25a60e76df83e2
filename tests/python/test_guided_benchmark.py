"""The guided-sampling benchmark's code path on the tiny model (a smoke run: timings are not checked)."""

from __future__ import annotations

import importlib.util
import json

from comfy_env import require_comfyui
from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_guided_sampling",
                                                  ROOT / "tests" / "benchmarks" / "bench_guided_sampling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_runs_every_configuration_and_reports_ratios_to_plain(tmp_path):
    require_comfyui()
    bench = _bench()
    out = tmp_path / "guided.json"
    assert bench.main(["--tiny", "--device", "cpu", "--steps", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (case,) = report["cases"]
    assert case["family"] == "sd1" and case["steps"] == 2
    assert set(case["runs"]) == {"plain", *bench.VARIANTS}
    for name, run in case["runs"].items():
        assert run["finite"], name
        assert run["seconds"] > 0 and run["time_ratio"] > 0 and run["seconds_per_step"] == run["seconds"] / 2
    assert case["runs"]["plain"]["time_ratio"] == 1.0


def test_op_counts_of_plain_and_guided_steps(tmp_path):
    require_comfyui()
    out = tmp_path / "ops.json"
    assert _bench().main(["--tiny", "--device", "cpu", "--count-ops", "--json", str(out)]) == 0
    counts = json.loads(out.read_text())["ops_per_step"]
    # a backward on top of the forward, and the recorder and the energy on top of that
    assert 100 < counts["plain"] < counts["gradient_only"] < counts["guided_all"]
