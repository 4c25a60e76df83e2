"""The objective-evidence report on tiny SD1.x- and SDXL-shaped UNets: every claim it checks must hold."""

from __future__ import annotations

import importlib.util
import json

from comfy_env import require_comfyui
from conftest import ROOT


def _report_module():
    spec = importlib.util.spec_from_file_location("guidance_evidence", ROOT / "tests" / "evaluation" / "guidance_evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_report(tmp_path, model, multipliers=("0", "1", "3"), seed="0"):
    code = _report_module().main(["--model", model, "--steps", "4", "--seeds", seed, "--multipliers", *multipliers,
                                  "--out", str(tmp_path)])
    report = json.loads((tmp_path / "evidence.json").read_text())
    assert (tmp_path / "evidence.png").stat().st_size > 10_000
    assert len(report["claims"]) == 9
    return code, {c["claim"]: c for c in report["claims"]}, report


def test_sd1_guidance_lowers_both_energies_without_hurting_the_other_term(tmp_path):
    """Every claim but one holds on the SD1-shaped tiny model. With both terms on, the UREMD can end a little higher
    at a larger strength than at a smaller one (both below the unguided run; the kept sd1-tiny report in
    tests/evaluation/README.md): the layout term's share wins that step. As on SDXL, a random model's two energies
    need not agree, so that claim is measured and printed, not asserted."""
    require_comfyui()
    _, claims, report = _run_report(tmp_path, "sd1-tiny")
    failed = [c for c in claims.values() if not c["pass"] and c["claim"] != "appearance does not rise with strength (both)"]
    assert not failed, failed
    sweep = report["results"][0]["sweep"]["both"]
    assert [row["multiplier"] for row in sweep] == [0, 1, 3]
    assert sweep[-1]["appearance"] < sweep[0]["appearance"] and sweep[-1]["layout"] < sweep[0]["layout"]


def test_sdxl_guidance_lowers_each_energy_it_guides(tmp_path):
    """On the SDXL-shaped tiny model each term lowers its own energy, monotonically, and the template
    reproduces itself. The claims about the UREMD with both terms on, and about layout-only guidance's effect
    on it, are measured but not asserted: a random model's two energies need not agree, and the layout term's
    share can win a step (the kept sdxl-tiny report in tests/evaluation/README.md); the report prints what it
    measured."""
    require_comfyui()
    _, claims, _ = _run_report(tmp_path, "sdxl-tiny")
    for text in ("template run reproduces its own layout (loss < 1e-5)",
                 "layout lower with guidance than without at every strength",
                 "layout does not rise with strength (both)",
                 "appearance does not rise with strength (appearance_only)",
                 "layout does not rise with strength (layout_only)",
                 "appearance only raises layout by at most 5%"):
        assert claims[text]["pass"], claims[text]


def test_a_sign_error_in_the_guidance_fails_the_report(tmp_path, monkeypatch):
    """The report is only evidence if it can fail: with the update's sign flipped the energies rise."""
    host = require_comfyui()
    original = host.guide_model

    def flipped(*args, **kwargs):
        patched, run = original(*args, **kwargs)
        run.strength = -run.strength
        return patched, run

    monkeypatch.setattr(host.samplers, "guide_model", flipped)
    code, claims, _ = _run_report(tmp_path, "sd1-tiny", multipliers=("0", "1"))
    assert code == 1
    assert not claims["appearance lower with guidance than without at every strength"]["pass"]
    assert not claims["layout lower with guidance than without at every strength"]["pass"]
