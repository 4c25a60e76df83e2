"""The DreamBench harness (tests/evaluation/dreambench.py), weights-free: metric math, the encoders' preprocessing and
architectures with random weights, the dataset reader on a synthesised copy in DreamBench's original layout, the
outputs of a run on tiny random models, resume after an interrupted and after a killed run, and torchrun sharding
over 2 CPU processes.
Tests that generate images need ComfyUI (skipped with the reason without it)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from comfy_env import comfyui_path, require_comfyui
from conftest import ROOT, evaluation_module

cli, dataset, encoders, metrics, personalisation, results, sharding, summary = (
    evaluation_module("dreambench_harness", name)
    for name in ("cli", "dataset", "encoders", "metrics", "personalisation", "results", "sharding", "summary"))

SHARED_DREAMBENCH = ROOT.parent / "shared" / "dreambench"

# DreamBench's prompts_and_classes.txt, shortened: the same sections and line formats, three subjects (a live one,
# an object, and "stuffed animal", whose class names an animal but which is an object), two prompts per list.
PROMPTS_AND_CLASSES = """Classes

subject_name,class
backpack,backpack
dog,dog
bear_plushie,stuffed animal

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} on top of a wooden floor'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token)
]
"""
SUBJECT_COLOURS = {"backpack": (200, 40, 40), "dog": (150, 110, 60), "bear_plushie": (90, 60, 30)}


def synthesise_dreambench(root: Path) -> Path:
    """A small DreamBench in the original layout: prompts_and_classes.txt and a folder of two photos per subject
    (drawn shapes, 96 x 80 so that the centre crops have work to do)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / dataset.PROMPTS_FILE).write_text(PROMPTS_AND_CLASSES)
    for name, colour in SUBJECT_COLOURS.items():
        (root / name).mkdir()
        for index in range(2):
            photo = Image.new("RGB", (96, 80), (30 + 100 * index, 160, 200))
            ImageDraw.Draw(photo).ellipse((20 + 10 * index, 15, 70 + 10 * index, 70), fill=colour)
            photo.save(root / name / f"{index:02d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory) -> Path:
    return synthesise_dreambench(tmp_path_factory.mktemp("dreambench"))


# ---------------------------------------------------------------------------------------------- metric math


def test_identical_embeddings_have_similarity_one_whatever_their_scale():
    embeddings = torch.randn(4, 384, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(metrics.cosine_similarities(embeddings, 3.5 * embeddings).diagonal(), torch.ones(4, dtype=torch.float64))
    assert float(metrics.mean_similarity(embeddings[:1], torch.cat([embeddings[:1], 0.1 * embeddings[:1]]))[0]) == pytest.approx(1.0)
    assert float(metrics.mean_similarity(embeddings[:1], -embeddings[:1])[0]) == pytest.approx(-1.0)


def test_mean_similarity_is_the_mean_over_references_in_any_order_and_batch():
    generator = torch.Generator().manual_seed(1)
    generated, references = torch.randn(3, 16, generator=generator), torch.randn(5, 16, generator=generator)
    expected = torch.tensor([[torch.nn.functional.cosine_similarity(g, r, dim=0).item() for r in references] for g in generated])
    together = metrics.mean_similarity(generated, references)
    assert torch.allclose(together, expected.double().mean(1), atol=1e-6)
    assert torch.allclose(metrics.mean_similarity(generated, references[torch.randperm(5, generator=generator)]), together)
    one_by_one = torch.cat([metrics.mean_similarity(g[None], references) for g in generated])
    assert torch.allclose(one_by_one, together)


def test_summary_means_standard_errors_and_pareto_front():
    rows = [{"subject": s, "strength": repr(v), "dino": d, "clip_i": i, "clip_t": t}
            for s, v, d, i, t in [("a", 0.0, 0.5, 0.7, 0.30), ("b", 0.0, 0.7, 0.9, 0.32),
                                  ("a", 1.0, 0.6, 0.8, 0.30), ("b", 1.0, 0.8, 0.9, 0.30),
                                  ("a", 2.0, 0.4, 0.6, 0.29), ("b", 2.0, 0.6, 0.8, 0.29)]]
    table = summary.summarise(rows)
    assert [e["strength"] for e in table] == [0.0, 1.0, 2.0] and [e["baseline"] for e in table] == [True, False, False]
    assert table[1]["dino"] == pytest.approx(0.7) and table[1]["dino_se"] == pytest.approx(0.1)
    assert table[0]["clip_t"] == pytest.approx(0.31) and table[1]["images"] == 2 and table[1]["subjects"] == 2
    # Strength 1 has the best DINO, strength 0 the best CLIP-T; strength 2 is dominated by both.
    assert [e["pareto_dino"] for e in table] == [True, True, False]
    assert summary.pareto_optimal([(1, 1), (1, 1), (0, 2)]) == [True, True, True]


# ---------------------------------------------------------------------------------------------- encoders


def test_clip_preprocessing_is_clips_own():
    """Our one preprocessing function, with CLIP's numbers, gives what transformers' CLIP image processor gives."""
    import transformers

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    ours = encoders.preprocess([photo], encoders.CLIP_PREPROCESSING)
    pil_processor = getattr(transformers, "CLIPImageProcessorPil", None)
    # transformers 5 has a PIL and a torchvision backend: the PIL one runs the same operations as ours, exactly; the
    # torchvision one's bicubic differs by rounding (a few 1/255 steps). transformers 4's CLIPImageProcessor is PIL's.
    processor, tolerance = (pil_processor(), 1e-6) if pil_processor else (transformers.CLIPImageProcessor(), 1e-6)
    theirs = processor(images=[photo], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    assert (ours - theirs).abs().max().item() <= tolerance
    dino = encoders.preprocess([photo], encoders.DINO_PREPROCESSING)
    assert dino.shape == (1, 3, 224, 224)
    assert abs(dino.mean().item()) < 1.0  # ImageNet-normalised, not 0..255


def _random_encoders():
    path = comfyui_path()
    if path is None:
        pytest.skip("CLIP's tokenizer files come from ComfyUI here: set COMFYUI_PATH to a ComfyUI checkout")
    return encoders.random_encoders(torch.device("cpu"), str(path / "comfy" / "sd1_tokenizer"))


def test_random_encoders_have_the_real_architectures_and_batch_invariant_embeddings():
    built = _random_encoders()
    dino, clip = built.dino.config, built.clip.config
    assert (dino.hidden_size, dino.num_hidden_layers, dino.num_attention_heads, dino.patch_size, dino.image_size) == (384, 12, 6, 16, 224)
    assert (clip.vision_config.hidden_size, clip.vision_config.num_hidden_layers, clip.vision_config.patch_size) == (768, 12, 32)
    assert (clip.text_config.hidden_size, clip.text_config.num_hidden_layers, clip.projection_dim) == (512, 12, 512)
    photos = [Image.new("RGB", (120, 90), colour) for colour in ((255, 0, 0), (0, 128, 255), (20, 200, 20))]
    for embed, width in ((built.dino_embeddings, 384), (built.clip_image_embeddings, 512)):
        together = embed(photos)
        assert together.shape == (3, width)
        assert torch.allclose(together.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(torch.cat([embed([p]) for p in photos]), together, atol=1e-5)
        assert torch.allclose(embed(photos[::-1]), together.flip(0), atol=1e-5)
    texts = built.clip_text_embeddings(["a dog in the jungle", "a backpack"])
    assert texts.shape == (2, 512) and torch.allclose(built.clip_text_embeddings(["a backpack"])[0], texts[1], atol=1e-5)


def test_an_image_scored_against_itself_has_dino_and_clip_i_one(bench_folder):
    built = _random_encoders()
    bench = dataset.read_dreambench(bench_folder, only=["backpack"])
    subject = bench.subjects[0]
    alone = dataset.Subject(subject.name, subject.class_noun, subject.live, subject.images[:1])
    scores = metrics.DreamBenchScorer(built).score(Image.open(subject.images[0]), alone, "a backpack")
    assert scores["dino"] == pytest.approx(1.0, abs=1e-5) and scores["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= scores["clip_t"] <= 1.0


def test_a_missing_encoder_names_what_to_download(tmp_path):
    with pytest.raises(encoders.EncoderMissing, match=r"hf download facebook/dino-vits16.*--dino /path/to/a/copy"):
        encoders.load_encoders(str(tmp_path / "no-dino-here"), encoders.CLIP_REPO, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- dataset


def test_reader_takes_the_original_layout(bench_folder):
    bench = dataset.read_dreambench(bench_folder)
    assert [(s.name, s.class_noun, s.live) for s in bench.subjects] == [
        ("backpack", "backpack", False), ("dog", "dog", True), ("bear_plushie", "stuffed animal", False)]
    assert [p.name for p in bench.subject("dog").images] == ["00.jpg", "01.jpg"]
    dog, plushie = bench.subject("dog"), bench.subject("bear_plushie")
    assert dataset.format_prompt(bench.prompts_for(dog)[1], "sks", "dog") == "a sks dog wearing a red hat"
    assert dataset.format_prompt(bench.prompts_for(plushie)[1], "", "stuffed animal") == "a stuffed animal on top of a wooden floor"
    assert [s.name for s in dataset.read_dreambench(bench_folder, only=["bear_plushie", "dog"]).subjects] == ["dog", "bear_plushie"]


def test_reader_takes_a_clone_of_the_dreambooth_repository(tmp_path):
    """--dataset may name the repository, whose dataset/ folder holds the benchmark."""
    synthesise_dreambench(tmp_path / "dreambooth" / "dataset")
    assert dataset.read_dreambench(tmp_path / "dreambooth").root == tmp_path / "dreambooth" / "dataset"


def test_reader_errors_name_the_fix(bench_folder, tmp_path):
    with pytest.raises(ValueError, match="--subjects: cat2 not in DreamBench"):
        dataset.read_dreambench(bench_folder, only=["cat2"])
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / dataset.PROMPTS_FILE).write_text(PROMPTS_AND_CLASSES)
    Image.new("RGB", (8, 8)).save(flat / "dog.jpg")  # the shared copy's shape: one image per subject, no folders
    with pytest.raises(FileNotFoundError, match="no folder of photos for subject.s. backpack, dog, bear_plushie.*original layout"):
        dataset.read_dreambench(flat)
    with pytest.raises(FileNotFoundError, match="no prompts_and_classes.txt"):
        dataset.read_dreambench(tmp_path / "nowhere")


def test_the_published_prompts_and_classes_file_reads_as_30_subjects_and_25_plus_25_prompts():
    source = SHARED_DREAMBENCH / dataset.PROMPTS_FILE
    if not source.is_file():
        pytest.skip(f"no DreamBench copy at {SHARED_DREAMBENCH} (the shared folder beside the repository)")
    classes, object_prompts, live_prompts = dataset.parse_prompts_and_classes(source.read_text(), source)
    assert len(classes) == 30 and len(object_prompts) == 25 and len(live_prompts) == 25
    live = sorted(name for name, class_noun in classes if class_noun in dataset.LIVE_CLASSES)
    assert live == ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    assert dict(classes)["wolf_plushie"] == "stuffed animal"
    assert dataset.format_prompt(live_prompts[13], "sks", "dog") == "a sks dog wearing a black top hat and a monocle"


# ---------------------------------------------------------------------------------------------- smaller pieces


def test_personalisation_file(tmp_path):
    (tmp_path / "dog.safetensors").write_bytes(b"x")
    (tmp_path / "my_can.pt").write_bytes(b"x")
    mapping = tmp_path / "subjects.json"
    mapping.write_text(json.dumps({"dog": {"lora": "dog.safetensors", "identifier": "sks", "strength": 0.8},
                                   "can": {"embedding": "my_can.pt"}}))
    read = personalisation.read_personalisation(mapping, ["dog", "can"])
    assert read["dog"] == personalisation.Personalisation("lora", tmp_path / "dog.safetensors", "sks", 0.8)
    assert read["can"].identifier == "embedding:my_can"
    mapping.write_text(json.dumps({"dog": {"checkpoint": "dog.safetensors"}}))
    with pytest.raises(ValueError, match="needs the 'identifier'"):
        personalisation.read_personalisation(mapping, ["dog"])
    with pytest.raises(ValueError, match="cat not among the subjects"):
        mapping.write_text(json.dumps({"cat": {"lora": "dog.safetensors", "identifier": "sks"}}))
        personalisation.read_personalisation(mapping, ["dog"])


def test_slices_cover_every_group_once_for_any_world_size():
    groups = list(range(11))
    for world in range(1, 6):
        slices = [sharding.slice_of(groups, sharding.Shard(rank, world, rank)) for rank in range(world)]
        assert sum(slices, []) == groups
        assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_a_torn_row_is_ignored_then_cut_off(tmp_path):
    job = results.Job("dog", 1, 0, 0.0)
    (tmp_path / job.image_path()).parent.mkdir(parents=True)
    (tmp_path / job.image_path()).write_bytes(b"png")
    log = results.RankLog(tmp_path, 0)
    log.append({"subject": "dog", "class": "dog", "prompt_index": 1, "prompt": "p", "clip_t_prompt": "p", "seed": 0,
                "strength": "0.0", "image": job.image_path(), "dino": "0.5", "clip_i": "0.5", "clip_t": "0.5"})
    log.close()
    with open(log.path, "a") as f:
        f.write("dog,dog,1,p,p,1,0.0,images/dog/p01_seed1_v0.png,0.4")  # killed mid-row
    assert list(results.finished_rows(tmp_path)) == [job]
    results.RankLog(tmp_path, 0).close()
    assert log.path.read_text().endswith("0.5\n")


def test_a_resumed_run_must_use_the_first_runs_settings(tmp_path):
    results.check_settings(tmp_path, {"sampling": {"steps": 3}}, write=True)
    results.check_settings(tmp_path, {"sampling": {"steps": 3}}, write=True)
    with pytest.raises(ValueError, match="other settings .sampling.steps 3 then, 4 now"):
        results.check_settings(tmp_path, {"sampling": {"steps": 4}}, write=True)


def test_strengths_are_required_with_a_checkpoint(bench_folder, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="--checkpoint .*model.safetensors does not exist"):
        cli.run(["--dataset", str(bench_folder), "--out", str(tmp_path), "--checkpoint", str(checkpoint), "--strengths", "1"])
    checkpoint.write_bytes(b"")
    with pytest.raises(ValueError, match="--strengths is required"):
        cli.run(["--dataset", str(bench_folder), "--out", str(tmp_path), "--checkpoint", str(checkpoint)])


# ---------------------------------------------------------------------------------------------- runs on tiny models

# 2 subjects (one object, one live) x 1 prompt x 1 seed x 2 strengths = 4 images in 2 template groups.
# On the CPU everywhere, so that runs compare bitwise-close on GPU machines too (and 2 ranks need no 2 GPUs).
RUN = ["--tiny-random-models", "--subjects", "backpack,dog", "--prompts", "1", "--seeds", "1", "--strengths", "0.5",
       "--size", "64", "--steps", "2", "--cpu"]
IMAGES, GROUPS = 4, 2


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def single_run(bench_folder, tmp_path_factory):
    """One uninterrupted single-process run, counting the host adapter's calls."""
    host = require_comfyui()
    calls = {"pick_palette": 0, "draw_layout_template": 0, "guided_sample": 0}
    originals = {name: getattr(host, name) for name in calls}

    def counting(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)
        return call

    out = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as patch:
        for name in calls:
            patch.setattr(host, name, counting(name))
        report = cli.run(["--dataset", str(bench_folder), "--out", str(out), *RUN])
    return out, report, calls


def test_a_run_writes_rows_images_summary_and_plot_through_the_host_adapter(single_run):
    out, report, calls = single_run
    assert report["generated"] == IMAGES and report["finished_before"] == 0
    # One palette per subject, one template per (subject, prompt, seed), one guided run per image at strength > 0; the
    # strength-0 image is the template run's.
    assert calls == {"pick_palette": 2, "draw_layout_template": GROUPS, "guided_sample": IMAGES // 2}
    rows = _read_csv(out / results.RESULTS_FILE)
    assert [tuple(rows[0])] == [results.COLUMNS]
    assert [(r["subject"], r["seed"], float(r["strength"])) for r in rows] == [
        (s, "0", v) for s in ("backpack", "dog") for v in (0.0, 0.5)]
    assert {r["prompt"] for r in rows} == {"a backpack on top of a wooden floor", "a dog wearing a red hat"}  # object / live
    assert all(r["clip_t_prompt"] == r["prompt"] for r in rows)  # no identifier: the class-noun prompt
    for row in rows:
        assert all(-1.0 <= float(row[m]) <= 1.0 for m in ("dino", "clip_i", "clip_t"))
        with Image.open(out / row["image"]) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
    table = _read_csv(out / "summary.csv")
    assert [(e["strength"], e["baseline"], e["images"]) for e in table] == [("0.0", "True", "2"), ("0.5", "False", "2")]
    assert float(table[0]["dino"]) == pytest.approx(np.mean([float(r["dino"]) for r in rows if r["strength"] == "0.0"]), abs=1e-6)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_run_resumes_without_redoing_finished_images(single_run, bench_folder, tmp_path, monkeypatch):
    from dreambench_harness.generation import PickAndDrawGenerator

    made = []
    original = PickAndDrawGenerator.image

    def interrupted_at_the_second_image(self, subject, template, job):
        if len(made) == 1 and not resumed:
            raise KeyboardInterrupt  # the run is stopped while it makes its second image, in the first template group
        made.append(job)
        return original(self, subject, template, job)

    monkeypatch.setattr(PickAndDrawGenerator, "image", interrupted_at_the_second_image)
    resumed = False
    with pytest.raises(KeyboardInterrupt):
        cli.run(["--dataset", str(bench_folder), "--out", str(tmp_path), *RUN])
    finished = _read_csv(tmp_path / results.PARTS_FOLDER / "rank000.csv")
    assert len(finished) == 1 and not (tmp_path / results.RESULTS_FILE).exists()
    with open(tmp_path / results.PARTS_FOLDER / "rank000.csv", "a") as f:
        f.write("dog,dog,1,a dog wearing a red hat,a dog")  # and a row torn by a kill, for good measure
    stamps = {r["image"]: (tmp_path / r["image"]).stat().st_mtime_ns for r in finished}

    resumed = True
    report = cli.run(["--dataset", str(bench_folder), "--out", str(tmp_path), *RUN])
    assert report["finished_before"] == 1 and report["generated"] == IMAGES - 1
    assert len(made) == IMAGES  # 1 before the interruption + 3 after: none made twice
    assert {image: (tmp_path / image).stat().st_mtime_ns for image in stamps} == stamps
    resumed_rows, single_rows = _read_csv(tmp_path / results.RESULTS_FILE), _read_csv(single_run[0] / results.RESULTS_FILE)
    assert resumed_rows == single_rows  # the same images and scores as the uninterrupted run


def test_torchrun_over_two_cpu_processes_gives_the_single_process_results(single_run, bench_folder, tmp_path):
    out = tmp_path / "sharded"
    # the ranks compute with as many threads as this process: CPU kernels round differently with another count,
    # which strength 1e4 amplifies past the comparison's tolerance
    env = dict(os.environ, COMFYUI_PATH=str(comfyui_path()), OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "evaluation" / "dreambench.py"), "--dataset", str(bench_folder),
                           "--out", str(out), *RUN], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    parts = [_read_csv(out / results.PARTS_FOLDER / f"rank{rank:03d}.csv") for rank in (0, 1)]
    assert [len(p) for p in parts] == [IMAGES // 2, IMAGES // 2]
    assert not {r["image"] for r in parts[0]} & {r["image"] for r in parts[1]}  # each rank made its own slice
    sharded, single = _read_csv(out / results.RESULTS_FILE), _read_csv(single_run[0] / results.RESULTS_FILE)
    metric_columns = ("dino", "clip_i", "clip_t")
    assert [{k: v for k, v in r.items() if k not in metric_columns} for r in sharded] == \
        [{k: v for k, v in r.items() if k not in metric_columns} for r in single]
    for a, b in zip(sharded, single):
        for column in metric_columns:
            assert float(a[column]) == pytest.approx(float(b[column]), abs=1e-4), (a["image"], column)


def test_a_killed_run_resumes_without_redoing_finished_images(bench_folder, tmp_path):
    """The run is killed (SIGKILL, nothing gets to clean up) once its first image is finished; the rerun keeps
    what was finished, untouched, and makes only the rest."""
    import signal
    import time

    require_comfyui()
    run = [*RUN[:RUN.index("--seeds")], "--seeds", "2", *RUN[RUN.index("--seeds") + 2:]]  # 8 images: time to kill
    part = tmp_path / results.PARTS_FOLDER / "rank000.csv"
    env = dict(os.environ, COMFYUI_PATH=str(comfyui_path()))
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "evaluation" / "dreambench.py"), "--dataset",
                                str(bench_folder), "--out", str(tmp_path), *run], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (part.exists() and len(_read_csv(part)) >= 1):
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no image finished within 240 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    finished = _read_csv(part)
    assert 1 <= len(finished) < 2 * IMAGES
    stamps = {r["image"]: (tmp_path / r["image"]).stat().st_mtime_ns for r in finished}

    report = cli.run(["--dataset", str(bench_folder), "--out", str(tmp_path), *run])
    assert report["finished_before"] == len(finished) and report["generated"] == 2 * IMAGES - len(finished)
    assert {image: (tmp_path / image).stat().st_mtime_ns for image in stamps} == stamps
    rows = _read_csv(tmp_path / results.RESULTS_FILE)
    assert len(rows) == 2 * IMAGES and len({r["image"] for r in rows}) == 2 * IMAGES
