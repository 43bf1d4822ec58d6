"""Compression commands: prune, sensitivity, quantize (PTQ), deep-compress."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..methods import METHODS
from ..validate import UserError, check_fraction
from ..zoo import load_dataset
from .common import (DataDirOpt, DatasetOpt, DownloadOpt, ExcludeOpt, JsonOpt, ModelArg, SetOpt, app, build_method,
                     check_layer_keys, check_out_path, console, deep_compression_table, emit_json, given,
                     method_label, method_names, out, parse_layer_values, parse_pairs)

DEFAULT_BITS = "conv=8,fc=5"  # deep-compress --bits: the paper's (Han et al. 2016 table 1)


@app.command()
def prune(model: ModelArg = "lenet300", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
          download: DownloadOpt = False,
          method: Annotated[str, typer.Option(help=f"one of: {', '.join(method_names('prune'))}")] = "magnitude",
          sparsity: Annotated[Optional[float], typer.Option(help="fraction of targeted weights removed, in [0, 1) (default 0.9)")] = None,
          scope: Annotated[Optional[str], typer.Option(help="layer (each layer) or global (one threshold)")] = None,
          layer_sparsity: Annotated[Optional[str], typer.Option(help="per-layer targets (names or re: / type: patterns), both scopes: fc1=0.92,fc3=0.75")] = None,
          quality: Annotated[Optional[float], typer.Option(help="threshold method: keep |w| > quality * std(w) (default 1.0)")] = None,
          exclude: ExcludeOpt = None, set_fields: SetOpt = None,
          schedule: Annotated[Optional[str], typer.Option(help="oneshot, iterative or agp (default: iterative; oneshot for --structure nm; the model's recommended settings, see below)")] = None,
          rounds: Annotated[Optional[int], typer.Option(min=1, help="iterative: prune-retrain cycles (default 3)")] = None,
          finetune_epochs: Annotated[Optional[int], typer.Option(min=0, help="retraining epochs (per round), at --lr-factor x the LR (default 5)")] = None,
          lr_factor: Annotated[Optional[float], typer.Option(help="retraining LR / original LR (default 0.1)")] = None,
          seed: Annotated[int, typer.Option(help="random seed")] = 0,
          out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save pruned weights")] = None,
          structure: Annotated[Optional[str], typer.Option(help="structured pruning: channel (filters, residual-aware), column (im2col columns), group (group lasso) or nm (N:M, 2:4 by default, --set n=1 --set m=4 for others; input channels permuted first, --set permute=false to skip); sets --method")] = None,
          shrink: Annotated[bool, typer.Option("--shrink", help="remove pruned channels physically: a smaller dense model (the MACs and params reported after)")] = False,
          sparsify_epochs: Annotated[int, typer.Option(min=0, help="--structure group: epochs of training with the group-lasso penalty before pruning")] = 0,
          round_to: Annotated[Optional[int], typer.Option(min=1, help="--structure channel: keep a multiple of N channels in every group (e.g. 16: AVX-512 kernels block channels by 16), so the shrunk model runs as fast as its MACs promise")] = None,
          json_path: JsonOpt = None) -> None:
    """Prune a model (training it first if a zoo name is given), retrain, and report.

    With --method magnitude and no --scope / --layer-sparsity / --exclude / --set / --schedule /
    --rounds, a zoo model gets its recommended settings (flows.prune.RECOMMENDED_PRUNING, the
    README's rows and recipes/han2015-*.yaml): LeNet-300-100 AGP over 40 epochs at the original LR
    with fc3 kept at 26%; LeNet-5 one global threshold, 3 rounds of 6 epochs at 0.3x LR."""
    from ..flows.prune import PruneSettings, prune_model, pruning_settings
    from .structured import STRUCTURE_METHODS, run_structured_prune

    if structure is not None:  # issue 12: structured pruning picks its method
        if structure not in STRUCTURE_METHODS:
            raise UserError(f"--structure {structure!r} must be one of: {', '.join(STRUCTURE_METHODS)}")
        if method not in ("magnitude", STRUCTURE_METHODS[structure]):
            raise UserError(f"--structure {structure} runs --method {STRUCTURE_METHODS[structure]}; leave --method out")
        method = STRUCTURE_METHODS[structure]
    recommended = pruning_settings(model)  # issue 15: the plain command reproduces the README row
    headline = (structure is None and not shrink and method == recommended.method["method"]
                and not (scope or layer_sparsity or exclude or set_fields or schedule or rounds))
    settings = recommended if headline else PruneSettings()
    rounds = settings.rounds if rounds is None else rounds
    finetune_epochs = settings.finetune_epochs if finetune_epochs is None else finetune_epochs
    lr_factor = settings.lr_factor if lr_factor is None else lr_factor
    schedule = schedule or ("oneshot" if method == "nm" else settings.schedule)
    flags = given(sparsity=sparsity, scope=scope, quality=quality, round_to=round_to,
                   layer_sparsity=parse_layer_values(layer_sparsity) or None,
                   targets={"exclude": list(exclude)} if exclude else None)
    by_threshold = any(s.startswith("threshold=") for s in set_fields or ())
    defaults = {"sparsity": 0.5 if structure else 0.9, "quality": 1.0} if not by_threshold else {"quality": 1.0}
    if structure == "nm":  # 2:4 with Pool & Yu's channel permutation unless --set permute=false
        defaults["permute"] = True
    if headline:
        defaults.update({k: v for k, v in settings.method.items() if k != "method"})
    pruner = build_method(method, "prune", flags, set_fields, defaults=defaults)
    if schedule != "oneshot" and not any(f.name == "sparsity" for f in dataclasses.fields(pruner)):
        raise UserError(f"--schedule {schedule} re-applies the method at rising sparsity, but --method {method} "
                        "has no sparsity field: use --schedule oneshot")
    check_out_path(out_path, "--out")
    data = load_dataset(dataset, data_dir, download=download)
    check_layer_keys(pruner, model, data)
    if structure is not None or shrink:
        run_structured_prune(model, data, pruner, schedule=schedule, rounds=rounds, finetune_epochs=finetune_epochs,
                             lr_factor=lr_factor, sparsify_epochs=sparsify_epochs, seed=seed, shrink=shrink,
                             out_path=str(out_path) if out_path else None, json_path=json_path)
        return
    _, result = prune_model(model, data, pruner, schedule=schedule, rounds=rounds, finetune_epochs=finetune_epochs,
                            lr_factor=lr_factor, seed=seed, out=str(out_path) if out_path else None)
    table = Table(title=f"{result['model']} pruned ({method_label(pruner)}, {schedule})")
    for col in ("layer", "density"):
        table.add_column(col)
    for name, dens in result["densities"].items():
        table.add_row(name, f"{dens:.3f}")
    out.print(table)
    out.print(f"dense accuracy {result['dense_accuracy']:.4f}  pruned accuracy {result['pruned_accuracy']:.4f}  "
              f"non-zero {result['nonzero_weights']:,} / {result['total_weights']:,}  "
              f"compression {result['compression']:.1f}x")
    emit_json(json_path, result)


@app.command()
def sensitivity(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
                download: DownloadOpt = False, seed: Annotated[int, typer.Option(help="random seed")] = 0,
                plot: Annotated[Path, typer.Option(help="PNG file for the accuracy-vs-sparsity plot")] = Path("sensitivity.png"),
                budget: Annotated[float, typer.Option(help="max accuracy drop for the suggested per-layer targets")] = 0.01,
                json_path: JsonOpt = None) -> None:
    """Prune each layer alone at 0..95% (no retraining): table, plot, and per-layer targets."""
    from ..analysis.plots import plot_sensitivity
    from ..flows.prune import dense_model, layer_sensitivity

    check_fraction("--budget", budget, allow_one=True)
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, _ = dense_model(model, data, seed)
    curves = layer_sensitivity(net, data)
    plot_sensitivity(curves, plot, f"{arch} on {data.name}: per-layer pruning sensitivity")
    table = Table(title=f"accuracy (%) with one layer pruned; dense {100 * curves.baseline:.2f}")
    table.add_column("layer")
    for s in curves.sparsities:
        table.add_column(f"{int(round(100 * s))}%", justify="right")
    for row in curves.as_rows():
        table.add_row(*map(str, row))
    out.print(table)
    targets = curves.targets_for_budget(budget)
    out.print(f"most sensitive layer: {curves.most_sensitive()}; targets within {budget:.3f} drop: {targets}")
    console.print(f"wrote {plot}")
    emit_json(json_path, {"model": arch, "dataset": data.name, "baseline": curves.baseline,
                           "sparsities": list(curves.sparsities), "accuracy": curves.accuracy,
                           "most_sensitive": curves.most_sensitive(), "targets": targets, "plot": str(plot)})


@app.command()
def quantize(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
             download: DownloadOpt = False,
             method: Annotated[str, typer.Option(help=f"one of: {', '.join(method_names('quant'))}")] = "linear",
             weight_bits: Annotated[Optional[int], typer.Option(help="weight bits (2..16), symmetric (default 8)")] = None,
             act_bits: Annotated[Optional[int], typer.Option(help="activation bits (2..16); 0 = weight-only (default 8)")] = None,
             granularity: Annotated[Optional[str], typer.Option(help="tensor, channel or group (default channel)")] = None,
             group_size: Annotated[Optional[int], typer.Option(help="weights per group for --granularity group")] = None,
             observer: Annotated[Optional[str], typer.Option(help="minmax, ema, percentile, mse or entropy")] = None,
             dynamic: Annotated[bool, typer.Option(help="same as --method dynamic")] = False,
             per_token: Annotated[Optional[bool], typer.Option("--per-token", help="dynamic: one activation scale per row")] = None,
             keep_8bit: Annotated[Optional[list[str]], typer.Option(help="layer kept at 8 bit (repeatable)")] = None,
             exclude: ExcludeOpt = None, set_fields: SetOpt = None,
             calib_images: Annotated[int, typer.Option(min=1, help="training images used for calibration")] = 512,
             seed: Annotated[int, typer.Option(help="random seed")] = 0,
             plot: Annotated[Optional[Path], typer.Option(help="PNG of per-layer output SQNR / cosine")] = None,
             out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save the quantized model")] = None,
             json_path: JsonOpt = None) -> None:
    """Post-training quantization with any quantization method: accuracy before/after and per-layer
    error analysis (e.g. --method format --set weight_format=fp4_e2m1 --set act_format=fp8_e4m3)."""
    from ..flows.ptq import quantize_model

    if dynamic and method not in ("linear", "dynamic"):
        raise UserError(f"--dynamic means --method dynamic, which contradicts --method {method}")
    name = "dynamic" if dynamic else method
    flags = given(weight_bits=weight_bits, granularity=granularity, group_size=group_size, observer=observer,
                   per_token=per_token, act_bits=act_bits, layer_bits={layer: 8 for layer in keep_8bit or ()} or None,
                   targets={"exclude": list(exclude)} if exclude else None)
    if act_bits == 0:
        flags["act_bits"] = _weight_only(name)
    quantizer = build_method(name, "quant", flags, set_fields)
    check_out_path(out_path, "--out")
    data = load_dataset(dataset, data_dir, download=download)
    check_layer_keys(quantizer, model, data)
    _, _, result = quantize_model(model, data, quantizer, seed=seed, calib_images=calib_images,
                                  out=str(out_path) if out_path else None)
    label = method_label(quantizer)
    table = Table(title=f"{result['model']}: {label}")
    for col in ("layer", "weight SQNR dB", "output SQNR dB", "output cosine"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for layer, err in result["output_error"].items():
        table.add_row(layer, f"{result['weight_sqnr_db'].get(layer, float('inf')):.1f}", f"{err['sqnr_db']:.1f}",
                      f"{err['cosine']:.5f}")
    out.print(table)
    out.print(f"float accuracy {result['float_accuracy']:.4f}  quantized accuracy {result['quantized_accuracy']:.4f}")
    if plot is not None:
        from ..analysis.plots import plot_layer_error
        plot_layer_error(result["output_error"], plot, f"{result['model']} {label}")
        console.print(f"wrote {plot}")
    if out_path is not None:
        console.print(f"wrote {out_path} (reload with nncompress evaluate / nc.load_model)")
    emit_json(json_path, result)


def _weight_only(method: str) -> Optional[int]:
    """What --act-bits 0 means: act_bits=None (weight-only) for a method whose act_bits may be None;
    0 otherwise, which the method then rejects naming the field and its range."""
    cls = METHODS.get(method)
    act = next((f for f in dataclasses.fields(cls) if f.name == "act_bits"), None) if cls else None
    return None if act is not None and "None" in str(act.type) else 0


def _parse_bits(text: str) -> dict[str, int]:
    """'conv=8,fc=5' -> {'type:Conv1d|Conv2d|Conv3d': 8, 'type:Linear': 5} (the kind words become
    layer patterns: KMeansQuant.layer_bits takes names and patterns only); layer names ('conv1=8')
    and patterns ('re:fc[12]=4') pass through."""
    from ..flows.deep_compression import LAYER_KINDS

    bits = {}
    for name, value in parse_pairs(text, "--bits", "conv=8,fc=5").items():
        if not value.isdigit():
            raise UserError(f"--bits {name}={value!r}: the value must be a whole number of bits, e.g. conv=8,fc=5")
        bits[LAYER_KINDS.get(name, name)] = int(value)
    if not bits:
        raise UserError("--bits is empty; give NAME=BITS items, e.g. conv=8,fc=5")
    return bits


@app.command("deep-compress")
def deep_compress_cmd(model: ModelArg = "lenet300", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
                      download: DownloadOpt = False,
                      prune_sparsity: Annotated[Optional[float], typer.Option(help="magnitude pruning target (0 = no pruning; default 0.92)")] = None,
                      scope: Annotated[Optional[str], typer.Option(help="layer or global (default global)")] = None,
                      schedule: Annotated[Optional[str], typer.Option(help="oneshot, iterative or agp (default iterative)")] = None,
                      rounds: Annotated[Optional[int], typer.Option(min=1, help="iterative pruning rounds (default 3)")] = None,
                      finetune_epochs: Annotated[Optional[int], typer.Option(min=0, help="retraining epochs per pruning round (default 5)")] = None,
                      lr_factor: Annotated[Optional[float], typer.Option(help="retraining LR / original LR (default 0.1)")] = None,
                      bits: Annotated[str, typer.Option(help="cluster bits: conv=8,fc=5 (kinds conv / fc, layer names or "
                                                                "'re:' / 'type:' patterns)")] = DEFAULT_BITS,
                      codebook_epochs: Annotated[int, typer.Option(min=0, help="codebook fine-tuning epochs")] = 3,
                      bias_bits: Annotated[Optional[int], typer.Option(min=2, max=16, help="store biases as integer codes of this many bits (symmetric, one scale per layer; default: float16)")] = None,
                      mask_coding: Annotated[str, typer.Option(help="keep masks: 'relative' (Deep Compression's relative indices) or 'context' (also an adaptive context-model code where smaller; .nnc 3.2)")] = "relative",
                      header_coding: Annotated[str, typer.Option(help="the file's header: 'zlib' (.nnc 3.0) or 'compact' (compressed from the format's preset dictionary, about 0.6 kB smaller; .nnc 3.3)")] = "zlib",
                      target_ratio: Annotated[Optional[float], typer.Option(help="choose each layer's density and bits automatically for this compression (fp32 bytes / file bytes); replaces --prune-sparsity / --bits")] = None,
                      target_bytes: Annotated[Optional[int], typer.Option(help="as --target-ratio, for a file of at most this many bytes")] = None,
                      distill_alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="with --target-ratio / --target-bytes: weight of knowledge distillation from the dense model in all retraining (0 = off; flows/distill.py)")] = 0.0,
                      distill_temperature: Annotated[float, typer.Option(min=0.01, help="distillation softmax temperature")] = 4.0,
                      joint_rounds: Annotated[int, typer.Option(min=0, max=10, help="with --target-ratio / --target-bytes: re-measure each layer's damage with the other layers at the plan and re-solve this many times, keeping the plan of least joint damage (flows/allocate.py step 8)")] = 0,
                      seed: Annotated[int, typer.Option(help="random seed")] = 0,
                      out_path: Annotated[Path, typer.Option("--out", "-o", help="the .nnc file to write")] = Path("model.nnc"),
                      json_path: JsonOpt = None) -> None:
    """Deep Compression: prune, share weights (k-means), fine-tune codebooks, Huffman-code into .nnc.

    Without --scope / --schedule / --rounds a zoo model is pruned with its recommended settings
    (flows.prune.RECOMMENDED_PRUNING, as recipes/deep-compression-*.yaml and the README's rows)."""
    from ..flows.deep_compression import DeepCompressionConfig, deep_compress
    from ..flows.prune import RECOMMENDED_PRUNING
    from ..prune.unstructured import MagnitudePrune
    from ..quant.kmeans import KMeansQuant

    given_sparsity, given_scope = prune_sparsity, scope
    recommended = None if (scope or schedule or rounds) else RECOMMENDED_PRUNING.get(model)  # issue 15
    spec = recommended.method if recommended else {"sparsity": 0.92, "scope": "global"}
    prune_sparsity = spec["sparsity"] if prune_sparsity is None else prune_sparsity
    scope = scope or spec.get("scope", "layer")
    schedule = schedule or (recommended.schedule if recommended else "iterative")
    rounds = rounds or (recommended.rounds if recommended else 3)
    finetune_epochs = (recommended.finetune_epochs if recommended else 5) if finetune_epochs is None else finetune_epochs
    lr_factor = (recommended.lr_factor if recommended else 0.1) if lr_factor is None else lr_factor
    targeted = target_ratio is not None or target_bytes is not None
    if not targeted and (joint_rounds or distill_alpha):
        raise UserError(f"{'--joint-rounds' if joint_rounds else '--distill-alpha'} applies to the automatic allocation: "
                        "give --target-ratio or --target-bytes")
    by_hand = [flag for flag, value in (("--prune-sparsity", given_sparsity), ("--scope", given_scope),
                                        ("--bits", bits if bits != DEFAULT_BITS else None)) if value is not None]
    if targeted and by_hand:
        raise UserError(f"{', '.join(by_hand)}: with --target-ratio / --target-bytes the allocator chooses every layer's "
                        "density and bits; leave these out (or drop the target to set them by hand)")
    if target_ratio is not None or target_bytes is not None:  # issue 16: automatic allocation
        from .frontier import allocated_deep_compress_cmd
        return allocated_deep_compress_cmd(model, dataset, data_dir, download, target_ratio, target_bytes, schedule,
                                           rounds, finetune_epochs, lr_factor, codebook_epochs, seed, out_path, json_path,
                                           distill_alpha=distill_alpha, distill_temperature=distill_temperature,
                                           bias_bits=bias_bits, mask_coding=mask_coding, header_coding=header_coding,
                                           joint_rounds=joint_rounds)
    check_fraction("--prune-sparsity", prune_sparsity)
    check_out_path(out_path, "--out")
    prune_method = (MagnitudePrune(sparsity=prune_sparsity, scope=scope, layer_sparsity=spec.get("layer_sparsity", {}))
                    if prune_sparsity > 0 else None)
    layer_bits = _parse_bits(bits)
    config = DeepCompressionConfig(prune=prune_method, schedule=schedule, rounds=rounds, finetune_epochs=finetune_epochs,
                                   lr_factor=lr_factor, bits=layer_bits, codebook_epochs=codebook_epochs,
                                   bias_bits=bias_bits, mask_coding=mask_coding, header_coding=header_coding)
    data = load_dataset(dataset, data_dir, download=download)
    check_layer_keys(KMeansQuant(layer_bits=layer_bits), model, data)
    _, result = deep_compress(model, data, config, seed=seed, out=out_path)
    out.print(deep_compression_table(result["layers"], f"{result['model']} -> {out_path}", result["overhead"]))
    out.print(f"dense accuracy {result['dense_accuracy']:.4f}  compressed accuracy {result['compressed_accuracy']:.4f} "
              f"(decoded from the file)  {result['dense_bytes']:,} B -> {result['file_bytes']:,} B = "
              f"{result['compression']:.1f}x  exact round trip: {result['exact_roundtrip']}")
    emit_json(json_path, result)


