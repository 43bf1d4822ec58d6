"""Recipe runs: checkpoints after each stage, --resume gives exactly the figures of an uninterrupted
run, and `nncompress run` writes them as JSON."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nncompress.recipes import load_recipe, recipe_from_text, run_recipe
from nncompress.recipes import stages as stage_module

TINY = """\
name: tiny
model: lenet300
dataset: digits
seed: 3
stages:
  - train: {epochs: 2}
  - prune: {method: magnitude, sparsity: 0.8, schedule: oneshot, finetune_epochs: 1}
  - evaluate: {}
"""

FULL = """\
name: full
model: lenet300
dataset: digits
seed: 1
stages:
  - train: {epochs: 2}
  - prune: {method: magnitude, sparsity: 0.8, layer_sparsity: {fc3: 0.5}, schedule: iterative, rounds: 2, finetune_epochs: 1}
  - quantize: {method: kmeans, bits: 3, finetune_epochs: 1}
  - encode: {}
  - evaluate: {control: true}
"""

QUIET = dict(log=lambda _msg: None)


def test_interrupted_mid_stage_then_resumed_gives_the_same_figures(tmp_path, digits, monkeypatch):
    recipe = recipe_from_text(TINY)
    full = run_recipe(recipe, digits, tmp_path / "a", **QUIET)
    assert [s["stage"] for s in full["stages"]] == ["train", "prune", "evaluate"]
    summary = full["summary"]
    assert summary["weight_compression"] == pytest.approx(5.0, rel=0.01)  # 80% of the weights removed
    assert summary["total_weights"] == 64 * 300 + 300 * 100 + 100 * 10
    assert 0.5 < summary["dense_accuracy"] <= 1 and summary["gap"] == summary["test_accuracy"] - summary["dense_accuracy"]

    real = stage_module.prune_and_retrain

    def killed(*args, **kwargs):  # the stage does its work on the model, then the process "dies"
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(stage_module, "prune_and_retrain", killed)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, digits, tmp_path / "b", **QUIET)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["00-train.json", "00-train.safetensors"]
    monkeypatch.setattr(stage_module, "prune_and_retrain", real)
    resumed = run_recipe(recipe, digits, tmp_path / "b", resume=True, **QUIET)
    assert resumed["resumed_after_stage"] == 1
    assert resumed["stages"] == full["stages"] and resumed["summary"] == full["summary"]
    assert json.loads((tmp_path / "b" / "result.json").read_text())["stages"] == full["stages"]


def test_resuming_a_finished_run_keeps_its_result(tmp_path, digits):
    recipe = recipe_from_text(TINY)
    full = run_recipe(recipe, digits, tmp_path, **QUIET)
    again = run_recipe(recipe, digits, tmp_path, resume=True, **QUIET)
    assert again == full and again["seconds"] and Path(again["report_md"]).is_file()
    assert json.loads((tmp_path / "result.json").read_text()) == full


def test_resume_refuses_another_recipes_checkpoints(tmp_path, digits):
    run_recipe(recipe_from_text(TINY), digits, tmp_path, stop_after=1, **QUIET)
    other = recipe_from_text(TINY.replace("seed: 3", "seed: 4"))
    with pytest.raises(ValueError, match="written by another recipe, dataset or seed"):
        run_recipe(other, digits, tmp_path, resume=True, **QUIET)


@pytest.mark.slow
def test_resume_after_every_stage_of_a_deep_compression_recipe(tmp_path, digits):
    """Prune (iterative, rescaled dropout), k-means + codebook fine-tuning, .nnc encode / decode,
    evaluate with the same-budget control: stopping after any stage and resuming changes nothing."""
    recipe = recipe_from_text(FULL)
    full = run_recipe(recipe, digits, tmp_path / "full", **QUIET)
    encode = full["stages"][3]
    assert encode["exact_roundtrip"] is True and encode["file_bytes"] == (tmp_path / "full" / "full.nnc").stat().st_size
    assert encode["compression"] == 4 * (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10) / encode["file_bytes"]
    evaluate = full["stages"][4]
    assert evaluate["control_steps"] == 3 * len(digits.train_loader(64))  # 2 retraining rounds + 1 codebook epoch
    for stop in range(1, 5):
        run_recipe(recipe, digits, tmp_path / f"s{stop}", stop_after=stop, **QUIET)
        resumed = run_recipe(recipe, digits, tmp_path / f"s{stop}", resume=True, **QUIET)
        assert resumed["resumed_after_stage"] == stop
        assert resumed["stages"] == full["stages"], f"stopped after stage {stop}"


@pytest.mark.slow
def test_cli_run_killed_after_first_checkpoint_then_resumed(tmp_path, digits):
    """A real `nncompress run` process killed (SIGKILL) once stage 1's checkpoint exists, then
    `--resume`: the JSON figures equal an uninterrupted run's (in this process, also on one thread)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.replace("finetune_epochs: 1", "finetune_epochs: 3"))
    a = run_recipe(load_recipe(recipe), digits, tmp_path / "a", **QUIET)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nncompress.cli", "run", str(recipe)]
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "b")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = tmp_path / "b" / "checkpoints" / "00-train.json"
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (tmp_path / "b" / "result.json").exists()
    subprocess.run([*cmd, "--out", str(tmp_path / "b"), "--resume", "--json", str(tmp_path / "b.json")], check=True,
                   env=env, capture_output=True)
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["resumed_after_stage"] in (1, 2)  # killed during stage 2 (or, on a slow machine, after it)
    assert b["stages"] == a["stages"] and b["summary"] == a["summary"]


def test_cli_run_reports_json_and_refuses_a_bad_recipe(tmp_path, main):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.replace("epochs: 2", "epochs: 1").replace("finetune_epochs: 1", "finetune_epochs: 0"))
    code, out, _ = main("run", str(recipe), "--out", str(tmp_path / "run"), "--json", str(tmp_path / "r.json"))
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result == json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["complete"]
    assert result["summary"]["nonzero_weights"] == pytest.approx(0.2 * result["summary"]["total_weights"], abs=3)
    assert "3. evaluate" in out
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())  # the run's report
    assert [s["name"] for s in report["stages"]] == ["0. start", "1. train", "2. prune", "3. evaluate"]
    assert report["stages"][-1]["accuracy"] == result["stages"][-1]["test_accuracy"]
    assert (tmp_path / "run" / "report" / "report.html").is_file() and "report.html" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("method: magnitude", "method: magnitudee"))
    code, _, err = main("run", str(bad), "--out", str(tmp_path / "bad"))
    assert code == 2 and "bad.yaml line 7 (stages[1].prune.method): unknown prune method 'magnitudee'" in " ".join(err.split())
    assert not (tmp_path / "bad").exists()


PTQ = """\
name: q
model: lenet300
dataset: digits
stages:
  - train: {epochs: 1}
  - quantize: {method: linear, weight_bits: 8, act_bits: 8, calib_images: 256}
  - convert
  - export: {format: qdq, check_images: 200}
  - evaluate
"""


@pytest.mark.slow
def test_ptq_convert_export_recipe_resumes_after_convert(tmp_path, digits):
    """int8 PTQ -> convert_ (integer codes) -> ONNX export checked in ONNX Runtime; a run resumed from
    the converted checkpoint (reloaded by replaying the saved recipe) gives the same figures."""
    pytest.importorskip("onnxruntime")
    recipe = recipe_from_text(PTQ)
    full = run_recipe(recipe, digits, tmp_path / "a", **QUIET)
    quantize, convert, export, evaluate = full["stages"][1:]
    assert convert["test_accuracy"] == quantize["test_accuracy"] == evaluate["test_accuracy"]  # convert_ is exact
    assert convert["ratio_vs_float32"] < 0.3  # int8 codes + scales: about a quarter of float32
    assert export["file"] == "q.onnx" and export["file_bytes"] == (tmp_path / "a" / "q.onnx").stat().st_size
    assert export["check"]["images"] == 200 and export["check"]["top1_agreement"] == 1.0
    run_recipe(recipe, digits, tmp_path / "b", stop_after=3, **QUIET)
    resumed = run_recipe(recipe, digits, tmp_path / "b", resume=True, **QUIET)
    assert resumed["resumed_after_stage"] == 3 and resumed["stages"] == full["stages"]


def test_an_encode_stage_may_ask_for_context_coded_masks(tmp_path, digits):
    """The same recipe with `encode: {mask_coding: context}` writes a smaller 3.2 file that decodes to
    the same accuracy, and with `header_coding: compact` too a smaller 3.3 file; an unknown coding is
    refused when the recipe is read."""
    from nncompress.encode.container import read_nnc

    text = ("name: masks\nmodel: lenet300\ndataset: digits\nseed: 2\nstages:\n  - train: {epochs: 1}\n"
            "  - prune: {method: magnitude, sparsity: 0.95, schedule: oneshot, finetune_epochs: 0}\n"
            "  - quantize: {method: kmeans, bits: 2}\n  - encode: ENCODE\n  - evaluate: {}\n")
    stages = {"relative": "{mask_coding: relative}", "context": "{mask_coding: context}",
              "compact": "{mask_coding: context, header_coding: compact}"}
    runs = {coding: run_recipe(recipe_from_text(text.replace("ENCODE", stage)), digits, tmp_path / coding, **QUIET)
            for coding, stage in stages.items()}
    encoded = {coding: next(s for s in r["stages"] if s["stage"] == "encode") for coding, r in runs.items()}
    assert encoded["context"]["file_bytes"] < encoded["relative"]["file_bytes"]
    assert encoded["context"]["test_accuracy"] == encoded["relative"]["test_accuracy"]
    assert read_nnc(tmp_path / "context" / "masks.nnc").version == (3, 2)
    assert read_nnc(tmp_path / "compact" / "masks.nnc").version == (3, 3)
    assert encoded["compact"]["file_bytes"] < encoded["context"]["file_bytes"]
    assert encoded["compact"]["test_accuracy"] == encoded["context"]["test_accuracy"]
    with pytest.raises(ValueError, match="mask_coding"):
        recipe_from_text(text.replace("ENCODE", "{mask_coding: arithmetic}"))
    with pytest.raises(ValueError, match="header_coding"):
        recipe_from_text(text.replace("ENCODE", "{header_coding: brotli}"))


def test_stages_after_an_encode_report_the_file_and_a_stage_that_would_change_its_model_is_refused(tmp_path, digits):
    """The report and the CLI table take size and bits from the written file for the encode stage and
    the evaluate stage after it (BOPs at the stored 3 bits, not the decoded floats'); a stage that would
    train the plain decoded model after the file is written is refused with both lines."""
    from nncompress.cli.run import stage_table

    text = ("name: after\nmodel: lenet300\ndataset: digits\nseed: 4\nstages:\n  - train: {epochs: 1}\n"
            "  - prune: {method: magnitude, sparsity: 0.9, schedule: oneshot, finetune_epochs: 0}\n"
            "  - quantize: {method: kmeans, bits: 3}\n  - encode: {}\n  - evaluate: {}\n")
    full = run_recipe(recipe_from_text(text), digits, tmp_path / "a", **QUIET)
    report = json.loads((tmp_path / "a" / "report" / "report.json").read_text())["stages"]
    start, trained, quantized, encode, kept = report[0], report[1], report[3], report[4], report[5]
    assert encode["size_measured"] and encode["size_bytes"] == full["stages"][3]["file_bytes"]
    assert kept["size_measured"] and kept["size_bytes"] == encode["size_bytes"]
    assert kept["energy"]["bops"] == encode["energy"]["bops"] == quantized["energy"]["bops"] < start["energy"]["bops"] / 8
    headline = (tmp_path / "a" / "report" / "report.md").read_text().splitlines()[2]
    assert headline.startswith(f"**accuracy {trained['accuracy']:.4f} -> ")  # the first measured accuracy
    compression = list(stage_table(full, tmp_path).columns[5]._cells)
    assert compression[3] == compression[4] == f"{full['stages'][3]['compression']:.1f}x"
    assert compression[1].endswith("x nz")  # the prune stage: no file yet
    with pytest.raises(ValueError, match=r"stages\[5\].finetune.*after the encode stage.*stages\[3\].encode"):
        recipe_from_text(text + "  - finetune: {epochs: 1}\n")
    with pytest.raises(ValueError, match=r"stages\[5\].encode\): a recipe writes one .nnc file"):
        recipe_from_text(text + "  - encode: {}\n")


def test_the_cli_table_shows_the_nnc_compression_on_stages_that_keep_its_model_not_on_an_onnx_file():
    from nncompress.cli.run import stage_table

    rows = [{"stage": "prune", "test_accuracy": 0.9, "weight_compression": 10.0},
            {"stage": "encode", "test_accuracy": 0.9, "file_bytes": 100, "compression": 50.0},
            {"stage": "export", "file_bytes": 300}, {"stage": "evaluate", "test_accuracy": 0.9, "weight_compression": 10.0}]
    result = {"recipe": "r", "model": "m", "dataset": "d", "seed": 0, "stages": rows, "summary": {}}
    assert list(stage_table(result, "out").columns[5]._cells) == ["10.0x nz", "50.0x", "", "50.0x"]


ALLOCATE = """\
name: auto
model: lenet300
dataset: digits
seed: 5
stages:
  - train: {epochs: 2}
  - allocate: {target_ratio: 20, densities: [1.0, 0.3, 0.1, 0.05], bits: [2, 3, 4], sensitivity_images: 256,
               rounds: 1, finetune_epochs: 1, codebook_epochs: 1, file: files/auto.nnc}
  - evaluate: {control: true}
"""


def test_an_allocate_stage_writes_a_file_within_the_budget_trains_its_control_and_resumes(tmp_path, digits):
    """The allocator as a recipe stage (issue 16): a file of at most fp32 bytes / 20, decoded exactly; the
    control trains through the same phases (1 retraining + 1 codebook epoch); a resume after the
    stage gives the same figures."""
    recipe = recipe_from_text(ALLOCATE)
    full = run_recipe(recipe, digits, tmp_path / "a", **QUIET)
    allocate, evaluate = full["stages"][1:]
    fp32 = 4 * (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    assert allocate["budget_bytes"] == int(fp32 / 20)
    assert allocate["file"] == "files/auto.nnc"  # a relative file: is inside the run folder
    assert (tmp_path / "a" / "files" / "auto.nnc").stat().st_size == allocate["file_bytes"] <= allocate["budget_bytes"]
    assert allocate["compression"] == fp32 / allocate["file_bytes"] >= 20 and allocate["exact_roundtrip"] is True
    assert set(allocate["bits"]) == {"fc1", "fc2", "fc3"} and set(allocate["bits"].values()) <= {2, 3, 4}
    assert evaluate["test_accuracy"] == allocate["test_accuracy"] > 0.8
    assert evaluate["control_steps"] == 2 * len(digits.train_loader(64))
    run_recipe(recipe, digits, tmp_path / "b", stop_after=2, **QUIET)
    resumed = run_recipe(recipe, digits, tmp_path / "b", resume=True, **QUIET)
    assert resumed["resumed_after_stage"] == 2 and resumed["stages"] == full["stages"]
    assert full["summary"]["file_bytes"] == allocate["file_bytes"]


@pytest.mark.parametrize("old, new, message", [
    ("  - allocate:", "  - prune: {method: magnitude, sparsity: 0.5, schedule: oneshot}\n  - allocate:",
     r"stages\[2\].allocate\): allocate starts from the dense model.*prune stage before it"),
    ("target_ratio: 20,", "target_ratio: 20, target_bytes: 900,", r"stages\[1\].allocate\): give exactly one budget"),
    ("bits: [2, 3, 4]", "bits: [0, 2]", r"stages\[1\].allocate.bits\): bits=\(0, 2\) must be integers in \[1, 16\]"),
    ("target_ratio: 20,", "max_accuracy_drop: 0.01, joint_rounds: 1,",
     r"stages\[1\].allocate.joint_rounds\): joint_rounds=1 applies to size budgets"),
    ("  - allocate: {", "  - finetune: {epochs: 1}\n  - evaluate: {}\n  - allocate: {distill_alpha: 0.5, ",
     r"stages\[3\].allocate.distill_alpha\): distillation in an allocate stage needs it right after a train stage, "
     r"not after the finetune stage"),
    ("  - allocate:", "  - convert: {}\n  - allocate:", r"stages\[2\].allocate\): .*the convert stage before it|"
                                                       r"stages\[2\].allocate\): a allocate stage after the convert"),
])
def test_an_allocate_stage_is_checked_before_anything_runs(old, new, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_text(ALLOCATE.replace(old, new))


def test_a_copied_run_folder_resumes_from_its_own_files(tmp_path, digits):
    """Checkpoints name the .nnc file and the dense checkpoint relative to the run folder: a copy of a
    run stopped after its allocate stage resumes (the control included) with the original gone."""
    import shutil

    recipe = recipe_from_text(ALLOCATE)
    run_recipe(recipe, digits, tmp_path / "a", stop_after=2, **QUIET)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    resumed = run_recipe(recipe, digits, tmp_path / "b", resume=True, **QUIET)
    assert resumed["resumed_after_stage"] == 2 and resumed["stages"][2]["control_steps"] > 0


@pytest.mark.parametrize("old, new, message", [
    ("  - evaluate: {control: true}", "  - evaluate: {control: true}",
     r"stages\[1\].evaluate.control\): control: true trains the dense model after a train stage"),
    ("file: files/auto.nnc", "file: files/auto.onnx", r"allocate.file\): file 'files/auto.onnx' must name a .nnc file"),
    ("file: files/auto.nnc", "file: ../auto.nnc", r"allocate.file\): a relative file '../auto.nnc' is inside the run "
                                                  r"folder \(--out\) and may not climb out"),
])
def test_a_recipe_without_a_train_stage_for_its_control_or_with_a_bad_file_name_is_refused(old, new, message):
    text = ALLOCATE.replace(old, new)
    if "control: true trains" in message:
        text = text.replace("  - train: {epochs: 2}\n", "")
    with pytest.raises(ValueError, match=message):
        recipe_from_text(text)


def test_a_budget_nothing_fits_names_the_stage_and_the_margin(tmp_path, digits):
    recipe = recipe_from_text(ALLOCATE.replace("target_ratio: 20", "target_bytes: 500"))
    with pytest.raises(ValueError, match=r"stages\[1\].allocate\): a budget of 490 bytes cannot be met.*the file's "
                                         r"500 bytes less the 2% margin"):
        run_recipe(recipe, digits, tmp_path, **QUIET)


def test_an_allocate_stage_may_distil_after_an_evaluate_of_the_trained_model_and_nothing_follows_convert():
    recipe_from_text(ALLOCATE.replace("  - allocate: {", "  - evaluate: {}\n  - allocate: {distill_alpha: 0.5, "))
    with pytest.raises(ValueError, match=r"stages\[2\].quantize\): a quantize stage after the convert stage"):
        recipe_from_text("model: lenet300\nstages:\n  - train: {}\n  - convert: {}\n  - quantize: {method: kmeans}\n")


def test_an_allocate_stage_writes_the_runs_file_so_only_export_and_evaluate_follow_it():
    with pytest.raises(ValueError, match=r"stages\[2\].finetune.*after the allocate stage.*stages\[1\].allocate"):
        recipe_from_text(ALLOCATE.replace("  - evaluate", "  - finetune: {epochs: 1}\n  - evaluate"))
    with pytest.raises(ValueError, match=r"stages\[2\].encode\): a recipe writes one .nnc file, in its allocate stage"):
        recipe_from_text(ALLOCATE.replace("  - evaluate", "  - encode: {}\n  - evaluate"))


SOFT_SHARING = """\
name: sws
model: lenet300
dataset: digits
seed: 2
stages:
  - train: {epochs: 3}
  - quantize: {method: soft_sharing, tau: 0.05, dataset_size: 1437, components: 5, assign: likelihood,
               finetune_epochs: 3, lr: 0.001, optimizer: adam}
  - finetune: {epochs: 1}
  - encode: {}
  - evaluate: {control: true}
"""


def test_a_soft_weight_sharing_recipe_snaps_after_its_training_and_resumes_after_the_snap(tmp_path, digits):
    """The quantize stage trains under the mixture prior, then `finish` snaps every weight to zero or a
    component mean; the finetune stage tunes the shared values, the file stores [mask, codebook]
    chains. A run stopped after the snap and resumed (its checkpoint rebuilt as magnitude pruning +
    k-means, the masks and codebooks loaded) gives the same figures."""
    recipe = recipe_from_text(SOFT_SHARING)
    full = run_recipe(recipe, digits, tmp_path / "full", **QUIET)
    quantize, encode, evaluate = full["stages"][1], full["stages"][3], full["stages"][4]
    snapped = quantize["finished"]["snapped"]
    assert set(snapped) == {"fc1", "fc2", "fc3"} and all(0 < v["kept"] < 1 and v["shared_values"] <= 4 for v in snapped.values())
    assert encode["exact_roundtrip"] is True and encode["compression"] > 10
    assert evaluate["control_steps"] == 4 * len(digits.train_loader(64))  # 3 epochs under the prior + 1 fine-tuning
    assert full["summary"]["test_accuracy"] > 0.85
    run_recipe(recipe, digits, tmp_path / "stopped", stop_after=2, **QUIET)
    resumed = run_recipe(recipe, digits, tmp_path / "stopped", resume=True, **QUIET)
    assert resumed["resumed_after_stage"] == 2 and resumed["stages"] == full["stages"]


def test_a_soft_weight_sharing_stage_without_training_or_already_snapped_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match=r"finetune_epochs\): method 'soft_sharing' trains in this stage"):
        recipe_from_text(SOFT_SHARING.replace("finetune_epochs: 3, ", ""))
    with pytest.raises(ValueError, match=r"line 7 \(stages\[1\]\.quantize\.snapped\): snapped: true is the finished form"):
        recipe_from_text(SOFT_SHARING.replace("assign: likelihood,", "assign: likelihood, snapped: true,"))


def test_a_snap_that_loses_accuracy_is_flagged_and_dataset_size_defaults_to_the_training_set(tmp_path, digits):
    """The paper's posterior snap after 3 epochs prunes weights the task still needs: the stage's
    figures carry a warning, which the log prints. Without dataset_size, N is the run's training set."""
    text = SOFT_SHARING.replace("assign: likelihood", "assign: posterior").replace("dataset_size: 1437, ", "")
    lines: list[str] = []
    result = run_recipe(recipe_from_text(text), digits, tmp_path, log=lines.append, stop_after=2)
    quantize = result["stages"][1]
    assert quantize["method"]["dataset_size"] == len(digits.train_y) == 1437
    assert quantize["trained_accuracy"] - quantize["test_accuracy"] > 0.05 and "lost" in quantize["warning"]
    assert any("WARNING: finishing soft_sharing lost" in line for line in lines)
    assert "WARNING, stage 2 (quantize): finishing soft_sharing lost" in Path(result["report_md"]).read_text()
    assert quantize["nonzero_weights"] < quantize["total_weights"]  # the snap pruned: the stage says how much
