"""Minimal random code learning (MIRACLE: Havasi, Peharz & Hernandez-Lobato, "Minimal Random Code
Learning: Getting Bits Back from Compressed Model Parameters", ICLR 2019): train a Gaussian
posterior over every weight against a coding goal in bits, then store one *random sample* of it in
about KL(q || p) bits with a code both sides can regenerate.

Per weight (paper sec. 3): variational posterior q(w) = N(mu, sigma^2), prior p(w) = N(0, sigma_p^2)
with one learned sigma_p per layer, and

    KL(q || p) = log(sigma_p / sigma) + (sigma^2 + mu^2) / (2 sigma_p^2) - 1/2       (nats)
    loss = task loss + (1/N) sum_b beta_b KL(q_b || p_b)                              (N training images)

where the weights of a layer are split at random into blocks b, each with a coding goal of C bits,
and beta_b is raised while KL(q_b || p_b) > C ln 2 and lowered otherwise (paper alg. 2, "the
penalty of each block is annealed toward its coding goal"); before the blocks exist one beta holds
the whole model at its total goal.

Coding one block (paper alg. 1, minimal random coding; Chatterjee & Diaconis 2018): draw K = 2^C
candidates w_1..w_K from p with a generator the decoder can replay, pick k with probability
proportional to q(w_k) / p(w_k), store k in C bits; when KL(q_b || p_b) is about C bits the picked
sample is distributed close to q_b (paper thm 3.2). Blocks are coded in rounds; between rounds the
uncoded blocks are retrained with the coded ones fixed (the paper retrains after every block; a
round of many blocks is the same idea at a CPU's pace).

The shared generator (`random_code_generator.py`, specified in docs/format.md) is integer arithmetic
only, so the decoder is bit-exact on every machine. Its draws are Irwin-Hall(12) rather than exactly
Gaussian (|z| <= 6); training and the importance weights use the Gaussian density, which
Irwin-Hall(12)'s is within 2.5 % of for |z| <= 2.5 and below further out (0.86x at 3, 0.38x at 4,
0.02x at 5): picks of weights beyond about 3 sigma_p lean toward the centre (Irwin-Hall(4),
|z| <= 3.46, clipped them).

Storage (`encode`): the picked indices (int64, declared in [0, 2^C - 1] so the container packs them
in C bits) and sigma_p (float32); meta: shape, seed, C. A tensor coded this way holds at most
MAX_CODED weights (the encoder's work is 2^C samples per weight; the decoder's memory about 24
bytes per weight for the layout).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import Context, Method
from ..parametrize import (CompositionError, Encoded, WeightTransform, attach, original, switched, transform_kind,
                           transforms)
from ..prune.masks import check_weight
from ..registry import register
from ..validate import UserError, check_int_range, check_positive
from .ptq import quantizable_layers
from .random_code_generator import (CHUNK, MASK64, MAX_BLOCK_BITS, MAX_CODED, MAX_WIDTH, BlockLayout, block_values,
                                    decode_blocks, keyed, pick_candidates)


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, prior_std^2)) per element, in nats."""
    return torch.log(prior_std / sigma) + (sigma.square() + mu.square()) / (2 * prior_std.square()) - 0.5


@transform_kind("minimal_random_code")
class RandomCodeWeight(WeightTransform):
    """w = mu + sigma * eps in training within `posterior_sampling` (mu: the trained tensor), mu
    otherwise; once blocks are coded, their weights are the picked prior samples (`coded_value`),
    fixed. With the local reparameterization (`posterior_sampling(..., local=True)`) the weight is
    mu and the layer's output gets the noise instead (`_output_noise`)."""

    def __init__(self, weight: torch.Tensor, init_sigma: float, seed: int):
        super().__init__()
        std = float(weight.detach().std()) if weight.numel() > 1 else 0.0
        std = std if std > 0 else 1.0
        self.log_sigma = nn.Parameter(torch.full_like(weight.detach().float(), math.log(init_sigma * std)))
        self.log_prior_std = nn.Parameter(torch.tensor(math.log(std)))
        self.register_buffer("coded", torch.zeros_like(weight, dtype=torch.bool))
        self.register_buffer("coded_value", torch.zeros_like(weight.detach().float()))
        self.register_buffer("indices", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("block_ids", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("frozen_prior_std", torch.tensor(0.0))
        self.register_buffer("beta", torch.ones(1))
        self.register_buffer("block_bits", torch.tensor(0))
        self.register_buffer("layer_seed", torch.tensor(int(seed), dtype=torch.int64))  # saved: the file names it
        self.sampling = False  # set by `posterior_sampling`; acts in training mode only
        self.local = False  # set by `posterior_sampling(local=True)`: the noise is added to the layer's output

    @property
    def bits(self) -> int:
        """C, bits per block (0 until the blocks are laid out)."""
        return int(self.block_bits)

    @property
    def seed(self) -> int:
        """The layer's generator seed (in [0, 2^62), from the method's seed and the layer's index)."""
        return int(self.layer_seed)

    # -- the posterior and the prior ---------------------------------------------------------------
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def prior_std(self) -> torch.Tensor:
        """sigma_p: learned until the blocks are laid out, then frozen (the coded samples scale by it)."""
        return self.frozen_prior_std if self.bits else self.log_prior_std.exp()

    def kl_nats(self, mu: torch.Tensor) -> torch.Tensor:
        """Per-weight KL(q || p) of the uncoded weights (0 for coded ones)."""
        return torch.where(self.coded, 0.0, gaussian_kl(mu, self.sigma(), self.prior_std()))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        value = w + self.sigma() * torch.randn_like(w) if self.noisy and not self.local else w
        return torch.where(self.coded, self.coded_value, value)

    @property
    def noisy(self) -> bool:
        """Whether the forward pass samples the posterior now (training mode, within `posterior_sampling`)."""
        return self.training and self.sampling

    def variance(self) -> torch.Tensor:
        """sigma^2 per weight, 0 for coded weights (their value is fixed)."""
        return torch.where(self.coded, 0.0, self.sigma().square())

    # -- blocks and coding -------------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return int(self.indices.numel())

    def layout(self) -> BlockLayout:
        return BlockLayout.of(self.seed, self.coded.numel(), self.blocks)

    def set_blocks(self, blocks: int, bits: int) -> None:
        """Split the weights into `blocks` random blocks coded with `bits` each; freezes sigma_p."""
        numel = self.coded.numel()
        if numel > MAX_CODED:
            raise UserError(f"RandomCodeWeight: {numel} weights, more than MAX_CODED = {MAX_CODED} in one coded tensor")
        if not 1 <= blocks <= numel or numel > blocks * MAX_WIDTH:
            raise UserError(f"blocks={blocks} must be in [{math.ceil(numel / MAX_WIDTH)}, {numel}] for {numel} weights "
                            f"(at most {MAX_WIDTH} weights per block)")
        check_int_range("block bits", bits, 1, MAX_BLOCK_BITS)
        self.block_bits = torch.tensor(bits)
        self.frozen_prior_std = self.log_prior_std.detach().exp().float().clone()
        self.log_prior_std.requires_grad_(False)
        self.indices = torch.full((blocks,), -1, dtype=torch.int64, device=self.coded.device)
        self.block_ids = torch.from_numpy(self.layout().block_of()).reshape(self.coded.shape).to(self.coded.device)
        self.beta = torch.full((blocks,), float(self.beta.mean()), device=self.coded.device)

    def block_kl_nats(self, mu: torch.Tensor) -> torch.Tensor:
        """KL per block (before the layout: one value for the whole layer)."""
        kl = self.kl_nats(mu).flatten()
        if not self.blocks:
            return kl.sum().reshape(1)
        return torch.zeros(self.blocks, dtype=kl.dtype, device=kl.device).index_add(0, self.block_ids.flatten(), kl)

    def code(self, mu: torch.Tensor, blocks: np.ndarray, generator: torch.Generator) -> None:
        """Code `blocks` (paper alg. 1): candidates from the shared generator, one picked per block with
        probability proportional to q / p, its sample fixed as the weights' value (on the CPU; the
        buffers stay on their device)."""
        layout, k, prior = self.layout(), 1 << self.bits, self.prior_std().detach().cpu()
        mu, sigma = mu.detach().flatten().float().cpu(), self.sigma().detach().flatten().float().cpu()
        per_chunk = max(1, CHUNK // (k * layout.width))
        for first in range(0, len(blocks), per_chunk):
            chunk = blocks[first:first + per_chunk]
            picks = pick_candidates(self.seed, layout, chunk, k, mu, sigma, prior, generator)
            positions, values = block_values(self.seed, layout, k, picks, prior, chunk)
            where = torch.from_numpy(positions).to(self.coded.device)
            self.coded_value.view(-1)[where] = values.to(self.coded_value.device)
            self.coded.view(-1)[where] = True
            self.indices[torch.from_numpy(chunk).to(self.indices.device)] = torch.from_numpy(picks).to(self.indices.device)

    # -- storage -------------------------------------------------------------------------------------
    def encode(self, w: torch.Tensor) -> Encoded:
        """The picked indices once every block is coded; before that the weights as they compute
        (float32: the posterior mean and any coded blocks), so a model in training saves too."""
        if not self.blocks or bool((self.indices < 0).any()):
            with torch.no_grad():
                value = torch.where(self.coded, self.coded_value, w.detach().float())
            return Encoded(self.kind, {"value": value}, {"shape": list(w.shape)})
        return Encoded(self.kind, {"indices": self.indices.clone(), "prior_std": self.frozen_prior_std.clone()},
                       {"shape": list(w.shape), "seed": self.seed, "bits": self.bits,
                        "int_ranges": {"indices": [0, (1 << self.bits) - 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        if "value" in encoded.tensors:  # not coded yet: the weights as they were
            return encoded.tensors["value"].float()
        shape, seed, bits = encoded.meta.get("shape"), encoded.meta.get("seed"), encoded.meta.get("bits")
        indices, prior = encoded.tensors.get("indices"), encoded.tensors.get("prior_std")
        if not isinstance(indices, torch.Tensor) or not isinstance(prior, torch.Tensor):
            raise ValueError("minimal_random_code: the stage lacks its indices or prior_std array")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ValueError(f"minimal_random_code: shape {str(shape)[:80]} is not a list of sizes")
        if not (isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= MAX_BLOCK_BITS):
            raise ValueError(f"minimal_random_code: bits={str(bits)[:40]} must be an integer in [1, {MAX_BLOCK_BITS}]")
        if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MASK64):
            raise ValueError(f"minimal_random_code: seed={str(seed)[:40]} must be an integer in [0, 2^64)")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"minimal_random_code: indices must be integers, not {indices.dtype}")
        if prior.numel() != 1 or not prior.dtype.is_floating_point:
            raise ValueError(f"minimal_random_code: prior_std must be one float, not {list(prior.shape)} {prior.dtype}")
        numel, blocks = math.prod(shape), indices.numel()
        if numel > MAX_CODED:
            raise ValueError(f"minimal_random_code: {numel} weights, more than MAX_CODED = {MAX_CODED}")
        if indices.dim() != 1 or not 1 <= blocks <= numel or numel > blocks * MAX_WIDTH:
            raise ValueError(f"minimal_random_code: {blocks} indices cannot code {numel} weights "
                             f"(1 to {MAX_WIDTH} weights per block, one index each, in a 1-D array)")
        if indices.device.type == "meta":
            return torch.empty(shape, device="meta")
        codes = indices.long().numpy()
        if codes.min() < 0 or codes.max() >= 1 << bits:
            raise ValueError(f"minimal_random_code: an index is outside [0, {(1 << bits) - 1}]")
        scale = prior.reshape(()).float()
        if not (bool(torch.isfinite(scale)) and float(scale) > 0):
            raise ValueError(f"minimal_random_code: prior_std = {float(scale)} must be positive and finite")
        return decode_blocks(seed, BlockLayout.of(seed, numel, blocks), 1 << bits, codes, scale, numel).reshape(shape)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        """Adopt the stored block count (it is chosen from the trained model's KL)."""
        for name in ("indices", "beta", "block_ids"):
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, torch.Tensor) and incoming.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(incoming))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"blocks={self.blocks}, bits={self.bits}, coded={float(self.coded.float().mean()):.0%}"


def random_code_layers(model: nn.Module) -> dict[str, tuple[nn.Module, RandomCodeWeight]]:
    """Every layer with a RandomCodeWeight: name -> (layer, transform)."""
    found = {}
    for name, layer in model.named_modules():
        for t in transforms(layer):
            if isinstance(t, RandomCodeWeight):
                found[name] = (layer, t)
    return found


@contextlib.contextmanager
def posterior_sampling(model: nn.Module, enabled: bool = True, local: bool = False) -> Iterator[nn.Module]:
    """Within the block, random-code layers in training mode compute with a fresh sample
    w = mu + sigma * eps per step (the reparameterization of the variational training); the previous
    setting is restored afterwards.

    `local=True`: the local reparameterization trick (Kingma, Salimans & Welling, NeurIPS 2015,
    sec. 2.3) for Linear and Conv layers: the weight is mu and every output element is drawn from the
    distribution it has under q,
        y = x * mu + sqrt(x^2 * sigma^2) * eps,   eps ~ N(0, 1) per output element
    (* the layer's product: matmul or convolution). Each element's distribution is the one a weight
    sample gives it, but the noise is independent across elements: across the examples of a batch,
    which lowers the gradient's variance (the paper's point), and also across the positions of a
    convolution and the tokens of a sequence, which share one weight sample under weight sampling
    (for those layers it is the approximation of Molchanov et al. 2017, a slightly different
    objective; exact for a Linear on one vector per example). Nesting adds no second noise."""
    found = random_code_layers(model)
    local_layers = [(layer, t) for layer, t in found.values()
                    if local and not t.local and isinstance(layer, LOCAL_TYPES) and not _transposed(layer)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(switched((t for _, t in found.values()), "sampling", enabled))
        stack.enter_context(switched((t for _, t in local_layers), "local", True))
        for layer, _ in local_layers:
            stack.callback(layer.register_forward_hook(_output_noise, with_kwargs=True).remove)
        yield model


#: layers whose output noise `posterior_sampling(local=True)` computes (others sample their weights)
LOCAL_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _transposed(layer: nn.Module) -> bool:
    return bool(getattr(layer, "transposed", False))


def _output_noise(layer: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook of `posterior_sampling(local=True)`: adds sqrt(x^2 * sigma^2) * eps to the output
    of a Linear / Conv layer (computed in float32 or wider, outside autocast: an fp16 variance
    rounds small values to 0, whose square root has no gradient). The layer's own transform is
    looked up, so a copy of the layer adds its own noise."""
    t = next((t for t in transforms(layer) if isinstance(t, RandomCodeWeight)), None)
    if t is None or not (t.noisy and t.local):
        return None
    x = args[0] if args else kwargs["input"]
    dtype = torch.promote_types(output.dtype, torch.float32)
    with torch.autocast(output.device.type, enabled=False):
        x2, variance = x.to(dtype).square(), t.variance().to(dtype)
        if isinstance(layer, nn.Linear):
            out_variance = nn.functional.linear(x2, variance)
        else:  # the layer's own convolution, padding mode included: pad(x)^2 = pad(x^2) for every mode
            out_variance = layer._conv_forward(x2, variance, None)
        noise = out_variance.clamp_min(1e-16).sqrt() * torch.randn_like(out_variance)
    return output + noise.to(output.dtype)


def posterior_mean(layer: nn.Module) -> torch.Tensor:
    """mu: the tensor the layer's RandomCodeWeight receives (the trained weight through any mask)."""
    value = original(layer)
    for t in transforms(layer):
        if isinstance(t, RandomCodeWeight):
            return value
        value = t(value)
    raise UserError("internal: the layer has no RandomCodeWeight")


@register("miracle")
@dataclass(frozen=True, kw_only=True)
class MinimalRandomCode(Method):
    """MIRACLE (Havasi et al. 2019): Gaussian posteriors trained toward a coding goal, each block of
    weights stored as the index of a shared random sample (see the module doc).

    Args:
        total_bits: the coding goal C_total for all targeted weights together (file bits of the
            indices; the flow derives it from a byte budget).
        block_bits: C, bits per block (2^C candidates; the encoder draws 2^C x block-width samples).
        init_sigma: initial posterior std, as a fraction of each layer's weight std (1: the prior's,
            so the KL starts near the goal instead of far above it).
        beta_step: how fast each penalty moves toward its coding goal (per step, in log beta).
        train_size: N, the training images (the KL is per image, as in the ELBO).
        seed: the layers' generator seeds derive from it (stored in the file).
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> _ = nc.apply_(net, nc.MinimalRandomCode(total_bits=64, train_size=100))
        >>> float(net[0].weight.std()) > 0
        True
    """

    total_bits: int
    block_bits: int = 12
    init_sigma: float = 1.0
    beta_step: float = 0.02
    train_size: int = 60000
    seed: int = 0

    def __post_init__(self) -> None:
        check_int_range("total_bits", self.total_bits, 1, 1 << 40)
        check_int_range("block_bits", self.block_bits, 1, MAX_BLOCK_BITS)
        check_positive("init_sigma", self.init_sigma)
        check_positive("beta_step", self.beta_step)
        check_int_range("train_size", self.train_size, 1, 1 << 40)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=False)
        for name, layer in layers.items():
            check_weight(layer.weight, name, "MinimalRandomCode")
            if transforms(layer):
                raise CompositionError(f"{name}: MinimalRandomCode codes every weight of a layer with prior samples, "
                                       f"so it cannot follow {type(transforms(layer)[-1]).__name__} (a pruning mask "
                                       "would be overwritten); apply it to unpruned layers")
        for index, (name, layer) in enumerate(layers.items()):
            seed = int(keyed(self.seed, np.array([index], dtype=np.uint64))[0] >> np.uint64(2))  # JSON-safe, < 2^62
            attach(layer, RandomCodeWeight(layer.weight, self.init_sigma, seed), layer_name=name)
        ctx.record(self, total_bits=self.total_bits, block_bits=self.block_bits, layers=list(layers))
        return model

    def regularizers(self, model: nn.Module) -> list[Callable[[nn.Module], torch.Tensor]]:
        """(1/N) sum_b beta_b KL_b. After every call in training each beta moves toward its goal,
        log beta += beta_step * clip(KL / goal - 1, -1, 1) (a proportional form of the paper's
        multiplicative rule, which oscillated over a few thousand steps), within [1e-6, 1e6]; the
        goal is C ln 2 nats per block once laid out, before that total_bits ln 2 for the model."""
        goal_block, goal_total = self.block_bits * math.log(2), self.total_bits * math.log(2)

        def move(beta: torch.Tensor, ratio: torch.Tensor) -> None:
            beta.mul_(torch.exp(self.beta_step * (ratio - 1).clamp(-1.0, 1.0))).clamp_(1e-6, 1e6)

        def penalty(net: nn.Module) -> torch.Tensor:
            found = random_code_layers(net)
            if not found:
                raise UserError("MinimalRandomCode: the model has no random-code layer (apply the method first)")
            kls = {n: t.block_kl_nats(posterior_mean(layer)) for n, (layer, t) in found.items()}
            if net.training:
                with torch.no_grad():
                    if all(t.blocks for _, t in found.values()):
                        for name, (_, t) in found.items():
                            move(t.beta, kls[name].detach() / goal_block)
                    else:
                        total = sum(k.detach().sum() for k in kls.values())
                        for _, t in found.values():
                            move(t.beta, total / goal_total)
            return sum((t.beta * kls[n]).sum() for n, (_, t) in found.items()) / self.train_size

        return [penalty]
