"""The `nncompress demo` run: Deep Compression (Han et al., ICLR 2016) of LeNet-300-100 on the
embedded digits data, recorded stage by stage (dense, pruned, clustered, encoded) into a report.

Deterministic to the byte: the run pins torch to one thread. With several threads the CPU kernels
split their reductions by thread count, so the trained weights (and after k-means and Huffman coding
the file size) depended on the machine's core count: 7,300 B with 2 threads vs 7,299 B with one.
"""
from __future__ import annotations

from pathlib import Path

from ..analysis.metrics import count_params
from .deep_compression import DeepCompressionConfig, share_and_encode
from .prune import dense_model, layer_sensitivity, prune_and_retrain
from ..hardware.energy import EnergyConfig
from ..prune.unstructured import MagnitudePrune
from ..sweep import pinned_torch_threads
from ..train import evaluate
from ..zoo import load_dataset
from ..report import capture_file_stage, capture_stage, summary_line, write_report

DEMO_CONFIG = DeepCompressionConfig(prune=MagnitudePrune(sparsity=0.9, scope="global"), schedule="iterative", rounds=3,
                                    finetune_epochs=3, lr_factor=0.3, bits={"fc": 5}, codebook_epochs=2)


def run_demo(out_dir: str | Path = "runs", *, seed: int = 0, threads: int = 1,
             config: DeepCompressionConfig = DEMO_CONFIG) -> dict:
    """Train, prune, share weights, Huffman-code into `out_dir/demo.nnc`, decode and evaluate, and write
    the report to `out_dir/demo_report/`; returns the figures (those of `deep_compress`, plus
    `summary`, `report_md`, `report_html` and `stages`)."""
    out = Path(out_dir)
    with pinned_torch_threads(threads):
        data = load_dataset("digits")

        def accuracy(net) -> float:
            return evaluate(net, data.test_loader())["accuracy"]

        model, arch, base = dense_model("lenet300", data, seed)
        result: dict = {"model": arch, "dataset": data.name, "seed": seed, "threads": threads,
                        "dense_accuracy": accuracy(model), "dense_bytes": 4 * count_params(model)}
        stages = [capture_stage("dense fp32", model, data.in_shape, result["dense_accuracy"],
                                size_bytes=result["dense_bytes"])]
        sensitivity = layer_sensitivity(model, data)
        prune_and_retrain(model, config.prune, data, base, schedule=config.schedule, rounds=config.rounds,
                          finetune_epochs=config.finetune_epochs, lr_factor=config.lr_factor)
        result["pruned_accuracy"] = accuracy(model)
        stages.append(capture_stage("pruned", model, data.in_shape, result["pruned_accuracy"]))
        _, shared = share_and_encode(model, arch, data, config, seed=seed, out=out / "demo.nnc")
        result.update(shared, compression=result["dense_bytes"] / shared["file_bytes"])
        stages.append(capture_stage("clustered", model, data.in_shape, shared["simulated_accuracy"]))
        stages.append(capture_file_stage("encoded .nnc", out / "demo.nnc", shared["compressed_accuracy"]))
    md_path, html_path = write_report(out / "demo_report", stages, sensitivity=sensitivity,
                                      title="Deep Compression of LeNet-300-100 on digits",
                                      notes=[f"file {out / 'demo.nnc'} ({shared['file_bytes']:,} B), decoded exactly: "
                                             f"{shared['exact_roundtrip']}",
                                             "energy: 45 nm table (Horowitz, ISSCC 2014), weights in SRAM when they "
                                             f"fit {EnergyConfig().sram_bytes // 1024} KB, zero MACs skipped"])
    result.update(summary=summary_line(stages), report_md=str(md_path), report_html=str(html_path),
                  stages=[s.as_dict() for s in stages])
    return result
