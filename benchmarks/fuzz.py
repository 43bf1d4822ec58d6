"""Fuzz nncompress's decoders (issue 11): `.nnc` files, `load_model` on `.safetensors` files, and
recipe files. One decoder per run; the findings go into a JSON file that `--report` turns into
`benchmarks/results/reliability.md`.

    nice -n 10 python benchmarks/fuzz.py --decoder nnc --seconds 600 --out runs/fuzz-nnc.json
    nice -n 10 python benchmarks/fuzz.py --decoder safetensors --seconds 600 --out runs/fuzz-st.json
    nice -n 10 python benchmarks/fuzz.py --decoder recipe --seconds 600 --out runs/fuzz-recipe.json
    python benchmarks/fuzz.py --report runs/fuzz-*.json   # writes benchmarks/results/reliability.md

Engines: `mutate` (default; a hand-written mutation fuzzer with a corpus that keeps inputs reaching
new (outcome, message) pairs) and `atheris` (coverage-guided libFuzzer, when installed; stats are
flushed to --out every 500 executions, so stop it with --seconds / -max_total_time).

Mutations: in CRC-fixing mode (most executions) the header JSON is mutated either as bytes or
structurally (a random node replaced by a hostile value: huge / negative numbers, Infinity, deep
nesting, wrong types, catastrophic regexes), sections are mutated, and every checksum / length is
recomputed so the parser itself is exercised; otherwise raw bytes are flipped, inserted, cut.

Recorded per run: executions, executions/s, outcomes (decoded / expected error type), leaked
exception types (anything other than the decoder's one error type), hangs (> 1 s), peak memory
above 10x the input size + 64 MiB, and decodes that yield non-finite values.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
RESULTS = REPO / "benchmarks" / "results" / "reliability.md"
FIXED_MEMORY = 160 << 20  # decode budget 64 MiB (encode/layout.DECODE_FIXED_BYTES) + temporaries
HANG_SECONDS = 1.0
KILL_SECONDS = 20

HOSTILE = [0, -1, 1, -(2**63), 2**63, 2**31, 10**30, 1.5, -0.0, 1e308, "", "x", "re:(.*)*(.*)*(.*)*(.*)*x", "re:((",
           None, True, [], {}, [1500, 1500], [-1], [0], {"a": 1}, "float16", "bool", "huffman", "relative",
           [[[[[[[[]]]]]]]], 2**16, 65537, 10**6, "Infinity", "NaN", [1, 2, 3] * 100]
INTERESTING_TEXT = [b"Infinity", b"-Infinity", b"NaN", b"1e999", b"-1", b"[" * 50, b"{}" * 20, b"null", b"99999999999999999999"]


class Hang(Exception):
    pass


def _alarm(_signum, _frame):
    raise Hang()


# --- mutations ------------------------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[min(pos, len(b) - 1)] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == 2:
            b[pos:pos] = rng.choice(INTERESTING_TEXT) if rng.random() < 0.3 else os.urandom(rng.randint(1, 8))
        elif op == 3:
            del b[pos : pos + rng.randint(1, 16)]
        else:
            src = rng.randrange(len(b) + 1)
            b[pos:pos] = b[src : src + rng.randint(1, 32)]
    return bytes(b)


def _nodes(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:64]):
            yield from _nodes(v, (*path, i))


def mutate_json(obj, rng: random.Random):
    """A copy of `obj` with 1..3 random nodes replaced by hostile values (or numbers nudged)."""
    obj = json.loads(json.dumps(obj))
    for _ in range(rng.randint(1, 3)):
        paths = list(_nodes(obj))
        path = rng.choice(paths[1:] or paths)
        if not path:
            return copy.deepcopy(rng.choice(HOSTILE))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        old = parent[path[-1]]
        if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
            new = old + rng.choice([-1, 1, -old - 1, old, 2**rng.randrange(8, 64)])
        elif rng.random() < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
            continue
        else:
            new = copy.deepcopy(rng.choice(HOSTILE))
        parent[path[-1]] = float("inf") if new == "Infinity" else float("nan") if new == "NaN" else new
    return obj


# --- .nnc ---------------------------------------------------------------------------------------

def nnc_split(data: bytes):
    """(major, header, sections' bytes, compact) of a .nnc file (3.3 compact headers too)."""
    from nncompress.encode.header_dictionary import DICTIONARY

    header_len = struct.unpack_from("<I", data, 8)[0]
    major = struct.unpack_from("<H", data, 4)[0]
    raw = data[16 : 16 + header_len]
    text = zlib.decompressobj(zdict=DICTIONARY).decompress(raw) if major >= 2 else raw
    header = json.loads(text)
    start = 16 + header_len
    compact = bool(header["sections"]) and all(isinstance(s, int) for s in header["sections"])
    spans = (itertools.pairwise([0, *itertools.accumulate(header["sections"])]) if compact
             else ((s["offset"], s["offset"] + s["length"]) for s in header["sections"]))
    return major, header, [data[start + a : start + b] for a, b in spans], compact


def nnc_assemble(major: int, header_text: bytes, blobs: list[bytes], compact: bool = False) -> bytes:
    """A file from its parts; a compact header is compressed from the format's dictionary (3.3)."""
    from nncompress.encode.header_dictionary import DICTIONARY

    if compact:
        compressor = zlib.compressobj(9, zdict=DICTIONARY)
        raw = compressor.compress(header_text) + compressor.flush()
    else:
        raw = zlib.compress(header_text) if major >= 2 else header_text
    minor = 3 if compact else 0
    return struct.pack("<4sHHII", b"NNC\x01", major, minor, len(raw), zlib.crc32(raw)) + raw + b"".join(blobs)


def fix_sections(header: dict, blobs: list[bytes]) -> None:
    """Make the section table (either form) and its CRCs match `blobs` again."""
    offset = 0
    for i, (section, blob) in enumerate(zip(header.get("sections", []), blobs)):
        if isinstance(section, dict):
            section.update(offset=offset, length=len(blob), crc32=zlib.crc32(blob))
        elif isinstance(section, int) and not isinstance(section, bool):
            header["sections"][i] = len(blob)
        offset += len(blob)
    if "crc32" in header:
        header["crc32"] = zlib.crc32(b"".join(blobs))


def mutate_nnc(seed: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        return mutate_bytes(seed, rng)  # raw: mostly caught by CRCs and bounds
    try:
        major, header, blobs, compact = nnc_split(seed)
    except (ValueError, KeyError, TypeError, IndexError, zlib.error, struct.error, RecursionError):
        return mutate_bytes(seed, rng)  # a corpus entry that is no longer well formed
    blobs = list(blobs)
    if rng.random() < 0.4 and blobs:
        k = rng.randrange(len(blobs))
        blobs[k] = mutate_bytes(blobs[k], rng) if blobs[k] else os.urandom(rng.randint(1, 8))
    if rng.random() < 0.6:
        header = mutate_json(header, rng)
    if isinstance(header, dict) and isinstance(header.get("sections"), list) and rng.random() < 0.85:
        fix_sections(header, blobs)
    text = json.dumps(header).encode()
    if rng.random() < 0.25:
        text = mutate_bytes(text, rng)
    return nnc_assemble(major, text, blobs, compact)


def nnc_seeds() -> list[bytes]:
    import torch

    import nncompress as nc
    from nncompress.encode.container import Coding, serialize
    from nncompress.encode.model import encode_model
    from nncompress.zoo import build_model

    torch.manual_seed(0)
    model = build_model("lenet300", (1, 8, 8), 10).eval()
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.8, scope="global"))
    nc.quantize_(model, nc.KMeansQuant(bits=3))
    golden = REPO / "tests" / "encode" / "golden"
    quant = build_model("lenet300", (1, 4, 4), 10).eval()
    nc.quantize_(quant, nc.LinearQuant(weight_bits=4, act_bits=None, granularity="group", group_size=8))
    desc = {"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10}
    return [serialize(encode_model(model, desc)), serialize(encode_model(miracle_coded(), desc)),
            serialize(encode_model(model, desc, coding=Coding("context", "compact"))),
            serialize(encode_model(quant, {"arch": "lenet300", "in_shape": [1, 4, 4], "num_classes": 10})),
            *(p.read_bytes() for p in sorted(golden.glob("*.nnc")))]


def miracle_coded():
    """lenet300 on 8x8 inputs with every weight MIRACLE-coded (minimal_random_code chains, 8-bit blocks)."""
    import numpy as np
    import torch

    import nncompress as nc
    from nncompress.quant.minimal_random_code import random_code_layers
    from nncompress.zoo import build_model

    torch.manual_seed(1)
    model = build_model("lenet300", (1, 8, 8), 10).eval()
    nc.apply_(model, nc.MinimalRandomCode(total_bits=8000, block_bits=8, train_size=100))
    for layer, t in random_code_layers(model).values():
        t.set_blocks(max(1, layer.weight.numel() // 64), 8)
        t.code(layer.parametrizations.weight.original, np.arange(t.blocks), torch.Generator().manual_seed(0))
    return model


def run_nnc(data: bytes, _tmp: Path):
    from nncompress.encode.container import parse
    from nncompress.encode.model import decode_model, decoded_state

    nnc = parse(data)
    state = decoded_state(nnc)
    if isinstance(nnc.model, dict) and "arch" in nnc.model:
        state = decode_model(nnc).state_dict()
    return state


# --- safetensors ----------------------------------------------------------------------------------

def st_split(data: bytes):
    n = struct.unpack_from("<Q", data)[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def st_assemble(header_text: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(header_text)) + header_text + body


def mutate_safetensors(seed: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.1:
        return mutate_bytes(seed, rng)
    try:
        header, body = st_split(seed)
        meta = json.loads(header["__metadata__"]["nncompress"])
    except (ValueError, KeyError, TypeError, IndexError, struct.error, RecursionError):
        return mutate_bytes(seed, rng)  # a corpus entry that is no longer well formed
    roll = rng.random()
    if roll < 0.6:  # the nncompress metadata: structurally, or as text
        text = json.dumps(mutate_json(meta, rng))
        header["__metadata__"]["nncompress"] = mutate_bytes(text.encode(), rng).decode("utf-8", "replace") \
            if rng.random() < 0.2 else text
    elif roll < 0.8:  # tensor bytes (NaN / Inf values, garbage codes)
        body = mutate_bytes(body, rng)[: len(body)].ljust(len(body), b"\0")
    else:  # the safetensors header itself (dtype, shape, offsets)
        header = mutate_json(header, rng)
    return st_assemble(json.dumps(header).encode(), body)


def safetensors_seeds() -> list[bytes]:
    import torch

    import nncompress as nc
    from nncompress.zoo import build_model

    tmp = Path(tempfile.mkdtemp())
    out = []
    torch.manual_seed(0)
    model = build_model("lenet300", (1, 8, 8), 10)
    recipe = [nc.MagnitudePrune(sparsity=0.8, scope="global"), nc.KMeansQuant(bits=3)]
    for m in recipe:
        nc.apply_(model, m)
    nc.save_model(model, tmp / "a.safetensors", recipe=recipe, arch="lenet300", in_shape=(1, 8, 8), num_classes=10)
    quant = build_model("lenet300", (1, 8, 8), 10)
    lq = nc.LinearQuant(weight_bits=4, act_bits=8)
    batch = torch.randn(4, 1, 8, 8)
    nc.quantize_(quant, lq, data=[batch])
    nc.convert_(quant)
    nc.save_model(quant, tmp / "b.safetensors", recipe=[lq], arch="lenet300", in_shape=(1, 8, 8), num_classes=10,
                  example=batch[:2])
    plain = build_model("lenet300", (1, 8, 8), 10)
    nc.save_model(plain, tmp / "c.safetensors", arch="lenet300", in_shape=(1, 8, 8), num_classes=10)
    for name in ("a", "b", "c"):
        out.append((tmp / f"{name}.safetensors").read_bytes())
    return out


def run_safetensors(data: bytes, tmp: Path):
    import nncompress as nc

    path = tmp / "f.safetensors"
    path.write_bytes(data)
    model, _ = nc.load_model(path)
    return model.state_dict()


# --- recipes -------------------------------------------------------------------------------------

RECIPE_SEEDS = [
    [{"method": "magnitude", "sparsity": 0.5, "scope": "global"}, {"method": "kmeans", "bits": 3}],
    [{"method": "linear", "weight_bits": 4, "act_bits": 8, "granularity": "group", "group_size": 4,
      "targets": {"include": ["re:fc[12]"]}}],
    [{"method": "threshold", "quality": 0.5, "targets": {"exclude": ["fc3"]}}, {"method": "format", "weight_format": "fp8_e4m3"}],
    [{"method": "random", "sparsity": 0.3, "layer_sparsity": {"re:fc.*": 0.2}, "seed": 3},
     {"method": "smoothquant", "alpha": 0.5}],
    [{"method": "dynamic", "weight_bits": 8, "per_token": True}],
]


def recipe_seeds() -> list[bytes]:
    return [json.dumps(r).encode() for r in RECIPE_SEEDS]


def mutate_recipe(seed: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return mutate_bytes(seed, rng)
    try:
        return json.dumps(mutate_json(json.loads(seed), rng)).encode()
    except (ValueError, RecursionError):
        return mutate_bytes(seed, rng)


def run_recipe(data: bytes, _tmp: Path):
    """A recipe file as `load_model` / the CLI read one: bounded JSON, a list of at most
    MAX_RECIPE_METHODS method specs, each built and replayed on a small model."""
    import torch

    from nncompress.api import apply_
    from nncompress.fileio import loads_bounded
    from nncompress.methods import MAX_RECIPE_METHODS, method_from_dict
    from nncompress.validate import UserError

    specs = loads_bounded(data, "recipe")
    if not isinstance(specs, list) or len(specs) > MAX_RECIPE_METHODS:
        raise UserError(f"a recipe is a list of at most {MAX_RECIPE_METHODS} methods")
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(8, 16))
    model.add_module("relu", torch.nn.ReLU())
    model.add_module("fc2", torch.nn.Linear(16, 16))
    model.add_module("fc3", torch.nn.Linear(16, 4))
    batches = [torch.randn(4, 8)]
    for spec in specs:
        apply_(model, method_from_dict(spec), data=batches, train_fn=lambda m: None)
    model(batches[0])
    return model.state_dict()


DECODERS = {
    "nnc": (nnc_seeds, mutate_nnc, run_nnc, "NncFormatError", "a .nnc file (container + codecs + model)"),
    "safetensors": (safetensors_seeds, mutate_safetensors, run_safetensors, "UserError",
                    "`load_model` of a .safetensors file (metadata, recipe, tensors)"),
    "recipe": (recipe_seeds, mutate_recipe, run_recipe, "UserError", "a JSON recipe file, built and replayed"),
}


# --- the loop ------------------------------------------------------------------------------------

def expected_error(decoder: str) -> type[BaseException]:
    from nncompress.encode.container import NncFormatError
    from nncompress.validate import UserError

    return NncFormatError if decoder == "nnc" else UserError


def non_finite(state) -> list[str]:
    import torch

    return [k for k, v in (state or {}).items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())]


class Stats:
    def __init__(self, decoder: str, engine: str, out: Path):
        self.decoder, self.engine, self.out = decoder, engine, out
        self.start = time.time()
        self.execs = 0
        self.outcomes: Counter = Counter()
        self.leaks: dict[str, dict] = {}
        self.hangs: list[dict] = []
        self.memory: list[dict] = []
        self.nonfinite: list[dict] = []
        self.slowest = 0.0  # wall-clock seconds of the slowest execution
        self.slowest_cpu = 0.0  # CPU seconds (all threads) of the most expensive one
        self.stalls = 0  # executions over 1 s of wall clock but not of CPU: waiting for a shared core
        self.load = [round(os.getloadavg()[0], 2)]
        self.max_input = 0
        self.base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_rss = self.base_rss
        self.warm = False  # set after the seeds and 300 warm-up executions

    def keep(self, kind: str, data: bytes) -> str:
        """Save a finding's whole input next to the stats file (for reproduction); returns its path."""
        folder = self.out.with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{kind}-{self.execs}.bin"
        path.write_bytes(data)
        return str(path)

    def record(self, data: bytes, seconds: float, cpu_seconds: float, outcome: str, detail: str = "",
               state=None) -> None:
        """One execution. A hang is over HANG_SECONDS of CPU time (the decoder's own work: a ReDoS, a
        huge loop); over HANG_SECONDS of wall clock only is a stall (the process waited for a core that
        other work on the machine held) and is counted apart."""
        self.execs += 1
        self.outcomes[outcome] += 1
        self.slowest = max(self.slowest, seconds)
        self.slowest_cpu = max(self.slowest_cpu, cpu_seconds)
        self.max_input = max(self.max_input, len(data))
        if seconds > HANG_SECONDS and cpu_seconds <= HANG_SECONDS and self.warm:
            self.stalls += 1
        if cpu_seconds > HANG_SECONDS and self.warm:  # the warm-up's first uses import modules lazily
            self.hangs.append({"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "bytes": len(data),
                               "outcome": outcome, "exec": self.execs,
                               "detail": detail[:200], "input": self.keep("hang", data) if len(self.hangs) < 5 else ""})
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if rss > self.peak_rss:
            growth = rss - self.base_rss
            if growth > 10 * len(data) + FIXED_MEMORY:
                self.memory.append({"rss_growth": growth, "bytes": len(data), "outcome": outcome, "detail": detail[:200],
                                    "input": self.keep("memory", data) if len(self.memory) < 5 else ""})
            self.peak_rss = rss
        if outcome.startswith("leak:") and outcome not in self.leaks:
            self.leaks[outcome] = {"detail": detail[-1500:], "bytes": len(data), "input": self.keep("leak", data)}
        bad = non_finite(state) if outcome == "decoded" else []
        if bad:
            self.nonfinite.append({"tensors": bad[:5], "bytes": len(data),
                                   "input": self.keep("nonfinite", data) if len(self.nonfinite) < 5 else ""})
        if self.execs % 500 == 0:
            self.flush()

    def flush(self) -> None:
        seconds = time.time() - self.start
        doc = {"decoder": self.decoder, "engine": self.engine, "seconds": round(seconds, 1), "executions": self.execs,
               "exec_per_s": round(self.execs / max(seconds, 1e-9), 1), "outcomes": dict(self.outcomes.most_common()),
               "leaked_types": {k: v["detail"].splitlines()[-1] if v["detail"] else "" for k, v in self.leaks.items()},
               "leaks": self.leaks, "hangs": self.hangs[:50], "hang_count": len(self.hangs),
               "slowest_s": round(self.slowest, 3), "slowest_cpu_s": round(self.slowest_cpu, 3), "stalls": self.stalls,
               "load_average": [*self.load, round(os.getloadavg()[0], 2)], "memory_findings": self.memory[:50],
               "peak_rss_growth_mib": round((self.peak_rss - self.base_rss) / 2**20, 1), "max_input_bytes": self.max_input,
               "nonfinite_decodes": self.nonfinite[:50], "nonfinite_count": len(self.nonfinite),
               "command": " ".join(["nice -n 10", "python", *sys.argv])}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(doc, indent=1))


def execute(decoder: str, data: bytes, tmp: Path, stats: Stats) -> str:
    run = DECODERS[decoder][2]
    expected = expected_error(decoder)
    signal.alarm(KILL_SECONDS)
    start, cpu_start = time.perf_counter(), time.process_time()
    state, detail = None, ""
    try:
        state = run(data, tmp)
        outcome = "decoded"
    except expected as err:
        outcome, detail = f"{type(err).__name__}", str(err)[:300]
    except Hang:
        outcome, detail = "hang (killed)", f"> {KILL_SECONDS} s"
    except Exception as err:  # noqa: BLE001 - what the fuzzer looks for
        outcome, detail = f"leak:{type(err).__name__}", traceback.format_exc()
    finally:
        signal.alarm(0)
    stats.record(data, time.perf_counter() - start, time.process_time() - cpu_start, outcome, detail, state)
    return outcome + ":" + detail[:60]


def fuzz_mutate(decoder: str, seconds: float, out: Path, seed: int) -> Stats:
    seeds_fn, mutate, _, _, _ = DECODERS[decoder]
    rng = random.Random(seed)
    corpus = seeds_fn()
    stats = Stats(decoder, "mutate", out)
    tmp = Path(tempfile.mkdtemp(prefix="nnc-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    seen: set[str] = set()
    for data in corpus:
        seen.add(execute(decoder, data, tmp, stats))
    for _ in range(300):  # warm-up (imports, allocator pools), then the memory baseline
        execute(decoder, mutate(rng.choice(corpus), rng), tmp, stats)
    stats.base_rss = stats.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats.warm = True
    deadline = time.time() + seconds
    while time.time() < deadline:
        parent = rng.choice(corpus[:8] if rng.random() < 0.5 else corpus)
        child = mutate(parent, rng)
        key = execute(decoder, child, tmp, stats)
        if key not in seen and len(corpus) < 2000:  # a new outcome / message: keep it to mutate further
            seen.add(key)
            corpus.append(child)
    stats.flush()
    return stats


def fuzz_atheris(decoder: str, seconds: float, out: Path, seed: int) -> None:
    import atheris

    seeds_fn, mutate, _, _, _ = DECODERS[decoder]
    with atheris.instrument_imports(include=["nncompress"]):
        import nncompress  # noqa: F401
        import nncompress.encode.model  # noqa: F401
    corpus = seeds_fn()
    stats = Stats(decoder, "atheris", out)
    tmp = Path(tempfile.mkdtemp(prefix="nnc-fuzz-"))
    rng = random.Random(seed)
    for data in corpus:  # warm-up: lazy imports
        execute(decoder, data, tmp, stats)
    stats.warm = True

    def target(data: bytes) -> None:
        # libFuzzer's bytes pick a seed and drive our structure-aware mutator (CRC-fixing)
        if len(data) < 4:
            return
        rng.seed(int.from_bytes(data[:4], "little"))
        execute(decoder, mutate(corpus[data[0] % len(corpus)], rng), tmp, stats)

    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-rss_limit_mb=4096", f"-seed={seed}"], target)
    atheris.Fuzz()


# --- report --------------------------------------------------------------------------------------

CRAFTED = [
    ("6.5 KB .nnc declaring `in_shape [1, 1500, 1500]` / `num_classes 2e7`", "NncFormatError before any model is built",
     "refused, no build (`test_allocation.py::test_nnc_model_description_is_bounded_before_building`)"),
    ("70 KB .nnc header of millions of empty JSON objects", "NncFormatError before parsing",
     "refused by the value count, < 200 MB traced (`test_a_header_of_millions_of_empty_objects_is_refused_before_parsing`)"),
    (".safetensors metadata with a huge zoo description", "UserError before building",
     "refused (`test_safetensors_zoo_description_is_bounded_before_building`)"),
    ("recipe `group_size: 10**6`, 200 stacked methods", "UserError naming the field",
     "refused (`test_recipe_length_is_bounded`; `test_recipe_group_size_is_bounded` is a regression guard)"),
    ("`re:(.*)*(.*)*(.*)*(.*)*x` vs a 200-char layer name", "< 1 s", "~0.1 ms with RE2 (`test_regex_and_metadata.py`)"),
    ("`Infinity` offset, deep JSON, negative Huffman symbols, negative shapes, empty codebook, zero-size layer",
     "NncFormatError / one CLI error line, exit 2", "as expected (`test_decoders.py`)"),
    ("negative relative distances, NaN / Inf in codebook or bias", "NncFormatError", "refused (`test_decoders.py`)"),
    ("KMeansQuant / global MagnitudePrune + KMeansQuant recipe", "reloads exactly", "exact (`test_reload_and_weights.py`)"),
    ("`\"sparsity\": \"0.5\"`, list `layer_bits`, `targets: \"fc1\"`, `re:((`, metadata null / list, missing `in_shape`",
     "UserError naming the field", "as expected (`test_regex_and_metadata.py`)"),
    ("NaN / Inf weights into k-means and pruning; zero-size layer; empty calibration data", "UserError naming the layer",
     "as expected (`test_reload_and_weights.py`)"),
    ("CLI: bad option values, unknown layers, `--out DIR`, non-checkpoint `--resume`, bad IDX labels",
     "error before any work", "as expected (`test_files_and_cli.py`; `--bits conv=99` and `--rounds 0` are regression guards)"),
    ("killed write, umask, fsync", "stale temp removed, mode 0666 & ~umask, fsync file + folder",
     "as expected (`test_files_and_cli.py`)"),
]


def report(paths: list[Path]) -> str:
    runs = [json.loads(p.read_text()) for p in paths]
    lines = ["# Reliability: fuzzing the decoders (issue 11)", "",
             "Produced by `benchmarks/fuzz.py` (mutation fuzzer with a CRC-fixing mode: the header JSON is mutated "
             "as bytes or structurally, sections are mutated, then every length / checksum is recomputed so the "
             "parser itself is exercised). One decoder per run, niced. Machine: 2 shared cores.", "",
             "| decoder | input class | engine | duration | executions | exec/s | leaked exception types "
             "| hangs > 1 s CPU | slowest CPU / wall | stalls > 1 s wall only | load average (start, end) "
             "| memory > 10x input + 160 MiB | non-finite decodes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        leaks = ", ".join(sorted(r["leaked_types"])) or "none"
        lines.append(f"| {r['decoder']} | {DECODERS[r['decoder']][4]} | {r['engine']} | {r['seconds'] / 60:.1f} min | "
                     f"{r['executions']:,} | {r['exec_per_s']} | {leaks} | {r['hang_count']} | "
                     f"{r.get('slowest_cpu_s', '?')} s / {r['slowest_s']} s | {r.get('stalls', '?')} | "
                     f"{', '.join(map(str, r.get('load_average', [])))} | "
                     f"{len(r['memory_findings'])} (peak RSS growth {r['peak_rss_growth_mib']} MiB) | {r['nonfinite_count']} |")
    lines += ["", "Crafted inputs of the issue's defect classes (tests in `tests/reliability/`; each fails on the code "
              "before the fix except the regression guards marked (already handled)):", "", "| input class | expected | observed (test) |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in CRAFTED]
    lines += ["", "Outcomes per decoder (the expected error type names what was wrong):", ""]
    for r in runs:
        outcomes = ", ".join(f"{k}: {v:,}" for k, v in r["outcomes"].items())
        lines += [f"- **{r['decoder']}**: {outcomes}", f"  - command: `{r['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoder", choices=sorted(DECODERS))
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, nargs="+", help="fuzz JSON files -> the markdown table")
    parser.add_argument("--report-out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.report:
        args.report_out.write_text(report(args.report))
        print(args.report_out.read_text())
        return
    if not args.decoder:
        parser.error("--decoder is required (or --report)")
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    out = args.out or REPO / "runs" / f"fuzz-{args.decoder}.json"
    if args.engine == "atheris":
        fuzz_atheris(args.decoder, args.seconds, out, args.seed)
    else:
        stats = fuzz_mutate(args.decoder, args.seconds, out, args.seed)
        print(json.dumps({k: v for k, v in json.loads(out.read_text()).items() if k not in ("leaks",)}, indent=1)[:3000])
        del stats


if __name__ == "__main__":
    main()
