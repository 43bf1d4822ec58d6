"""Fit and evaluate any `nn.Module` on any iterable of batches: `(inputs, targets)` pairs, dicts /
`transformers` BatchEncodings with a "labels" key, tuples of several inputs, or a `forward_fn`
(`batches.py` says how each is fed). The loss is `loss_fn(output, target)` (cross-entropy on the
logits by default) plus any `regularizers` (`model -> scalar tensor`, e.g. `Method.regularizers`).

Training goes through parametrizations (masks, fake quantizers, codebooks), so the same loop
fine-tunes dense, pruned and quantized models. It is seeded and deterministic on CPU, writes
checkpoints atomically after every epoch and resumes from them, and runs unchanged under
`torchrun --nproc_per_node=N` (DistributedDataParallel on gloo): the global batch stays the same,
each rank trains on its own shard, and only rank 0 writes files.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .batches import ForwardFn, batch_size, feed, output_tensor, target_of
from .fileio import atomic_write
from .validate import UserError, check_choice, check_int_range, check_positive
from .zoo.loader import TensorLoader

Batches = Iterable  # of batches of any shape batches.py feeds
LossFn = Callable[[object, object], torch.Tensor]
Regularizer = Callable[[nn.Module], torch.Tensor]
StepLoss = Callable[[object], tuple[torch.Tensor, torch.Tensor]]  # batch -> (objective, data loss)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of one training run (the LR schedule steps once per epoch)."""

    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int_range("epochs", self.epochs, 0, 100_000)
        check_positive("lr", self.lr)
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        check_choice("schedule", self.schedule, ("cosine", "step", "constant"))


@dataclass
class History:
    """What a run measured, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)
    train_objective: list[float] = field(default_factory=list)  # + regularizers (NaN for epochs without any)
    eval_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def init_distributed() -> tuple[int, int]:
    """Join the process group that `torchrun` describes (gloo); return (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def lr_groups(model: nn.Module, lr: float) -> list[dict]:
    """The trainable parameters as optimizer groups: one at `lr`, plus one per (learning-rate factor,
    decay) that a submodule declares for its own parameters in class attributes: `lr_scales`
    ({parameter name: factor}) and `no_weight_decay` (names exempt from weight decay): e.g. soft
    weight-sharing's mixture prior, whose means and precisions are no weights to shrink. Class
    attributes survive `copy.deepcopy`; without any, one group in parameter order, as before."""
    scale_of: dict[int, tuple[float, bool]] = {}
    for module in model.modules():
        scales = getattr(type(module), "lr_scales", {})
        exempt = set(getattr(type(module), "no_weight_decay", ()))
        if not isinstance(scales, Mapping):
            continue
        for name, param in module._parameters.items():
            if param is not None and (name in scales or name in exempt):
                scale_of[id(param)] = (float(scales.get(name, 1.0)), name in exempt)
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault(scale_of.get(id(param), (1.0, False)), []).append(param)
    return [{"params": params, "lr": lr * factor, **({"weight_decay": 0.0} if exempt else {})}
            for (factor, exempt), params in groups.items()]


def make_optimizer(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and per-epoch schedule of `config` over `model`'s trainable parameters (`lr_groups`)."""
    params = lr_groups(model, config.lr)
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                                     weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.schedule == "cosine":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(config.epochs, 1))
    elif config.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(config.epochs // 3, 1), gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched


def _class_logits(output: object, target: object) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(logits, target, class dim) when `target` holds class indices for `output`'s logits: the class
    dim is last when logits.shape[:-1] == target.shape (transformers' (B, T, C)), else 1 (torch's
    (B, C, ...)); None for any other target (regression, none)."""
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.dtype == torch.bool:
        return None
    logits = output_tensor(output)
    if logits.dim() != target.dim() + 1:
        return None
    return logits, target, -1 if logits.shape[:-1] == target.shape else 1


def cross_entropy(output: object, target: object) -> torch.Tensor:
    """The default `loss_fn`: mean cross-entropy of the output's logits against class indices
    (targets equal to -100 are ignored, as in `transformers`)."""
    found = _class_logits(output, target)
    if found is None:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise UserError(f"the default loss (cross-entropy) needs integer class targets matching the logits, got target "
                        f"{shape} for logits {tuple(output_tensor(output).shape)}; give batches a target ((x, y) or a "
                        "'labels' key) or pass loss_fn=lambda output, target: ...")
    logits, target, dim = found
    if dim == -1:
        logits, target = logits.flatten(0, -2), target.flatten()
    return nn.functional.cross_entropy(logits, target, ignore_index=-100)


def _count_correct(output: object, target: object) -> tuple[int, int]:
    """(correct top-1 predictions, counted targets) for class targets; (0, 0) otherwise."""
    found = _class_logits(output, target)
    if found is None:
        return 0, 0
    logits, target, dim = found
    valid = target != -100
    return int(((logits.argmax(dim) == target) & valid).sum()), int(valid.sum())


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, *, forward_fn: ForwardFn | None = None,
             loss_fn: LossFn | None = None) -> dict[str, float]:
    """Mean `loss_fn` per sample (default cross-entropy) and, for class targets, top-1 "accuracy"
    (a fraction; the key is absent when no batch has class targets)."""
    loss_fn = loss_fn or cross_entropy
    was_training = model.training
    model.eval()
    correct, counted, loss_sum, samples = 0, 0, 0.0, 0
    try:
        for batch in batches:
            output, target, n = feed(model, batch, forward_fn), target_of(batch), batch_size(batch)
            loss_sum += float(loss_fn(output, target)) * n
            hits, count = _count_correct(output, target)
            correct, counted, samples = correct + hits, counted + count, samples + n
    finally:
        model.train(was_training)
    if samples == 0:
        raise UserError("evaluate() got no batches: the evaluation data is empty")
    return {"accuracy": correct / counted, "loss": loss_sum / samples} if counted else {"loss": loss_sum / samples}


def _shard(batches: Batches, rank: int, world_size: int) -> Batches:
    if world_size > 1 and isinstance(batches, TensorLoader):
        return TensorLoader(batches.x, batches.y, max(batches.batch_size // world_size, 1), shuffle=batches.shuffle,
                            seed=batches.seed, rank=rank, world_size=world_size)
    return batches


def _save_checkpoint(path: Path, model: nn.Module, opt, sched, epoch: int, history: History, config: TrainConfig) -> None:
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "rng": torch.get_rng_state(), "config": asdict(config),
             "history": {"train_loss": history.train_loss, "train_objective": history.train_objective,
                         "eval_accuracy": history.eval_accuracy,
                         "steps": history.steps}}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path, model: nn.Module, opt, sched, history: History) -> int:
    """Restore a checkpoint (tensors and plain types only: weights_only=True); return the next epoch."""
    try:
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError, EOFError) as err:
        raise UserError(f"checkpoint {str(path)!r} cannot be resumed for this model: {err}") from err
    torch.set_rng_state(state["rng"])
    history.train_loss[:] = state["history"]["train_loss"]
    history.train_objective[:] = state["history"].get("train_objective", [])
    history.eval_accuracy[:] = state["history"]["eval_accuracy"]
    history.steps = state["history"]["steps"]
    return int(state["epoch"]) + 1


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), transient=True, disable=not enabled)


def stderr_log(message: str) -> None:
    """`fit`'s default log: one line per epoch on stderr (from the main process only)."""
    if is_main_process():
        print(message, file=sys.stderr)


def fit(model: nn.Module, train_batches: Batches, config: TrainConfig = TrainConfig(), *,
        eval_batches: Batches | None = None, checkpoint: str | os.PathLike | None = None, resume: bool = False,
        on_step: Callable[[int], None] | None = None, on_epoch: Callable[[int, History], None] | None = None,
        progress: bool | None = None, log: Callable[[str], None] | None = None,
        forward_fn: ForwardFn | None = None, loss_fn: LossFn | None = None,
        regularizers: Sequence[Regularizer] = ()) -> History:
    """Train `model` in place; returns the per-epoch history.

    Each step minimises `loss_fn(output, target)` (default: cross-entropy on the logits) plus the
    sum of `regularizers` (each `model -> scalar tensor`, e.g. `method.regularizers(model)`);
    `history.train_loss` records the data loss alone, comparable with `evaluate`'s (and, with
    regularizers, `history.train_objective` the whole objective; the log line shows the data loss and
    the regularizers' sum, e.g. soft weight-sharing's tau / N * L_C, which is negative once the weights
    sit in narrow components: a log density above zero). Batches are fed
    by `batches.py` (or `forward_fn(model, batch)`). `on_step(step)` runs after every optimizer step
    (pruning schedules use it) and `on_epoch(epoch, history)` after every epoch. With `checkpoint`,
    state is written after each epoch; with `resume=True` an existing checkpoint is loaded first and
    training continues where it stopped. `progress`: a per-step progress bar (default: when stderr is
    a terminal); `log(line)` receives one line per epoch (default `stderr_log`; `log=lambda _: None`
    silences it).
    """
    rank, world_size = init_distributed()
    torch.manual_seed(config.seed)
    train_batches = _shard(train_batches, rank, world_size)
    net = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    step_loss = _objective(net, model, forward_fn, loss_fn or cross_entropy, tuple(regularizers))
    opt, sched = make_optimizer(model, config)
    history = History()
    start = 0
    if checkpoint and resume and Path(checkpoint).is_file():
        start = _load_checkpoint(Path(checkpoint), model, opt, sched, history)
        if regularizers:  # epochs saved without an objective (older checkpoints) keep their places: NaN
            history.train_objective[:0] = [math.nan] * (len(history.train_loss) - len(history.train_objective))
    show = sys.stderr.isatty() and is_main_process() if progress is None else progress and is_main_process()
    log = log or stderr_log
    began = time.perf_counter()
    for epoch in range(start, config.epochs):
        loss, objective = _train_epoch(net, train_batches, opt, step_loss, epoch, history, on_step, show,
                                       f"epoch {epoch + 1}/{config.epochs}", bool(regularizers))
        sched.step()
        history.train_loss.append(loss)
        if regularizers or history.train_objective:  # one entry per epoch once any epoch had one
            history.train_objective.append(objective if regularizers else math.nan)
        if eval_batches is not None:
            measured = evaluate(model, eval_batches, forward_fn=forward_fn, loss_fn=loss_fn)
            if "accuracy" in measured:
                history.eval_accuracy.append(measured["accuracy"])
        if checkpoint and is_main_process():
            _save_checkpoint(Path(checkpoint), model, opt, sched, epoch, history, config)
        acc = f" eval acc {history.eval_accuracy[-1]:.4f}" if history.eval_accuracy else ""
        with_terms = f" + regularizers {objective - loss:.4f}" if regularizers else ""
        log(f"epoch {epoch + 1}/{config.epochs}: train loss {loss:.4f}{with_terms}{acc}")
        if on_epoch:
            on_epoch(epoch, history)
    history.seconds = time.perf_counter() - began
    return history


def _objective(net: nn.Module, model: nn.Module, forward_fn: ForwardFn | None, loss_fn: LossFn,
               regularizers: tuple[Regularizer, ...]) -> StepLoss:
    """batch -> (data loss + regularizers, data loss); `net` may be the DDP wrapper of `model`."""
    def step_loss(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
        data_loss = loss_fn(feed(net, batch, forward_fn), target_of(batch))
        total = data_loss
        for regularizer in regularizers:
            penalty = regularizer(model)
            if not isinstance(penalty, torch.Tensor) or penalty.numel() != 1:
                raise UserError(f"regularizer {getattr(regularizer, '__name__', regularizer)!r} returned "
                                f"{type(penalty).__name__}: it must return a scalar tensor (model -> loss term)")
            total = total + penalty.reshape(())
        return total, data_loss
    return step_loss


def _train_epoch(net: nn.Module, batches: Batches, opt, step_loss: StepLoss, epoch: int, history: History,
                 on_step: Callable[[int], None] | None, show: bool, description: str,
                 regularized: bool) -> tuple[float, float]:
    """One epoch; returns the mean data loss and the mean objective (data loss + regularizers)."""
    if hasattr(batches, "set_epoch"):
        batches.set_epoch(epoch)
    net.train()
    loss_sum, objective_sum, count = 0.0, 0.0, 0
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    with _progress(show) as bar:
        task = bar.add_task(description, total=total, status="")
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            objective, data_loss = step_loss(batch)
            objective.backward()
            opt.step()
            history.steps += 1
            if on_step:
                on_step(history.steps)
            n = batch_size(batch)
            loss_sum += data_loss.item() * n
            objective_sum += (objective.item() if regularized else 0.0) * n
            count += n
            terms = f" + regularizers {(objective_sum - loss_sum) / count:.4f}" if regularized else ""
            bar.update(task, advance=1, status=f"loss {loss_sum / count:.4f}{terms}")
    if count == 0:
        raise UserError("fit() got no training batches: the training data is empty")
    return loss_sum / count, objective_sum / count
