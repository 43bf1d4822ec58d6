"""`nncompress export` writes a checked ONNX file and compares it with PyTorch; `nncompress bench`
prints the four backends; both write --json; bad options are one-line errors."""
import json

import pytest

pytest.importorskip("onnxruntime")


def test_export_writes_onnx_and_json(main, tmp_path):
    import onnx

    path, report = tmp_path / "lenet5.onnx", tmp_path / "export.json"
    code, out, err = main("export", "lenet5", "--onnx", str(path), "--format", "qoperator", "--calib-images", "64",
                          "--check-images", "100", "--threads", "1", "--json", str(report))
    assert code in (0, None), err
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    result = json.loads(report.read_text())
    assert result["format"] == "qoperator" and result["ops"]["QLinearConv"] == 2
    assert result["check"]["top1_agreement"] >= 0.99 and result["check"]["images"] == 100
    assert "weight_range=" in out and "conv1" in out


def test_bench_table_and_json(main, tmp_path):
    report = tmp_path / "bench.json"
    code, out, err = main("bench", "lenet300", "--batch", "4", "--threads", "1", "--repeats", "2",
                          "--calib-images", "32", "--json", str(report))
    assert code in (0, None), err
    rows = {r["backend"]: r for r in json.loads(report.read_text())["rows"]}
    expected = {"float32 torch", "int8 torch (quantize_dynamic)", "float32 ORT", "int8 ORT (nncompress export)"}
    ours = "int8 torch (nncompress to_int8_)"  # absent only where the CPU's int8 kernels are not exact
    assert set(rows) - {ours} == expected
    assert ours in rows or any("no int8 torch row" in note for note in json.loads(report.read_text())["notes"])
    assert all(r["ms"] > 0 for r in rows.values()) and "vs float32 ORT" in out


def test_export_bad_format_is_one_line_error(main, tmp_path):
    code, _, err = main("export", "lenet5", "--onnx", str(tmp_path / "x.onnx"), "--format", "tflite")
    assert code == 2 and "format" in err and "Traceback" not in err


def test_bench_an_already_quantized_file_times_its_float_weights(main, tmp_path):
    """A saved quantized model is benchmarked against a float32 copy of the weights it computes with
    (no fake quantization), and torch's quantize_dynamic runs on that copy's plain Linears."""
    saved, report = tmp_path / "q.safetensors", tmp_path / "bench.json"
    code, _, err = main("quantize", "lenet300", "--weight-bits", "8", "--act-bits", "8", "--out", str(saved))
    assert code in (0, None), err
    code, out, err = main("bench", str(saved), "--batch", "4", "--threads", "1", "--repeats", "2",
                          "--calib-images", "32", "--json", str(report))
    assert code in (0, None), err
    rows = {r["backend"] for r in json.loads(report.read_text())["rows"]}
    assert {"float32 torch", "int8 torch (quantize_dynamic)", "int8 ORT (nncompress export)"} <= rows
