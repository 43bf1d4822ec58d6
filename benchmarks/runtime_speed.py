"""int8 speed in ONNX Runtime: nncompress's ONNX export vs float32 ONNX Runtime, PyTorch eager, torch's
quantize_dynamic and ONNX Runtime's own quantize_static / quantize_dynamic (issue 10 acceptance).

Usage: python benchmarks/runtime_speed.py [--epochs 3] [--repeats 15] [--threads 1 2]

Every timing table is measured in one process, interleaved (A B C ... A B C ...) after warm-up, with
intra-op threads pinned for torch and ONNX Runtime; ms are medians of the rounds and speed-ups the
median of the per-round ratios (shared/BENCHMARKING.md).
- ResNet-20 (BatchNorm folded, W8A8: per-channel int8 weights, static uint8 activations calibrated on
  512 training images) trained on mnist-10k; ORT's quantize_static gets the same float model (our
  float ONNX export) and the same calibration batches. Also timed at 3x32x32 (random weights).
- A 4096x4096 Linear at batch 1.
- tiny_vit (trained on mnist-10k) and a BERT-style encoder (6 post-LN layers, hidden 384, 12 heads,
  FFN 1536, GELU; random weights, random hidden states) with W8 per-channel weights and dynamic
  per-token int8 activations, vs torch quantize_dynamic and ORT quantize_dynamic (per-channel).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import MNIST_DIR, header, table, trained_float, write_results
import nncompress as nc
from nncompress.export.onnx import export_onnx
from nncompress.export.graph import cpu_has_vnni, ort_session, u8s8_saturates
from nncompress.export.bench import cosine, interleaved, ratio, torch_dynamic_int8
from nncompress.runtime.int8_torch import to_int8_
from nncompress.zoo import build_model, load_dataset

TMP = Path(tempfile.mkdtemp(prefix="nnc_runtime_"))
def trained(arch: str, data, epochs: int) -> tuple[nn.Module, str]:
    """The zoo model trained `epochs` epochs on mnist-10k (seed 0), from the benchmarks' shared float
    cache (`common.trained_float`); returns (model, how)."""
    model, seconds = trained_float(arch, data, 0, epochs)
    how = f"{seconds:.0f} s" if seconds else "cached from an earlier benchmark run"
    return model, f"trained {epochs} epochs (seed 0, the zoo recipe; {how})"


class BertLayer(nn.Module):
    """A BERT encoder layer from plain Linears: x = LN(x + Attn(x)); x = LN(x + W2 GELU(W1 x))."""

    def __init__(self, dim: int = 384, heads: int = 12, ffn: int = 1536):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn1, self.act, self.ffn2 = nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = self.ln1(x + self.o((weights @ v).transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.ffn2(self.act(self.ffn1(x))))


def bert_encoder(layers: int = 6) -> nn.Module:
    return nn.Sequential(*(BertLayer() for _ in range(layers))).eval()


def ort_static(float_path: Path, calib: list[torch.Tensor], out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x.numpy()} for x in calib])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def ort_dynamic(float_path: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(float_path), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return out


def ort_accuracy(session, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = np.concatenate([session.run(None, {"input": c.numpy()})[0].argmax(1) for c in x.split(500)])
    return float((torch.from_numpy(pred) == y).float().mean())


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.cat([model(c) for c in x.split(500)]).argmax(1) == y).float().mean())


def timing_rows(label: str, fns: dict, batch: int, threads: int, repeats: int, base_ort: str,
                extra_bases: tuple[str, ...] = ()) -> list[list[object]]:
    """One table row per backend: time, throughput and the speed-up against each baseline (median of the
    per-round ratios, min-max): float32 torch, then `extra_bases`, then the float32 ORT row `base_ort`."""
    torch.set_num_threads(threads)
    with torch.inference_mode():
        times = interleaved(fns, repeats)
    rows = []
    for name, ts in times.items():
        cells = []
        for base in ("float32 torch", *extra_bases, base_ort):
            r = ratio(times, base, name)
            text = f"{r[0]:.2f}x"
            cells.append(f"{f'**{text}**' if base == base_ort else text} ({r[1]:.2f}-{r[2]:.2f})")
        rows.append([label, batch, threads, name, f"{1e3 * statistics.median(ts):.3f}",
                     f"{batch / statistics.median(ts):,.0f}", *cells])
        print(rows[-1], flush=True)
    return rows


def time_columns(*extra_bases: str) -> list[str]:
    return ["model", "batch", "threads", "backend", "ms", "items / s", "vs float32 torch (min-max)",
            *(f"vs {b} (min-max)" for b in extra_bases), "vs float32 ORT (min-max)"]


TIME_COLUMNS = time_columns()
AS_TRAINED = "float32 torch as trained (BN unfolded)"


def resnet_section(args, data) -> str:
    model, how = trained("resnet20", data, args.epochs)
    as_trained = copy.deepcopy(model).eval()  # the user's float model: BatchNorm still a separate op
    nc.fold_batchnorm_(model)
    calib = [data.train_x[i:i + 128] for i in range(0, 512, 128)]
    quant = nc.convert_(nc.quantize_(copy.deepcopy(model), nc.LinearQuant(weight_bits=8, act_bits=8), data=calib))
    float_path, ours_path = TMP / "resnet20_f32.onnx", TMP / "resnet20_int8.onnx"
    export_onnx(model, calib[0][:1], float_path, weight_range="full")
    ours = export_onnx(quant, calib[0][:1], ours_path, calibration=calib)
    faithful = export_onnx(quant, calib[0][:1], TMP / "resnet20_faithful.onnx")
    ortq_path = ort_static(float_path, calib, TMP / "resnet20_ortq.onnx")
    x, y = data.test_x, data.test_y
    sessions = {name: ort_session(str(p), 2) for name, p in
                (("f32", float_path), ("ours", ours_path), ("ortq", ortq_path), ("faithful", TMP / "resnet20_faithful.onnx"))}
    acc = [["float32 (PyTorch)", f"{100 * torch_accuracy(model, x, y):.2f}"],
           ["nncompress W8A8, PyTorch (fake-quantized, converted)", f"{100 * torch_accuracy(quant, x, y):.2f}"],
           ["nncompress W8A8 export, ONNX Runtime (Q/DQ only where the model quantizes)",
            f"{100 * ort_accuracy(sessions['faithful'], x, y):.2f}"],
           ["nncompress W8A8 export, ONNX Runtime (+ calibrated residual grids, all int8)",
            f"{100 * ort_accuracy(sessions['ours'], x, y):.2f}"],
           ["ONNX Runtime quantize_static (QDQ, per-channel, same calibration)", f"{100 * ort_accuracy(sessions['ortq'], x, y):.2f}"],
           ["float32 ONNX Runtime", f"{100 * ort_accuracy(sessions['f32'], x, y):.2f}"]]
    with torch.no_grad():
        ref = torch.cat([quant(c) for c in x.split(500)]).numpy()
    got = np.concatenate([sessions["ours"].run(None, {"input": c.numpy()})[0] for c in x.split(500)])
    got_exact = np.concatenate([sessions["faithful"].run(None, {"input": c.numpy()})[0] for c in x.split(500)])
    text = (f"## ResNet-20 W8A8 on mnist-10k\n\nFloat model {how}; the recommended recipe has 15 epochs, "
            f"shortened to keep the run short. BatchNorm folded, calibrated on 512 training "
            f"images. Accuracy on the 2,000 test images:\n\n" + table(["model", "test acc %"], acc))
    text += (f"\nExport notes: {'; '.join(ours.notes)}.  \nOur ONNX Runtime logits vs our PyTorch model: max |diff| "
             f"{np.abs(got_exact - ref).max():.2e} without extra grids, {np.abs(got - ref).max():.3g} with them (largest "
             f"logit {np.abs(ref).max():.1f}); top-1 agreement {100 * float((got.argmax(1) == ref.argmax(1)).mean()):.2f}%.\n\n")
    rows = []
    for shape, label, net_bn, net_f, q_net, paths in (
            ((1, 28, 28), "ResNet-20 1x28x28 (trained)", as_trained, model, quant, (float_path, ours_path, ortq_path)),
            ((3, 32, 32), "ResNet-20 3x32x32 (random)", None, None, None, None)):
        if net_f is None:
            torch.manual_seed(1)
            net_f = build_model("resnet20", shape, 10).eval()
            net_bn = copy.deepcopy(net_f)
            nc.fold_batchnorm_(net_f)
            cal = [torch.randn(64, *shape) for _ in range(4)]
            q_net = nc.convert_(nc.quantize_(copy.deepcopy(net_f), nc.LinearQuant(weight_bits=8, act_bits=8), data=cal))
            paths = (TMP / "r32_f.onnx", TMP / "r32_q.onnx", TMP / "r32_ortq.onnx")
            export_onnx(net_f, cal[0][:1], paths[0], weight_range="full")
            export_onnx(q_net, cal[0][:1], paths[1], calibration=cal)
            ort_static(paths[0], cal, paths[2])
        xb = torch.randn(args.batch, *shape)
        fast = to_int8_(copy.deepcopy(q_net))
        for threads in args.threads:
            s = {n: ort_session(str(p), threads) for n, p in zip(("f", "q", "o"), paths)}
            feed = {"input": xb.numpy()}
            fns = {"float32 torch": lambda: net_f(xb), AS_TRAINED: lambda: net_bn(xb),
                   "int8 torch (nncompress to_int8_)": lambda: fast(xb),
                   "float32 ORT": lambda: s["f"].run(None, feed),
                   "int8 ORT (nncompress export)": lambda: s["q"].run(None, feed),
                   "int8 ORT (ORT quantize_static)": lambda: s["o"].run(None, feed)}
            rows += timing_rows(label, fns, args.batch, threads, args.repeats, "float32 ORT", (AS_TRAINED,))
    text += ("'float32 torch' is the float model with BatchNorm folded into the convolutions (the model every "
             f"quantized row starts from); '{AS_TRAINED}' is the model as training left it, BatchNorm a separate "
             "op, which is what `model.eval()(x)` runs for a user who folds nothing.\n\n")
    return text + table(time_columns(AS_TRAINED), rows)


def linear_section(args) -> str:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4096, 4096)).eval()
    x = torch.randn(1, 4096)
    float_path = TMP / "lin_f.onnx"
    export_onnx(layer, x, float_path, weight_range="full")
    dyn = nc.convert_(nc.quantize_(copy.deepcopy(layer), nc.DynamicQuant(per_token=True)))
    static = nc.convert_(nc.quantize_(copy.deepcopy(layer), nc.LinearQuant(weight_bits=8, act_bits=8),
                                      data=[torch.randn(64, 4096)]))
    dyn_tensor = nc.convert_(nc.quantize_(copy.deepcopy(layer), nc.DynamicQuant(per_token=False)))
    export_onnx(dyn, x, TMP / "lin_dyn.onnx")
    export_onnx(dyn_tensor, x, TMP / "lin_dynt.onnx")
    export_onnx(static, x, TMP / "lin_static.onnx")
    torch_q = torch_dynamic_int8(layer)
    fast_static, fast_dyn = to_int8_(copy.deepcopy(static)), to_int8_(copy.deepcopy(dyn))
    rows = []
    for threads in args.threads:
        s = {n: ort_session(str(TMP / f"lin_{n}.onnx"), threads) for n in ("f", "dyn", "dynt", "static")}
        feed = {"input": x.numpy()}
        fns = {"float32 torch": lambda: layer(x), "int8 torch (quantize_dynamic)": lambda: torch_q(x),
               "int8 torch (nncompress to_int8_, static W8A8)": lambda: fast_static(x),
               "int8 torch (nncompress to_int8_, dynamic per-token)": lambda: fast_dyn(x),
               "float32 ORT": lambda: s["f"].run(None, feed),
               "int8 ORT (nncompress, dynamic per-token)": lambda: s["dyn"].run(None, feed),
               "int8 ORT (nncompress, dynamic per-tensor)": lambda: s["dynt"].run(None, feed),
               "int8 ORT (nncompress, static W8A8)": lambda: s["static"].run(None, feed)}
        rows += timing_rows("Linear 4096x4096", fns, 1, threads, args.repeats, "float32 ORT")
    return "## A 4096x4096 Linear at batch 1\n\n" + table(TIME_COLUMNS, rows)


def transformer_section(args, data) -> str:
    vit, how = trained("tiny_vit", data, args.vit_epochs)
    torch.manual_seed(0)
    bert = bert_encoder()
    text = (f"## Transformers: dynamic int8, per token and per tensor\n\ntiny_vit {how} on mnist-10k "
            "(the recipe has 30). Our int8: nc.DynamicQuant(per_token=True) (W8 per-channel, activations int8 per "
            "row at run time), converted and exported (per-row QuantizeLinear + MatMulInteger), and "
            "nc.DynamicQuant(per_token=False) (one activation scale per tensor at run time: ONNX's "
            "DynamicQuantizeLinear, the form ORT's own quantize_dynamic uses; fewer ops per Linear). Cosine: outputs "
            "vs float32 on the timed input (tiny_vit: logits of 2,000 test images).\n\n")
    acc_rows, rows = [], []
    for label, net, shapes in (("tiny_vit", vit, [(b, 1, 28, 28) for b in (1, 8)]),
                               ("BERT-style 6x384", bert, [(b, 128, 384) for b in (1, 8)])):
        q = nc.convert_(nc.quantize_(copy.deepcopy(net), nc.DynamicQuant(per_token=True)))
        qt = nc.convert_(nc.quantize_(copy.deepcopy(net), nc.DynamicQuant(per_token=False)))
        torch_q = torch_dynamic_int8(net)
        fast_q, fast_t = to_int8_(copy.deepcopy(q)), to_int8_(copy.deepcopy(qt), exact=False)
        stem = TMP / label.split()[0].replace("-", "_")
        f_path, q_path, t_path = Path(f"{stem}_f.onnx"), Path(f"{stem}_q.onnx"), Path(f"{stem}_qt.onnx")
        export_onnx(net, torch.randn(1, *shapes[0][1:]), f_path, weight_range="full")
        result = export_onnx(q, torch.randn(1, *shapes[0][1:]), q_path)
        export_onnx(qt, torch.randn(1, *shapes[0][1:]), t_path)
        o_path = ort_dynamic(f_path, Path(f"{stem}_ortq.onnx"))
        x_eval = data.test_x if label == "tiny_vit" else torch.randn(8, 128, 384)
        paths = (("f", f_path), ("q", q_path), ("t", t_path), ("o", o_path))
        s2 = {n: ort_session(str(p), 2) for n, p in paths}
        with torch.no_grad():
            ref = torch.cat([net(c) for c in x_eval.split(500)]).numpy()
            outs = {"nncompress int8 per token, PyTorch": torch.cat([q(c) for c in x_eval.split(500)]).numpy(),
                    "nncompress int8 per tensor, PyTorch": torch.cat([qt(c) for c in x_eval.split(500)]).numpy(),
                    "torch quantize_dynamic": torch.cat([torch_q(c) for c in x_eval.split(500)]).numpy(),
                    "nncompress int8 per token, to_int8_ (exact)":
                        torch.cat([fast_q(c) for c in x_eval.split(500)]).numpy(),
                    "nncompress int8 per tensor, to_int8_ (fused, exact=False)":
                        torch.cat([fast_t(c) for c in x_eval.split(500)]).numpy()}
        for name, key in (("nncompress int8 per token export, ORT", "q"), ("nncompress int8 per tensor export, ORT", "t"),
                          ("ORT quantize_dynamic", "o")):
            outs[name] = np.concatenate([s2[key].run(None, {"input": c.numpy()})[0] for c in x_eval.split(500)])
        for name, y_hat in [("float32", ref), *outs.items()]:
            acc = (f"{100 * float((torch.from_numpy(y_hat).argmax(1) == data.test_y).float().mean()):.2f}"
                   if label == "tiny_vit" else "-")
            acc_rows.append([label, name, acc, f"{cosine(y_hat, ref):.5f}"])
        for shape in shapes:
            xb = torch.randn(*shape)
            for threads in args.threads:
                s = {n: ort_session(str(p), threads) for n, p in paths}
                feed = {"input": xb.numpy()}
                fns = {"float32 torch": lambda: net(xb), "int8 torch (quantize_dynamic)": lambda: torch_q(xb),
                       "int8 torch (nncompress to_int8_, per token)": lambda: fast_q(xb),
                       "int8 torch (nncompress to_int8_, per tensor, fused)": lambda: fast_t(xb),
                       "float32 ORT": lambda: s["f"].run(None, feed),
                       "int8 ORT (nncompress export, per token)": lambda: s["q"].run(None, feed),
                       "int8 ORT (nncompress export, per tensor)": lambda: s["t"].run(None, feed),
                       "int8 ORT (ORT quantize_dynamic)": lambda: s["o"].run(None, feed)}
                if label == "tiny_vit":  # what graph mode alone buys, for float and int8 alike
                    fns[FROZEN_FLOAT], fns[FROZEN_INT8] = frozen(net, xb), frozen(fast_t, xb)
                rows += timing_rows(f"{label} {'x'.join(map(str, shape[1:]))}", fns, shape[0], threads, args.repeats,
                                    "float32 ORT")
        text_notes = "; ".join(result.notes)
    text += table(["model", "configuration", "test acc %", "cosine vs float32"], acc_rows)
    text += f"\nExport notes: {text_notes}.\n\n" + (
        f"tiny_vit's last two rows run the float32 and the int8 model as frozen TorchScript graphs: tiny_vit has "
        "1.1M MACs per image, so at batch 1-8 eager PyTorch spends most of its time dispatching ops, and what "
        f"int8 adds on top of graph mode is '{FROZEN_INT8}' against '{FROZEN_FLOAT}'.\n\n") + table(TIME_COLUMNS, rows)
    return text


FROZEN_FLOAT = "float32 TorchScript (trace + freeze)"
FROZEN_INT8 = "int8 TorchScript (to_int8_ per tensor, fused; trace + freeze)"


def frozen(model: nn.Module, x: torch.Tensor):
    """`model` traced on `x` and frozen: one graph, no Python per op (PyTorch's own graph mode)."""
    with torch.no_grad():
        graph = torch.jit.freeze(torch.jit.trace(model.eval(), x))
    return lambda: graph(x)


def hf_section(args) -> str:
    """A Hugging Face BertModel (random weights, the BERT-style shape above) with token ids and an
    attention mask: exported through torch.onnx with our int8 Linear layers spliced in."""
    import transformers

    config = transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, attn_implementation="eager")
    torch.manual_seed(0)
    net = transformers.BertModel(config).eval()
    variants = {"per token": nc.DynamicQuant(per_token=True), "per tensor": nc.DynamicQuant(per_token=False)}
    quantized = {k: nc.convert_(nc.quantize_(copy.deepcopy(net), m)) for k, m in variants.items()}
    torch_q = torch_dynamic_int8(net)
    fast_t = to_int8_(copy.deepcopy(quantized["per tensor"]), exact=False)

    def inputs(batch: int, length: int = 128, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length * 3 // 4:] = 0
        return {"input_ids": torch.randint(0, config.vocab_size, (batch, length), generator=g), "attention_mask": mask}

    paths = {"f": TMP / "hf_bert_f.onnx", **{k: TMP / f"hf_bert_{k.replace(' ', '_')}.onnx" for k in variants}}
    export_onnx(net, inputs(1), paths["f"])
    for k, q in quantized.items():
        export_onnx(q, inputs(1), paths[k])
    paths["o"] = ort_dynamic(paths["f"], TMP / "hf_bert_ortq.onnx")
    x_eval = inputs(8, seed=1)
    feed_eval = {k: v.numpy() for k, v in x_eval.items()}
    with torch.no_grad():
        ref = net(**x_eval).last_hidden_state.numpy()
        outs = {f"nncompress int8 {k}, PyTorch": q(**x_eval).last_hidden_state.numpy() for k, q in quantized.items()}
        outs["torch quantize_dynamic"] = torch_q(**x_eval).last_hidden_state.numpy()
        outs["nncompress int8 per tensor, to_int8_ (fused, exact=False)"] = fast_t(**x_eval).last_hidden_state.numpy()
    for k in variants:
        outs[f"nncompress int8 {k} export, ORT"] = ort_session(str(paths[k]), 2).run(None, feed_eval)[0]
    outs["ORT quantize_dynamic"] = ort_session(str(paths["o"]), 2).run(None, feed_eval)[0]
    acc_rows = [["HF BertModel 6x384", name, f"{cosine(y, ref):.5f}"] for name, y in outs.items()]
    rows = []
    for batch in (1, 8):
        xb = inputs(batch, seed=2)
        feed = {k: v.numpy() for k, v in xb.items()}
        for threads in args.threads:
            s = {k: ort_session(str(p), threads) for k, p in paths.items()}
            fns = {"float32 torch": lambda: net(**xb), "int8 torch (quantize_dynamic)": lambda: torch_q(**xb),
                   "int8 torch (nncompress to_int8_, per tensor, fused)": lambda: fast_t(**xb),
                   "float32 ORT": lambda: s["f"].run(None, feed),
                   "int8 ORT (nncompress export, per token)": lambda: s["per token"].run(None, feed),
                   "int8 ORT (nncompress export, per tensor)": lambda: s["per tensor"].run(None, feed),
                   "int8 ORT (ORT quantize_dynamic)": lambda: s["o"].run(None, feed)}
            rows += timing_rows("HF BertModel 6x384 seq 128", fns, batch, threads, args.repeats, "float32 ORT")
    text = ("## Hugging Face BertModel: token ids and an attention mask\n\n`transformers.BertModel` (6 layers, hidden "
            "384, 12 heads, FFN 1536, eager attention, random weights), inputs `input_ids` and `attention_mask` (one "
            "sequence padded by a quarter), sequence 128. Exported with `export_onnx(model, {'input_ids': ..., "
            "'attention_mask': ...})`: torch.onnx's float graph with our int8 Linear layers spliced in. Cosine of "
            "`last_hidden_state` vs float32 on 8 sequences:\n\n")
    text += table(["model", "configuration", "cosine vs float32"], acc_rows) + "\n" + table(TIME_COLUMNS, rows)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--vit-epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train-only", action="store_true", help="train and cache the float models, time nothing")
    parser.add_argument("--only", choices=["resnet", "linear", "transformer", "hf"], nargs="+",
                        default=["resnet", "linear", "transformer", "hf"])
    parser.add_argument("--name", default="runtime", help="results file (benchmarks/results/NAME.md); give another "
                        "name with --only so the full file is not replaced by a part")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(args.threads))
    data = load_dataset("mnist-10k", MNIST_DIR)
    if args.train_only:
        trained("resnet20", data, args.epochs), trained("tiny_vit", data, args.vit_epochs)
        return
    sections = {"resnet": lambda: resnet_section(args, data), "linear": lambda: linear_section(args),
                "transformer": lambda: transformer_section(args, data), "hf": lambda: hf_section(args)}
    text = header("int8 in ONNX Runtime: nncompress export vs float32, PyTorch and ORT's own quantizers") + "\n"
    text += (f"Timings: one process, interleaved rounds after warm-up, medians of {args.repeats} rounds; speed-ups are "
             "the median of per-round ratios (min-max in brackets). 'vs float32 ORT' > 1 means faster than the float32 "
             "ONNX model in ONNX Runtime.\n\n")
    load_start = os.getloadavg()[0]
    body = "".join(sections[name]() + "\n" for name in args.only)
    text += (f"Machine load (1-minute load average, 2 cores shared with other sessions): {load_start:.2f} at the start, "
             f"{os.getloadavg()[0]:.2f} at the end; figures taken under load are noisier and favour nothing in "
             "particular, since every row of a table is interleaved with the others. This VM's CPU reports VNNI: "
             f"{cpu_has_vnni()}; ORT's u8s8 kernels saturate here: {u8s8_saturates()} (worst-case probe).\n\n") + body
    write_results(args.name, text)


if __name__ == "__main__":
    main()
