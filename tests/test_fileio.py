import pytest
import torch

from nncompress.fileio import atomic_write, atomic_write_text, load_weights, save_weights


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def broken(tmp: str) -> None:
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_weights_round_trip_with_metadata(tmp_path):
    state = {"w": torch.randn(3, 2)}
    save_weights(tmp_path / "m.safetensors", state, {"arch": "x"})
    loaded, meta = load_weights(tmp_path / "m.safetensors")
    assert torch.equal(loaded["w"], state["w"]) and meta == {"arch": "x"}


def test_garbage_weights_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a valid nncompress safetensors file"):
        load_weights(tmp_path / "bad.safetensors")


def test_loading_a_nnc_file_as_a_saved_model_points_to_the_nnc_reader(tmp_path):
    import torch

    import nncompress as nc
    from nncompress.encode.container import write_nnc
    from nncompress.encode.model import encode_model

    path = tmp_path / "model.nnc"
    write_nnc(path, encode_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), {"arch": "mlp"}))
    with pytest.raises(nc.UserError, match=r"it is a \.nnc file: read it with nc\.read_nnc"):
        nc.load_model(path)
