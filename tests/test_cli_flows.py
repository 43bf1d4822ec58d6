"""The headline flows through the command line: deep-compress -> inspect / decode / evaluate, and demo.

Written against what the CLI shows (exit codes, JSON figures, the file on disk), not the .nnc layout."""
import json

import pytest

from nncompress.encode.container import read_nnc
from test_cli import run_cli  # the `main` fixture comes from conftest.py

LENET300_DIGITS_PARAMS = 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """lenet300 on digits: 90% global pruning (one round), fc layers shared with 4-bit codebooks."""
    folder = tmp_path_factory.mktemp("deep")
    nnc, report = folder / "lenet300.nnc", folder / "dc.json"
    done = run_cli("deep-compress", "lenet300", "--prune-sparsity", "0.9", "--rounds", "1", "--finetune-epochs", "1",
                   "--codebook-epochs", "1", "--bits", "conv=8,fc=4", "-o", str(nnc), "--json", str(report))
    assert done.returncode == 0, done.stderr
    return nnc, json.loads(report.read_text()), done.stdout


@pytest.mark.slow
def test_deep_compress_reports_the_real_file(compressed):
    nnc, r, stdout = compressed
    assert r["file_bytes"] == nnc.stat().st_size and r["dense_bytes"] == 4 * LENET300_DIGITS_PARAMS
    assert r["compression"] == pytest.approx(r["dense_bytes"] / r["file_bytes"]) and r["compression"] > 15
    assert r["exact_roundtrip"] is True and r["compressed_accuracy"] >= 0.95
    assert [row["layer"] for row in r["layers"]] == ["fc1", "fc2", "fc3"]
    assert all(row["weight_bits_pq"] == 4 for row in r["layers"])  # "fc=4" reached every Linear layer
    kept = sum(row["kept"] * row["weights"] for row in r["layers"])
    assert kept == pytest.approx(0.1 * sum(row["weights"] for row in r["layers"]), abs=1)  # global 90%
    assert f"{r['file_bytes']:,} B" in stdout and "exact round" in stdout


@pytest.mark.slow
def test_decode_gives_the_reported_compressed_accuracy(compressed, tmp_path):
    nnc, r, _ = compressed
    weights = tmp_path / "decoded.safetensors"
    done = run_cli("decode", str(nnc), "--json", str(tmp_path / "d.json"), "--out", str(weights))
    assert done.returncode == 0, done.stderr
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["accuracy"] == r["compressed_accuracy"] and d["file_bytes"] == r["file_bytes"]
    done = run_cli("evaluate", str(weights), "--json", str(tmp_path / "e.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == r["compressed_accuracy"]


@pytest.mark.slow
def test_inspect_nnc_lists_the_layers_of_the_file(compressed, tmp_path):
    nnc, r, _ = compressed
    done = run_cli("inspect", str(nnc), "--json", str(tmp_path / "i.json"))
    assert done.returncode == 0, done.stderr
    i = json.loads((tmp_path / "i.json").read_text())
    assert i["file_bytes"] == r["file_bytes"] and i["model"]["arch"] == "lenet300" and i["version"] == "3.0"
    assert [(row["layer"], row["weights"], row["kept"]) for row in i["layers"]] == \
        [(row["layer"], row["weights"], row["kept"]) for row in r["layers"]]
    assert all(name in done.stdout for name in ("fc1", "fc2", "fc3"))


@pytest.mark.slow
def test_deep_compressed_file_exports_to_onnx_with_the_same_accuracy(compressed, tmp_path):
    """Issue 10: a Deep-Compressed .nnc exports (its shared values written exactly, as float) and
    ONNX Runtime gives the accuracy the file's own decode gives."""
    pytest.importorskip("onnxruntime")
    nnc, r, _ = compressed
    done = run_cli("export", str(nnc), "--quantize", "none", "--onnx", str(tmp_path / "dc.onnx"),
                   "--check-images", "360", "--json", str(tmp_path / "x.json"))
    assert done.returncode == 0, done.stderr
    check = json.loads((tmp_path / "x.json").read_text())["check"]
    assert check["images"] == 360 and check["ort_accuracy"] == check["torch_accuracy"] == r["compressed_accuracy"]
    assert check["top1_agreement"] == 1.0


@pytest.mark.slow
def test_demo_writes_decodes_and_evaluates_runs_demo_nnc(tmp_path):
    done = run_cli("demo", "--json", "demo.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "demo.json").read_text())
    assert r["file_bytes"] == (tmp_path / "runs" / "demo.nnc").stat().st_size
    assert r["exact_roundtrip"] is True and r["compression"] > 20
    assert r["compressed_accuracy"] >= r["dense_accuracy"] - 0.02


@pytest.mark.parametrize("args,message", [
    (("--bits", "fc=x"), "--bits fc='x': the value must be a whole number of bits"),
    (("--bits", "fc5"), "--bits item 'fc5' must look like NAME=VALUE"),
    (("--bits", "fc_2=4"), "layer_bits key 'fc_2' matches none of the targeted layers. Did you mean 'fc2'"),
])
def test_deep_compress_bad_bits_fail_before_training(main, args, message):
    code, stdout, stderr = main("deep-compress", "lenet300", *args)
    assert code == 2 and message in stderr
    assert "epoch" not in stdout + stderr  # refused before any training


def test_decode_and_inspect_refuse_missing_and_corrupt_files(main, tmp_path):
    code, _, stderr = main("decode", str(tmp_path / "missing.nnc"))
    assert code == 2 and "missing.nnc' does not exist" in stderr
    corrupt = tmp_path / "corrupt.nnc"
    corrupt.write_bytes(b"NNC\x00" + bytes(range(200)))
    code, _, stderr = main("inspect", str(corrupt))
    assert code == 2 and "corrupt.nnc" in stderr


def test_deep_compress_bias_bits_out_of_range_fails_before_training(main):
    code, stdout, stderr = main("deep-compress", "lenet300", "--bias-bits", "1")
    assert code == 2 and "--bias-bits" in stderr and "epoch" not in stdout + stderr


@pytest.mark.slow
def test_deep_compress_with_bias_bits_stores_bias_codes(tmp_path):
    nnc, report = tmp_path / "b.nnc", tmp_path / "b.json"
    done = run_cli("deep-compress", "lenet300", "--prune-sparsity", "0.9", "--rounds", "1", "--finetune-epochs", "1",
                   "--codebook-epochs", "1", "--bits", "fc=4", "--bias-bits", "8", "-o", str(nnc), "--json", str(report))
    assert done.returncode == 0, done.stderr
    r = json.loads(report.read_text())
    assert r["exact_roundtrip"] and r["file_bytes"] == nnc.stat().st_size
    assert [row["layer"] for row in r["layers"] if row["layer"].endswith(".bias")] == ["fc1.bias", "fc2.bias", "fc3.bias"]
    assert all(row["weight_bits_pq"] == 8 for row in r["layers"] if row["layer"].endswith(".bias"))


def test_deep_compress_unknown_mask_coding_fails_before_training(main):
    code, stdout, stderr = main("deep-compress", "lenet300", "--mask-coding", "arithmetic")
    assert code == 2 and "mask_coding" in stderr and "relative" in stderr and "epoch" not in stdout + stderr


@pytest.mark.slow
def test_deep_compress_with_context_masks_writes_a_smaller_3_2_file(tmp_path):
    """The same run (same seed, so the same pruned and shared model) written with both mask codings
    and with the compact header: the context-coded file is smaller, version 3.2; with the compact
    header smaller again, 3.3; all decode to the same accuracy."""
    from nncompress.encode.container import read_nnc

    results = {}
    for coding in ("relative", "context", "compact"):
        nnc, report = tmp_path / f"{coding}.nnc", tmp_path / f"{coding}.json"
        options = ["--mask-coding", "context", "--header-coding", "compact"] if coding == "compact" else ["--mask-coding", coding]
        done = run_cli("deep-compress", "lenet300", "--prune-sparsity", "0.95", "--rounds", "1", "--finetune-epochs", "1",
                       "--codebook-epochs", "1", "--bits", "fc=3", *options, "-o", str(nnc), "--json", str(report))
        assert done.returncode == 0, done.stderr
        results[coding] = json.loads(report.read_text())
        assert results[coding]["exact_roundtrip"] and results[coding]["file_bytes"] == nnc.stat().st_size
    stored = read_nnc(tmp_path / "context.nnc")
    assert stored.version == (3, 2) and stored.storage["fc1.weight"][0]["keep"]["codec"]["name"] == "context"
    assert results["context"]["file_bytes"] < results["relative"]["file_bytes"]
    assert results["context"]["compressed_accuracy"] == results["relative"]["compressed_accuracy"]
    assert read_nnc(tmp_path / "compact.nnc").version == (3, 3)
    assert results["compact"]["file_bytes"] < results["context"]["file_bytes"] - 300
    assert results["compact"]["compressed_accuracy"] == results["context"]["compressed_accuracy"]


def test_joint_rounds_without_a_budget_fail_before_training(main):
    code, stdout, stderr = main("deep-compress", "lenet300", "--joint-rounds", "2")
    assert code == 2 and "--target-ratio" in stderr and "epoch" not in stdout + stderr


def test_miracle_writes_a_file_within_the_budget_that_decodes_exactly(main, tmp_path):
    """issue 16: `nncompress miracle` trains, MIRACLE-codes and writes the file; the figures are the
    decoded file's (a short schedule on the digits: well above chance, below the dense model)."""
    code, stdout, stderr = main("miracle", "lenet300", "--target-bytes", "10000", "--variational-epochs", "2",
                                "--balance-epochs", "1", "--rounds", "2", "--block-bits", "8", "--distill-alpha", "0.5",
                                "-o", str(tmp_path / "m.nnc"), "--json", str(tmp_path / "m.json"))
    report = json.loads((tmp_path / "m.json").read_text())
    assert code == 0 and "exact round trip: True" in stdout
    assert "pretrain: epoch 1/" in stderr and "variational+balance: epoch 3/3" in stderr and "coding: epoch 1/1" in stderr
    assert read_nnc(tmp_path / "m.nnc").meta == {"dataset": "digits", "seed": 0,
                                                 "distill": {"alpha": 0.5, "temperature": 4.0}}
    assert report["file_bytes"] == (tmp_path / "m.nnc").stat().st_size <= 10000
    assert report["index_bits"] == 8 * sum(report["blocks"].values())
    assert 0.5 < report["accuracy"] <= report["dense_accuracy"] + 0.02 and report["input_trained"] is False


@pytest.mark.parametrize("args, message", [((), "exactly one of"), (("--target-ratio", "10", "--target-bytes", "9"),
                                                                    "exactly one of"),
                                           (("--target-ratio", "0.5"), "above 1"), (("--target-ratio", "inf"), "finite"),
                                           (("--target-bytes", "400"), "smallest MIRACLE file")])
def test_miracle_refuses_a_missing_or_impossible_budget_before_training(main, args, message):
    code, stdout, stderr = main("miracle", "lenet300", *args)
    assert code == 2 and message in stderr and "epoch" not in stdout + stderr
