"""`nncompress deep-compress --target-ratio R` / `--target-bytes B` (issue 16): Deep Compression with
each layer's density and bits chosen by `flows/allocate.py` for a file-size budget."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ..zoo import load_dataset
from .common import check_out_path, deep_compression_table, emit_json, out


def allocated_deep_compress_cmd(model: str, dataset: str, data_dir, download: bool, target_ratio: float | None,
                                target_bytes: int | None, schedule: str, rounds: int, finetune_epochs: int,
                                lr_factor: float, codebook_epochs: int, seed: int, out_path: Path,
                                json_path: Path | None, *, distill_alpha: float = 0.0,
                                distill_temperature: float = 4.0, bias_bits: int | None = None,
                                mask_coding: str = "relative", header_coding: str = "zlib",
                                joint_rounds: int = 0) -> None:
    """Allocate, prune, share, fine-tune and write `out_path` within the budget; print the plan and
    the per-layer bytes of the written file."""
    from ..flows.allocate import AllocationConfig, allocated_deep_compress

    config = AllocationConfig(target_ratio=target_ratio, target_bytes=target_bytes, schedule=schedule, rounds=rounds,
                              finetune_epochs=finetune_epochs, lr_factor=lr_factor, codebook_epochs=codebook_epochs,
                              distill_alpha=distill_alpha, distill_temperature=distill_temperature, bias_bits=bias_bits,
                              mask_coding=mask_coding, header_coding=header_coding, joint_rounds=joint_rounds)
    check_out_path(out_path, "--out")
    data = load_dataset(dataset, data_dir, download=download)
    _, result = allocated_deep_compress(model, data, config, seed=seed, out=out_path)
    plan = Table(title=f"allocation for a budget of {result['budget_bytes']:,} B")
    for col in ("layer", "density", "bits (planned)", "bits (written)"):
        plan.add_column(col)
    for name, density in result["densities"].items():
        plan.add_row(name, f"{100 * density:.1f}%", str(result["allocated_bits"][name]), str(result["bits"][name]))
    out.print(plan)
    out.print(deep_compression_table(result["layers"], f"{result['model']} -> {out_path}", result["overhead"]))
    out.print(f"dense accuracy {result['dense_accuracy']:.4f}  compressed accuracy {result['compressed_accuracy']:.4f} "
              f"(decoded from the file)  {result['file_bytes']:,} B (budget {result['budget_bytes']:,} B) = "
              f"{result['compression']:.1f}x  exact round trip: {result['exact_roundtrip']}")
    emit_json(json_path, result)
