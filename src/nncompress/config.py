"""The core types: `Select` (which layers), `Method` (one extension point), `Context` (what a method may
use), and `run_method`, the one path every caller applies a Method through.

Every pruning method and quantizer is a frozen, keyword-only dataclass of hyperparameters with
`apply(model, ctx) -> model`, registered by name for YAML in `registry.py`. Learned state (masks,
scales, codebooks) lives on the model as buffers; figures go into `ctx.report`.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from .batches import ForwardFn, with_forward
from .validate import UserError, did_you_mean

try:
    import re2
except ImportError:  # pragma: no cover - google-re2 is a dependency; plain `re` where it cannot install
    re2 = None

V = TypeVar("V")
_RE2_OPTIONS = None
if re2 is not None:
    _RE2_OPTIONS = re2.Options()
    _RE2_OPTIONS.log_errors = False  # errors become UserErrors, not lines on stderr


@dataclass(frozen=True, kw_only=True)
class Select:
    """Layers chosen by type name and qualified name ("re:<regex>" for a regular expression).

    A layer is selected when its type is in `types`, it matches `include` (or `include` is empty)
    and matches nothing in `exclude`. Example: `Select(exclude=("conv1",))`.
    """

    types: tuple[str, ...] = ("Linear", "Conv1d", "Conv2d", "Conv3d")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("types", "include", "exclude"):  # YAML gives lists; keep the dataclass hashable
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise UserError(f"targets.{name}={value!r} must be a list of strings (layer names, 're:<regex>' "
                                "or, for types, class names)")
            object.__setattr__(self, name, tuple(value))
        for pattern in (*self.include, *self.exclude):
            check_pattern(pattern, "targets pattern")

    @staticmethod
    def _matches(pattern: str, name: str) -> bool:
        return pattern_matches(pattern, name)

    def matches(self, name: str, module: nn.Module) -> bool:
        if type_before_parametrizations(module).__name__ not in self.types:
            return False
        if self.include and not any(self._matches(p, name) for p in self.include):
            return False
        return not any(self._matches(p, name) for p in self.exclude)

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The selected layers of `model` by name; names in `include` that match nothing are an error."""
        chosen = {name: m for name, m in model.named_modules() if name and self.matches(name, m)}
        all_names = [n for n, _ in model.named_modules() if n]
        for pattern in (*self.include, *self.exclude):
            if not pattern.startswith("re:") and pattern not in all_names:
                layer_names = [n for n, m in model.named_modules() if type_before_parametrizations(m).__name__ in self.types]
                raise UserError(f"layer {pattern!r} is not in the model.{did_you_mean(pattern, all_names)} "
                                 f"{'/'.join(self.types)} layers: {', '.join(layer_names) or 'none'}")
        return chosen


MAX_PATTERN_LENGTH = 1000  # characters of a "re:" pattern (they may come from files)


@functools.lru_cache(maxsize=1024)
def compile_pattern(regex: str) -> Any:
    """A compiled layer regex. With google-re2 (a dependency) matching takes linear time, so a
    pattern read from a file cannot stall loading (`(.*)*(.*)*x` on a long name); Python's `re` is
    the fallback where re2 is missing. A bad pattern is a UserError naming it."""
    if not isinstance(regex, str) or len(regex) > MAX_PATTERN_LENGTH:
        raise UserError(f"layer pattern {str(regex)[:80]!r}... is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        if re2 is not None:
            return re2.compile(regex, _RE2_OPTIONS)
        return re.compile(regex)
    except (re.error, getattr(re2, "error", re.error)) as err:
        msg = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        raise UserError(f"layer pattern 're:{regex}' is not a valid regular expression (RE2 syntax): {msg}") from None


def check_pattern(pattern: object, field: str) -> str:
    """A layer pattern from a file: a string; a "re:" one must compile (UserError naming `field`)."""
    if not isinstance(pattern, str):
        raise UserError(f"{field}={pattern!r} must be a layer name, 're:<regex>' or 'type:<Class>' (a string)")
    if pattern.startswith("re:"):
        compile_pattern(pattern[3:])
    return pattern


def pattern_matches(pattern: str, name: str, module: nn.Module | None = None) -> bool:
    """Does a layer pattern match? "fc1" (exact name), "re:<regex>" (full match on the name, RE2
    syntax, linear time) or "type:Linear|Conv2d" (the layer's class name, before parametrization)."""
    if pattern.startswith("re:"):
        return compile_pattern(pattern[3:]).fullmatch(name) is not None
    if pattern.startswith("type:"):
        return module is not None and type_before_parametrizations(module).__name__ in pattern[5:].split("|")
    return pattern == name


def per_layer(overrides: dict[str, V], layers: dict[str, nn.Module], default: V, what: str) -> dict[str, V]:
    """The value for each layer: an exact-name key wins, else the first matching pattern key
    ("re:...", "type:..."), else `default`. A plain name that is not a targeted layer is an error naming
    the layers (a pattern may match nothing, so one recipe fits several models)."""
    for key in overrides:
        if not key.startswith(("re:", "type:")) and key not in layers:
            raise UserError(f"{what} key {key!r} matches none of the targeted layers.{did_you_mean(key, layers)} "
                            f"Layers: {', '.join(layers) or 'none'} (keys: a name, 're:<regex>' or 'type:<Class>')")
    values = {}
    for name, module in layers.items():
        if name in overrides:
            values[name] = overrides[name]
            continue
        values[name] = next((v for k, v in overrides.items() if pattern_matches(k, name, module)), default)
    return values


@dataclass
class Context:
    """What a method may use besides the model: calibration data, a training function, the report.

    `data`: batches of any shape `batches.py` feeds (tensors, (x, y), dicts / BatchEncodings...).
    `forward_fn(model, batch) -> output`: how to feed them when the default rules do not fit; it is
    bound to `data` (`batches.with_forward`), so every consumer of `ctx.data` (observers, data-aware
    criteria) uses it without passing it on.
    """

    data: Iterable | None = None
    train_fn: Callable[[nn.Module], Any] | None = None
    forward_fn: ForwardFn | None = None
    report: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = with_forward(self.data, self.forward_fn)

    def record(self, method: Method, **facts: Any) -> None:
        self.report.append({"method": method.name, **facts})


@dataclass(frozen=True, kw_only=True)
class Method:
    """Base of every pruning method and quantizer: hyperparameters only, `apply` does the work.

    Optional hooks a subclass may override:
    - `needs`: what `apply` requires in the Context ("data", "train_fn"), checked before it runs;
    - `regularizers(model)`: penalties to add to the training loss while fine-tuning the model
      this method was applied to (PACT's L2 on the clipping levels, network slimming's L1 on BN
      scales, DiffQ's size penalty): `nc.fit(model, data, config, regularizers=method.regularizers(model))`;
    - `finish(model)`: harden what the training kept soft, once it is over (soft weight-sharing's
      snap to the mixture); returns the methods that rebuild the finished structure on a fresh model
      (what `save_model` records as the recipe) and figures for the report.
    """

    name: ClassVar[str] = "method"
    needs: ClassVar[frozenset[str]] = frozenset()
    trains_before_finish: ClassVar[bool] = False  # finish() hardens a training's result: untrained, it ruins the model
    targets: Select = Select()

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        raise NotImplementedError

    def check_context(self, ctx: Context) -> None:
        if "data" in self.needs and ctx.data is None:
            raise UserError(f"{type(self).__name__} needs calibration data: pass data=... (or --dataset on the CLI)")
        if "train_fn" in self.needs and ctx.train_fn is None:
            raise UserError(f"{type(self).__name__} needs a training function: pass train_fn=...")

    def regularizers(self, model: nn.Module) -> list[Callable[[nn.Module], torch.Tensor]]:
        """Loss terms `model -> scalar tensor` for fine-tuning after `apply`; none by default."""
        return []

    def finish(self, model: nn.Module) -> tuple[list[Method], dict]:
        """After fine-tuning (a recipe's quantize stage calls it at its end): by default nothing to
        harden, the method itself rebuilds the structure, no figures."""
        return [self], {}

    def to_dict(self) -> dict:
        """Plain-data form for YAML / JSON: {"method": name, field: value, ...}."""
        out: dict[str, Any] = {"method": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def run_method(model: nn.Module, method: Method, ctx: Context | None = None) -> list[dict]:
    """The one application path (`nc.apply_`, the pruning schedules, lottery tickets): check that
    `ctx` has what `method` needs, apply it in place, and return the report entries it recorded
    (they are also appended to `ctx.report`, so a schedule's context collects every round)."""
    ctx = Context() if ctx is None else ctx
    method.check_context(ctx)
    start = len(ctx.report)
    method.apply(model, ctx)
    return ctx.report[start:]
