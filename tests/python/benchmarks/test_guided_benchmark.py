"""The guided-sampling benchmark's code path on the tiny model (a smoke run: timings are not checked)."""

from __future__ import annotations

import importlib.util
import json

import torch

from comfy_env import require_comfyui
from conftest import ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench():
    return _script("bench_guided_sampling")


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


class _SquareOfRelu(torch.nn.Module):
    """relu(linear(x)) squared: the linear saves only its (frozen) weight, the relu its output, and the square
    that same output twice."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 8).requires_grad_(False)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        y = self.relu(self.linear(x))
        return y * y


def test_saved_tensor_ledger_counts_each_storage_once_and_leaves_out_the_weights():
    memory = _script("guided_step_memory")
    model = _SquareOfRelu()
    x = torch.randn(3, 4, requires_grad=True)
    with memory.SavedTensorLedger(model) as ledger:
        out = model(x)
    assert ledger.bytes_by_module == {"relu": 3 * 8 * 4}  # the relu output, once: not the weight, not the square's
    assert ledger.total() == 96 and ledger.by(memory.module_kind) == {"ReLU": 96}
    out.sum().backward()  # the hooks hand back the tensors they were given
    torch.testing.assert_close(x.grad, (2 * model.relu(model.linear(x)) * (model.linear(x) > 0)) @ model.linear.weight)
    with torch.no_grad(), memory.SavedTensorLedger(model) as ledger:
        model(x)
    assert ledger.total() == 0  # nothing is kept without gradients: a plain step's case


def test_ledger_names_unet_blocks_and_tells_the_attentions_apart():
    memory = _script("guided_step_memory")
    assert memory.unet_block("output_blocks.9.1.transformer_blocks.0.ff.net.0", "GEGLU") == "output_blocks.9"
    assert memory.unet_block("middle_block.1.proj_in", "Linear") == "middle_block"
    assert memory.module_kind("input_blocks.1.1.transformer_blocks.0.attn2", "CrossAttention") == "CrossAttention (attn2)"
    assert memory.module_kind("input_blocks.1.1.transformer_blocks.0.attn2.to_q", "Linear") == "Linear"


def test_memory_report_of_one_guided_step_on_the_tiny_model(tmp_path):
    require_comfyui()
    out = tmp_path / "memory.json"
    assert _script("guided_step_memory").main(["--tiny", "--json", str(out)]) == 0
    passes = json.loads(out.read_text())["passes"]
    for found in passes.values():
        assert abs(sum(found["by_block_mib"].values()) - found["total_mib"]) < 1e-6
        assert abs(sum(found["by_kind_mib"].values()) - found["total_mib"]) < 1e-6
    # the batched pass keeps both CFG rows' activations; the split pass the conditional row's only, and of its
    # feed-forward blocks only the inputs (the GEGLU activations are recomputed in the backward)
    assert passes["split"]["total_mib"] < passes["batched"]["total_mib"] / 2
    assert "GEGLU" in passes["batched"]["by_kind_mib"] and "GEGLU" not in passes["split"]["by_kind_mib"]
    assert passes["split"]["by_kind_mib"]["FeedForward"] > 0
