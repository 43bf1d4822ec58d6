"""`nncompress demo` is deterministic to the byte: torch is pinned to one thread for the run, so the
file no longer depends on how many threads (cores) the machine gives torch."""
import json

import pytest
import torch

from nncompress.flows.demo import run_demo


@pytest.mark.slow
def test_two_demo_runs_with_different_thread_counts_write_identical_files(tmp_path):
    torch.set_num_threads(2)
    first = run_demo(tmp_path / "a")
    assert torch.get_num_threads() == 2  # restored after the run
    torch.set_num_threads(1)
    second = run_demo(tmp_path / "b")
    a, b = (tmp_path / "a" / "demo.nnc").read_bytes(), (tmp_path / "b" / "demo.nnc").read_bytes()
    assert a == b and len(a) == first["file_bytes"] == second["file_bytes"]
    assert first["summary"] == second["summary"] and first["exact_roundtrip"]
    report = [json.loads((tmp_path / run / "demo_report" / "report.json").read_text()) for run in ("a", "b")]
    assert report[0] == report[1]
    assert [s["name"] for s in report[0]["stages"]] == ["dense fp32", "pruned", "clustered", "encoded .nnc"]
    assert first["compression"] > 20 and first["compressed_accuracy"] >= first["dense_accuracy"] - 0.02
