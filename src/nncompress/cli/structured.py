"""Structured pruning commands: `nncompress slim` (network slimming), and the table the
`prune --structure ...` command prints."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..validate import check_fraction
from ..zoo import load_dataset
from .common import (DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, ModelArg, app, build_method, check_out_path,
                     console, emit_json, given, method_label, out)

#: --structure of `nncompress prune` -> the registered method it runs
STRUCTURE_METHODS = {"channel": "channel", "column": "column", "group": "group_lasso", "nm": "nm"}


def structured_table(result: dict, title: str) -> Table:
    """Accuracy, parameters, MACs and MACs with a non-zero weight, before / after."""
    table = Table(title=title)
    for col in ("", "test accuracy", "params", "MACs", "MACs, non-zero weights"):
        table.add_column(col, justify="left" if not col else "right")
    for key in ("before", "after"):
        r = result[key]
        label = "dense" if key == "before" else ("pruned + shrunk" if result["shrunk"] else "pruned (masked)")
        table.add_row(label, f"{r['accuracy']:.4f}", f"{r['params']:,}", f"{r['macs']:,}", f"{r['nonzero_macs']:,}")
    return table


def layers_table(result: dict) -> Table:
    """Per layer: weight density and, for N:M with permutation, the |w| 2:4 keeps with the identity
    and the permuted channel order (Pool & Yu 2021) and why a layer kept the identity."""
    permutations = next((s.get("permutations") for s in result["steps"] if s.get("permutations")), {})
    table = Table(title="per layer" + (": kept |w| under N:M, identity vs permuted input channels" if permutations else ""))
    columns = ["layer", "weight density"] + (["kept |w|, identity", "permuted", "gain", "permutation"] if permutations else [])
    for col in columns:
        table.add_column(col, justify="left" if col in ("layer", "permutation") else "right")
    for name, density in result["densities"].items():
        row = [name, f"{density:.3f}"]
        p = permutations.get(name)
        if p is not None:
            row += [f"{p['identity'] / p['total']:.2%}", f"{p['permuted'] / p['total']:.2%}",
                    f"{p['permuted'] / p['identity'] - 1:+.2%}" if p["identity"] else "",
                    f"producer {p['producer']}" if "producer" in p else p.get("reason", "")]
        elif permutations:
            row += ["", "", "", "not N:M pruned"]
        table.add_row(*row)
    return table


def groups_table(result: dict) -> Table:
    table = Table(title="channels kept per dependency group (layers sharing channels)")
    for col in ("layers", "channels", "kept"):
        table.add_column(col, justify="left" if col == "layers" else "right")
    for g in result["groups"]:
        table.add_row(", ".join(g["producers"]), str(g["channels"]), str(g["kept"]))
    return table


def print_structured(result: dict, title: str) -> None:
    """The summary; the dependency groups where a channel can go (shrinking removes them); the
    per-layer densities of the finer structures (columns, groups, N:M)."""
    out.print(structured_table(result, title))
    if any(g["kept"] < g["channels"] for g in result["groups"]):
        out.print(groups_table(result))
    if result["method"]["method"] not in ("channel", "slimming"):
        out.print(layers_table(result))
    after = result["after"]
    out.print(f"MAC reduction {result['mac_reduction']:.2f}x; counting only MACs with a non-zero weight "
              f"{result['before']['nonzero_macs'] / max(after['nonzero_macs'], 1):.2f}x")


@app.command("slim")
def slim(model: ModelArg = "vgg_small", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
         download: DownloadOpt = False,
         sparsity: Annotated[float, typer.Option(help="fraction of BatchNorm'd channels removed (global |gamma| threshold), in [0, 1)")] = 0.5,
         penalty: Annotated[Optional[float], typer.Option(help="s, the L1 strength on the BatchNorm scales during sparsity training (default: matched to the --sparsify-epochs schedule so |gamma| can move as far as Liu et al.'s s=1e-4 over 160 epochs)")] = None,
         scope: Annotated[str, typer.Option(help="global (one threshold, as in the paper) or layer")] = "global",
         sparsify_epochs: Annotated[int, typer.Option(min=0, help="epochs of sparsity training (L1 on gamma)")] = 5,
         finetune_epochs: Annotated[int, typer.Option(min=0, help="fine-tuning epochs after pruning, at 1/10 the LR")] = 3,
         shrink: Annotated[bool, typer.Option("--shrink/--no-shrink", help="remove the pruned channels physically")] = True,
         seed: Annotated[int, typer.Option(help="random seed")] = 0,
         out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save the slimmed model (.safetensors; shrunk unless --no-shrink)")] = None,
         json_path: JsonOpt = None) -> None:
    """Network slimming (Liu et al. 2017): L1 on BatchNorm scales, prune the smallest |gamma|, fine-tune, shrink."""
    from ..flows.structured import slim_model

    check_fraction("--sparsity", sparsity)
    check_out_path(out_path, "--out")
    method = build_method("slimming", "prune", given(sparsity=sparsity, penalty=penalty, scope=scope), None)
    data = load_dataset(dataset, data_dir, download=download)
    _, result = slim_model(model, data, method, sparsify_epochs=sparsify_epochs, finetune_epochs=finetune_epochs,
                           seed=seed, shrink=shrink, out=str(out_path) if out_path else None,
                           match_penalty=penalty is None)
    s = result["method"]["penalty"]
    how = f"matched to {sparsify_epochs} epochs" if penalty is None else "given"
    print_structured(result, f"{result['model']} slimmed ({sparsity:.0%} of channels, s={s:.3g} {how})")
    out.print(f"accuracy: dense {result['before']['accuracy']:.4f}  after sparsity training "
              f"{result['sparsity_trained_accuracy']:.4f}  pruned {result['pruned_accuracy']:.4f}  "
              f"fine-tuned {result['after']['accuracy']:.4f}")
    print_saved(result)
    emit_json(json_path, result)


def run_structured_prune(model: str, data, pruner, *, schedule: str, rounds: int, finetune_epochs: int,
                         lr_factor: float, sparsify_epochs: int, seed: int, shrink: bool, out_path: Optional[str],
                         json_path) -> None:
    """The body of `nncompress prune --structure ... / --shrink`."""
    from ..flows.structured import structured_prune

    _, result = structured_prune(model, data, pruner, schedule=schedule, rounds=rounds, finetune_epochs=finetune_epochs,
                                 lr_factor=lr_factor, sparsify_epochs=sparsify_epochs, seed=seed, shrink=shrink,
                                 out=out_path)
    print_structured(result, f"{result['model']} pruned ({method_label(pruner)}, {schedule})")
    print_saved(result)
    emit_json(json_path, result)


def print_saved(result: dict) -> None:
    if "out" in result:
        what = "the shrunk model" if result["shrunk"] else "the pruned (masked) model"
        console.print(f"wrote {what} to {result['out']} (reload with nncompress evaluate / nc.load_model)")
