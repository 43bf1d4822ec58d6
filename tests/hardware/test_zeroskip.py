"""The zero-skipping PE-array model: the lecture's 4-column example exactly, tiling, real layers."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.hardware.zeroskip import column_schedule, lowered_weights, model_zero_skip, run_tile, simulate


def lecture_example():
    """Seed 000, "We Have Only to Do Computation with Non-Zero Columns": W = [a b 0 d; e f 0 h; ...]."""
    a, b, d, e, f, h, i, j, l, m, n, p = range(1, 13)
    w = torch.tensor([[a, b, 0, d], [e, f, 0, h], [i, j, 0, l], [m, n, 0, p]], dtype=torch.float32)
    x = torch.arange(1, 17, dtype=torch.float32).reshape(4, 4).t()  # columns 1 2 3 4 / 5 6 7 8 / ...
    return w, x


def test_lecture_example_four_cycles_become_three():
    w, x = lecture_example()
    assert column_schedule(w) == [0, 1, 3]  # the 3rd column is never read
    out, cycles = run_tile(w, x)
    dense_out, dense_cycles = run_tile(w, x, skip_zero_columns=False)
    assert (dense_cycles, cycles) == (4, 3)
    assert torch.equal(out, w @ x) and torch.equal(dense_out, w @ x)
    stats = simulate(w, n=4, array=(4, 4))
    assert (stats.dense_cycles, stats.cycles, stats.tiles) == (4, 3, 1)
    assert (stats.weight_reads, stats.dense_weight_reads) == (12, 16)
    assert (stats.activation_reads, stats.dense_activation_reads) == (12, 16)
    assert stats.metadata_bits == 4 and stats.zero_columns == 0.25
    assert stats.macs == 48 and stats.utilisation == 1.0 and stats.dense_utilisation == 0.75


def test_tiling_counts_zero_columns_per_row_block():
    w = torch.ones(8, 6)
    w[:4, 1] = 0  # zero only in the first row block: skipped there, read in the second
    w[:, 4] = 0  # zero everywhere
    stats = simulate(w, n=10, array=(4, 4))
    col_tiles = 3  # 10 columns on 4-wide tiles: 4 + 4 + 2
    assert stats.tiles == 2 * col_tiles
    assert stats.dense_cycles == 2 * col_tiles * 6
    assert stats.cycles == (4 + 5) * col_tiles
    assert stats.weight_reads == (4 + 5) * 4 * col_tiles
    assert stats.activation_reads == (4 + 5) * 10
    assert stats.macs == int((w != 0).sum()) * 10
    assert stats.utilisation == stats.macs / (stats.cycles * 16) < 1  # the 2-wide edge tiles idle half the PEs
    assert stats.zero_columns == 1 / 6


def test_model_layers_are_lowered_with_their_output_sizes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    nc.apply_(net, nc.MagnitudePrune(sparsity=0.5))
    rows = model_zero_skip(net, torch.randn(2, 2, 6, 6), array=(2, 3))
    names = [r.name for r in rows]
    assert names == ["0", "2", "4", "total"]
    assert rows[0].n == 2 * 4 * 4 and rows[0].depth == 2 * 9 and rows[0].rows == 4
    assert rows[1].depth == 2 * 2 * 9  # two groups of K = 2 x 3 x 3
    assert rows[2].n == 2 and rows[2].depth == 16
    assert rows[3].cycles == sum(r.cycles for r in rows[:3]) and rows[3].macs == sum(r.macs for r in rows[:3])
    assert rows[0].macs == int((net[0].weight != 0).sum()) * 32
    assert all(r.cycles <= r.dense_cycles for r in rows)
    assert [w.shape for w in lowered_weights(net[2])] == [(2, 18), (2, 18)]


def test_bad_array_is_a_clear_error():
    with pytest.raises(nc.UserError, match=r"array=\(0, 4\) must be"):
        simulate(torch.ones(2, 2), 2, array=(0, 4))


def test_cli_zeroskip_writes_json(tmp_path):
    import json

    from typer.testing import CliRunner

    from nncompress.cli import app

    result = CliRunner().invoke(app, ["zeroskip", "lenet300", "--array", "8x4", "--json", str(tmp_path / "z.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "z.json").read_text())
    assert figures["array"] == [8, 4] and [r["name"] for r in figures["layers"]] == ["fc1", "fc2", "fc3", "total"]
    fc1 = figures["layers"][0]
    assert fc1["dense_cycles"] == fc1["cycles"] == 38 * 64  # 300 rows on 8-row tiles, K = 64 (8x8 digits), N = 1
    bad = CliRunner().invoke(app, ["zeroskip", "lenet300", "--array", "8"])
    assert bad.exit_code != 0


def test_cli_column_sparsity_prunes_before_counting(tmp_path):
    import json

    from typer.testing import CliRunner

    from nncompress.cli import app

    path = tmp_path / "z.json"
    result = CliRunner().invoke(app, ["zeroskip", "lenet5", "--column-sparsity", "0.5", "--exclude", "conv1",
                                      "--json", str(path)])
    assert result.exit_code == 0, result.output
    layers = {r["name"]: r for r in json.loads(path.read_text())["layers"]}
    assert layers["conv1"]["zero_columns"] == 0 and layers["conv1"]["cycles"] == layers["conv1"]["dense_cycles"]
    for name in ("conv2", "fc1", "fc2"):  # half of every other layer's columns: half the cycles on a 4x4 array
        assert layers[name]["zero_columns"] == 0.5
        assert layers[name]["cycles"] * 2 == layers[name]["dense_cycles"]
    assert layers["total"]["cycles"] < layers["total"]["dense_cycles"]


def test_cli_says_a_fresh_zoo_model_has_no_zero_columns_and_checks_its_options(main):
    code, _, err = main("zeroskip", "lenet300")
    assert code == 0 and "fresh zoo model without zero columns" in " ".join(err.split())
    for args, message in ((["--column-sparsity", "1.5"], "--column-sparsity=1.5 is outside"),
                          (["--exclude", "fc1"], "give --column-sparsity too")):
        code, _, err = main("zeroskip", "lenet300", *args)
        assert code == 2 and message in " ".join(err.split()), err
