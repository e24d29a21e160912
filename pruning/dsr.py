"""Sparse training: dynamic sparse reparameterization (DSR) and a static sparse baseline.

DSR (Mostafa & Wang, ICML 2019, arXiv 1902.05967) trains a sparse network directly at a fixed
number of nonzero weights. Every ``P`` optimizer steps (``reallocate_every``) it

1. prunes every active weight with ``|w| < H`` in all sparse layers, one *global* threshold ``H``;
2. adapts ``H`` so that the number pruned, ``K``, approaches the target ``N_p``
   (``prune_fraction_per_cycle * nonzero_budget``): ``K < (1 - tol) N_p`` doubles ``H`` (prune
   more next time), ``K > (1 + tol) N_p`` halves it (prune less), ``tol = 0.1`` as in the paper;
3. regrows exactly ``K`` weights, split across layers in proportion to each layer's surviving
   weights ``R_l`` (largest-remainder rounding so the split sums to ``K``; a layer never gets
   more than its free positions, the overflow goes to the others by the same rule), at random
   positions among the layer's zeros (just-pruned positions included), with value zero.

So the number of active weights stays exactly at the budget, while the budget moves between
layers. "Active" means *in the mask*: a regrown weight counts from the moment it is regrown,
even while its value is still exactly zero.

Layers: every ``nn.Linear`` / ``nn.Conv*`` of the model is sparse unless named in
``dense_layers``. The paper does not sparsify biases or batch-norm parameters and keeps some
weight layers dense (as we recall, the first convolution and the final linear layer; that
detail could not be checked against the paper's text here). Nothing is dense by default;
``dense_layers=first_and_last_layers(model)`` follows that reading. Biases are never masked. ``sparsity`` and ``nonzero_budget``
count the weights of the *sparse* layers only (dense layers are extra).

Energy-targeted training: a caller that converts an energy budget into a nonzero count passes
``nonzero_budget=``; :meth:`SparseTrainer.nonzeros_per_layer` and :meth:`layer_sizes` give
what a per-layer energy estimate needs.

Masks stay applied with :class:`pruning.blocks.MaskedWeights` (gradient masking plus zeroing
again after every step). Pass the ``optimizer`` so that its per-weight state (momentum,
Adam moments) is reset at pruned and regrown positions; a regrown weight then really starts
from zero.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .blocks import MaskedWeights, prunable_layers

__all__ = [
    "DynamicSparseTrainer",
    "ReallocationCycle",
    "SparseTrainer",
    "SparseTrainingHistory",
    "StaticSparseTrainer",
    "first_and_last_layers",
    "proportional_allocation",
    "train_sparse",
]


@dataclass(frozen=True)
class ReallocationCycle:
    """One DSR prune-and-regrow cycle. Counts are numbers of weights."""

    step: int  # optimizer steps done when the cycle ran
    threshold: float  # H used to prune in this cycle (|w| units)
    next_threshold: float  # H after adaptation, used by the next cycle
    target_pruned: int  # N_p
    pruned: int  # K
    regrown: int  # always equals pruned
    pruned_per_layer: Mapping[str, int]
    regrown_per_layer: Mapping[str, int]
    nonzeros_per_layer: Mapping[str, int]  # active weights per sparse layer after regrowth


def proportional_allocation(total: int, weights: Sequence[int], caps: Sequence[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights``, none above its ``cap``.

    Largest-remainder rounding (ties: lower index first), exact integer arithmetic. An entry
    whose exact share exceeds its cap gets the cap, and the rest is split again over the
    others (repeated until no share exceeds its cap). If every uncapped weight is zero, the
    remainder is split in proportion to the caps (the free capacity).
    Requires ``sum(caps) >= total``.
    """
    if len(weights) != len(caps):
        raise ValueError(f"weights and caps must have the same length, got {len(weights)} and {len(caps)}")
    if total < 0 or any(w < 0 for w in weights) or any(c < 0 for c in caps):
        raise ValueError(f"total, weights and caps must be >= 0, got {total}, {weights}, {caps}")
    if sum(caps) < total:
        raise ValueError(f"caps must sum to at least total {total}, got {sum(caps)}")
    alloc = [0] * len(weights)
    remaining = total
    open_ = [i for i in range(len(caps)) if caps[i] > 0]

    def split_weights(idx: list[int]) -> dict[int, int]:
        w = {i: int(weights[i]) for i in idx}
        return w if sum(w.values()) > 0 else {i: int(caps[i]) for i in idx}

    while True:  # entries whose exact share exceeds their cap get the cap; split the rest again
        w = split_weights(open_)
        wsum = sum(w.values())
        over = [i for i in open_ if remaining * w[i] > caps[i] * wsum]
        if not over:
            break
        for i in over:
            alloc[i] = caps[i]
            remaining -= caps[i]
        open_ = [i for i in open_ if i not in over]
    if remaining > 0:
        share = {i: remaining * w[i] // wsum for i in open_}
        extra = remaining - sum(share.values())
        for i in sorted(open_, key=lambda i: (-(remaining * w[i] % wsum), i))[:extra]:
            share[i] += 1
        for i in open_:
            alloc[i] = share[i]
    return alloc


def first_and_last_layers(model: nn.Module) -> tuple[str, ...]:
    """Names of the first and last Linear/Conv layers (``named_modules`` order)."""
    names = list(prunable_layers(model))
    if not names:
        raise ValueError("model must contain at least one Linear or Conv layer, got none")
    return tuple(dict.fromkeys([names[0], names[-1]]))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class SparseTrainer:
    """Shared machinery: which layers are sparse, the budget, the masks, applying them.

    Use :class:`StaticSparseTrainer` or :class:`DynamicSparseTrainer`. Give exactly one of
    ``sparsity`` (fraction of zero weights in the sparse layers, in [0, 1)),
    ``nonzero_budget`` (number of active weights in the sparse layers) or ``initial_masks``
    (``{layer: bool mask}`` for every sparse layer; the budget is their total count).
    Without ``initial_masks`` every sparse layer starts at the same density with random
    positions drawn from ``seed`` (the budget split by :func:`proportional_allocation` over
    layer sizes). The model's weights are multiplied by the masks at construction.
    ``scale_initial_weights=True`` also multiplies each sparse layer's remaining weights by
    ``1/sqrt(layer density)`` (an initialisation choice of ours, not part of the DSR paper:
    at 80% sparsity a plain dense initialisation leaves every layer's output 2.2x too small).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float | None = None,
        nonzero_budget: int | None = None,
        initial_masks: Mapping[str, torch.Tensor] | None = None,
        seed: int = 0,
        dense_layers: Iterable[str] = (),
        optimizer: torch.optim.Optimizer | None = None,
        scale_initial_weights: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        all_layers = prunable_layers(model)
        if not all_layers:
            raise ValueError("model must contain at least one Linear or Conv layer, got none")
        if isinstance(dense_layers, str):
            raise ValueError(f"dense_layers must be a collection of layer names, got the string {dense_layers!r}")
        dense = set(prunable_layers(model, dense_layers))  # validates the names
        self.model = model
        self.dense_layers: tuple[str, ...] = tuple(n for n in all_layers if n in dense)
        self._layers = {n: m for n, m in all_layers.items() if n not in dense}
        if not self._layers:
            raise ValueError("at least one layer must be sparse, got every layer in dense_layers")
        self._optimizer = optimizer
        self._gen = torch.Generator().manual_seed(_check_int("seed", seed, 0))
        self._steps = 0
        self.history: list[ReallocationCycle] = []

        given = [x is not None for x in (sparsity, nonzero_budget, initial_masks)]
        if sum(given) != 1:
            raise ValueError(
                "exactly one of sparsity, nonzero_budget or initial_masks must be given, "
                f"got sparsity={sparsity!r}, nonzero_budget={nonzero_budget!r}, "
                f"initial_masks={'given' if initial_masks is not None else None}"
            )
        total = sum(m.weight.numel() for m in self._layers.values())
        if initial_masks is not None:
            masks = self._check_initial_masks(initial_masks)
            budget = sum(int(m.sum()) for m in masks.values())
        else:
            if sparsity is not None:
                if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
                    raise ValueError(f"sparsity must be a float in [0, 1), got {sparsity!r}")
                budget = round((1.0 - float(sparsity)) * total)
            else:
                budget = _check_int("nonzero_budget", nonzero_budget, 1)
            if not 1 <= budget <= total:
                raise ValueError(
                    f"the nonzero budget must be between 1 and the {total} weights of the sparse "
                    f"layers, got {budget}"
                )
            masks = self._random_masks(budget)
        self.nonzero_budget: int = budget
        self._keeper = MaskedWeights(model, masks)
        if scale_initial_weights:
            self._scale_active_weights()
        self._reset_optimizer_state({n: ~m for n, m in self._keeper.masks.items()})

    # ----------------------------------------------------------------- construction helpers
    def _check_initial_masks(self, initial: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if set(initial) != set(self._layers):
            raise ValueError(
                f"initial_masks must have one mask per sparse layer {sorted(self._layers)}, "
                f"got {sorted(initial)}"
            )
        for n, m in initial.items():
            w = self._layers[n].weight
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != w.shape:
                raise ValueError(
                    f"initial mask {n!r} must be a torch.bool tensor of shape {tuple(w.shape)}, "
                    f"got {getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}"
                )
        return {n: initial[n].clone() for n in self._layers}

    def _random_masks(self, budget: int) -> dict[str, torch.Tensor]:
        sizes = [m.weight.numel() for m in self._layers.values()]
        counts = proportional_allocation(budget, sizes, sizes)
        masks = {}
        for (name, layer), k in zip(self._layers.items(), counts):
            flat = torch.zeros(layer.weight.numel(), dtype=torch.bool)
            flat[torch.randperm(flat.numel(), generator=self._gen)[:k]] = True
            masks[name] = flat.reshape(layer.weight.shape).to(layer.weight.device)
        return masks

    def _scale_active_weights(self) -> None:
        """Multiply each sparse layer's weights by 1/sqrt(density): a unit's summed input then
        has the variance the dense initialisation intended (a sparse-aware initialisation)."""
        with torch.no_grad():
            for name, layer in self._layers.items():
                k = int(self._keeper.masks[name].sum())
                if k:
                    layer.weight.mul_((layer.weight.numel() / k) ** 0.5)

    def _reset_optimizer_state(self, changed: Mapping[str, torch.Tensor]) -> None:
        """Zero the optimizer's per-weight state (same shape as the weight) where ``changed``."""
        if self._optimizer is None:
            return
        for name, where in changed.items():
            state = self._optimizer.state.get(self._layers[name].weight, {})
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == where.shape:
                    value[where] = 0

    # ----------------------------------------------------------------------------- the API
    def step(self) -> None:
        """Call after every ``optimizer.step()``: re-zeroes masked weights."""
        self._keeper.reapply()
        self._steps += 1

    @property
    def steps(self) -> int:
        """Optimizer steps seen by :meth:`step`."""
        return self._steps

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Copies of the current masks of the sparse layers, ``{layer name: bool tensor}``."""
        return {n: m.clone() for n, m in self._keeper.masks.items()}

    def layer_sizes(self) -> dict[str, int]:
        """Number of weights of every Linear/Conv layer, dense ones included."""
        return {n: m.weight.numel() for n, m in prunable_layers(self.model).items()}

    def nonzeros_per_layer(self) -> dict[str, int]:
        """Active (mask ``True``) weights per layer; a dense layer counts all its weights."""
        sizes = self.layer_sizes()
        return {n: int(self._keeper.masks[n].sum()) if n in self._layers else sizes[n] for n in sizes}

    def density_per_layer(self) -> dict[str, float]:
        """Fraction of active weights per layer (1.0 for dense layers)."""
        sizes = self.layer_sizes()
        return {n: k / sizes[n] for n, k in self.nonzeros_per_layer().items()}

    def remove(self) -> None:
        """Detach the gradient hooks (the weights keep their zeros)."""
        self._keeper.remove()


class StaticSparseTrainer(SparseTrainer):
    """Static sparse baseline: the initial (random, uniform-density) mask never changes.

    Same constructor and API as :class:`SparseTrainer`; ``history`` stays empty.
    """


class DynamicSparseTrainer(SparseTrainer):
    """Dynamic sparse reparameterization (module docstring has the algorithm).

    ``prune_fraction_per_cycle``: target pruned per cycle as a fraction of the budget
    (``N_p = max(1, round(fraction * nonzero_budget))``); ``reallocate_every``: ``P`` in optimizer
    steps; ``initial_threshold``: starting ``H`` in the weights' units; ``tolerance``: the
    paper's 0.1 band around ``N_p``; ``stop_after``: no reallocation after this many steps
    (``None``: never stop), so the last regrown weights get time to train. Other arguments as in :class:`SparseTrainer`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float | None = None,
        nonzero_budget: int | None = None,
        initial_masks: Mapping[str, torch.Tensor] | None = None,
        prune_fraction_per_cycle: float = 0.1,
        reallocate_every: int = 100,
        initial_threshold: float = 1e-3,
        tolerance: float = 0.1,
        stop_after: int | None = None,
        seed: int = 0,
        dense_layers: Iterable[str] = (),
        optimizer: torch.optim.Optimizer | None = None,
        scale_initial_weights: bool = False,
    ):
        if stop_after is not None:
            _check_int("stop_after", stop_after, 0)
        self.stop_after = stop_after
        if not isinstance(prune_fraction_per_cycle, (int, float)) or not 0 < prune_fraction_per_cycle <= 1:
            raise ValueError(f"prune_fraction_per_cycle must be in (0, 1], got {prune_fraction_per_cycle!r}")
        if not isinstance(initial_threshold, (int, float)) or not initial_threshold > 0:
            raise ValueError(f"initial_threshold must be > 0, got {initial_threshold!r}")
        if not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        self.reallocate_every = _check_int("reallocate_every", reallocate_every, 1)
        super().__init__(
            model,
            sparsity=sparsity,
            nonzero_budget=nonzero_budget,
            initial_masks=initial_masks,
            seed=seed,
            dense_layers=dense_layers,
            optimizer=optimizer,
            scale_initial_weights=scale_initial_weights,
        )
        self.prune_fraction_per_cycle = float(prune_fraction_per_cycle)
        self.tolerance = float(tolerance)
        self.threshold = float(initial_threshold)
        self.target_pruned = max(1, round(self.prune_fraction_per_cycle * self.nonzero_budget))

    def step(self) -> None:
        """Call after every ``optimizer.step()``; every ``reallocate_every`` steps reallocates."""
        super().step()
        stopped = self.stop_after is not None and self._steps > self.stop_after
        if self._steps % self.reallocate_every == 0 and not stopped:
            self.reallocate()

    def reallocate(self) -> ReallocationCycle:
        """One prune / adapt-threshold / regrow cycle now; appended to ``history``."""
        masks = self._keeper.masks
        used = self.threshold
        pruned: dict[str, int] = {}
        changed: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, layer in self._layers.items():
                drop = masks[name] & (layer.weight.abs() < used)
                masks[name][drop] = False
                layer.weight[drop] = 0
                pruned[name] = int(drop.sum())
                changed[name] = drop
        k = sum(pruned.values())

        if k < (1 - self.tolerance) * self.target_pruned:
            self.threshold = used * 2
        elif k > (1 + self.tolerance) * self.target_pruned:
            self.threshold = used / 2

        names = list(self._layers)
        surviving = [int(masks[n].sum()) for n in names]
        free = [self._layers[n].weight.numel() - r for n, r in zip(names, surviving)]
        grow = proportional_allocation(k, surviving, free)
        with torch.no_grad():
            for name, g in zip(names, grow):
                flat_mask = masks[name].view(-1)
                zeros = torch.nonzero(~flat_mask).view(-1)
                pick = zeros[torch.randperm(zeros.numel(), generator=self._gen)[:g].to(zeros.device)]
                flat_mask[pick] = True
                self._layers[name].weight.view(-1)[pick] = 0
                changed[name].view(-1)[pick] = True
        self._reset_optimizer_state(changed)

        cycle = ReallocationCycle(
            step=self._steps,
            threshold=used,
            next_threshold=self.threshold,
            target_pruned=self.target_pruned,
            pruned=k,
            regrown=sum(grow),
            pruned_per_layer=pruned,
            regrown_per_layer=dict(zip(names, grow)),
            nonzeros_per_layer={n: int(masks[n].sum()) for n in names},
        )
        self.history.append(cycle)
        return cycle


# ------------------------------------------------------------------------------ convenience
@dataclass(frozen=True)
class SparseTrainingHistory:
    """What :func:`train_sparse` did. Loss is the mean training loss per epoch."""

    method: str
    epochs: int
    steps: int
    loss_per_epoch: tuple[float, ...]
    nonzero_budget: int | None  # None for method="dense"
    nonzeros_per_layer: Mapping[str, int]
    density_per_layer: Mapping[str, float]
    cycles: tuple[ReallocationCycle, ...]  # empty unless method="dsr"


_METHODS = ("dsr", "static", "dense")
_SCHEDULES = ("constant", "cosine")


def _batches(data: Any, batch_size: int, gen: torch.Generator):
    """Per epoch: an iterable of (x, y) batches from ``(X, y)`` arrays or a re-iterable loader."""
    if isinstance(data, tuple) and len(data) == 2:
        x = torch.as_tensor(np.asarray(data[0]) if not isinstance(data[0], torch.Tensor) else data[0])
        y = torch.as_tensor(np.asarray(data[1]) if not isinstance(data[1], torch.Tensor) else data[1])
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(
                f"data must be (X, y) with the same number (> 0) of samples, got {x.shape[0]} and {y.shape[0]}"
            )
        x = x.float()
        y = y.long()

        def epoch():
            order = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], batch_size):
                idx = order[i : i + batch_size]
                yield x[idx], y[idx]

        return epoch, -(-x.shape[0] // batch_size)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            n = None
        return (lambda: iter(data)), n
    raise ValueError(f"data must be an (X, y) pair of arrays or an iterable of (x, y) batches, got {type(data).__name__}")


def train_sparse(
    model: nn.Module,
    data: Any,
    *,
    epochs: int,
    lr: float,
    sparsity: float | None = None,
    nonzero_budget: int | None = None,
    method: str = "dsr",
    seed: int = 0,
    batch_size: int = 64,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_schedule: str = "cosine",
    reallocate_every: int | None = None,
    prune_fraction_per_cycle: float = 0.1,
    initial_threshold: float = 1e-3,
    reallocate_until: float = 0.9,
    dense_layers: Iterable[str] = (),
    scale_initial_weights: bool = False,
    loss_fn: Any = None,
) -> tuple[nn.Module, SparseTrainingHistory]:
    """Train ``model`` in place with SGD (+momentum) at a fixed number of nonzero weights.

    ``data``: ``(X, y)`` arrays/tensors (shuffled each epoch from ``seed``, ``batch_size``
    samples a batch) or a re-iterable of ``(x, y)`` batches such as a ``DataLoader``.
    ``method``: ``"dsr"`` (:class:`DynamicSparseTrainer`), ``"static"``
    (:class:`StaticSparseTrainer`) or ``"dense"`` (no mask; give neither sparsity nor budget).
    ``lr_schedule``: ``"constant"`` or ``"cosine"`` (annealed to 0 over all steps).
    ``loss_fn(outputs, y)`` defaults to cross-entropy. The DSR knobs are passed through;
    ``reallocate_until`` (fraction of all steps, in (0, 1]) stops reallocation for the rest of
    training so the last regrown weights can train (ignored for unsized iterables: no stop).
    ``scale_initial_weights``: see :class:`SparseTrainer` (ignored for ``"dense"``).
    ``reallocate_every=None`` picks ``max(1, total_steps // 20)`` (about 20 cycles whatever the
    data size; 100 for unsized iterables).
    Returns ``(model, history)``; the gradient hooks are removed at the end and the masked
    weights stay exactly zero.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if lr_schedule not in _SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {lr_schedule!r}")
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if method == "dense" and (sparsity is not None or nonzero_budget is not None):
        raise ValueError(
            f"method='dense' takes no sparsity or nonzero_budget, got sparsity={sparsity!r}, "
            f"nonzero_budget={nonzero_budget!r}"
        )
    if not isinstance(reallocate_until, (int, float)) or not 0 < reallocate_until <= 1:
        raise ValueError(f"reallocate_until must be in (0, 1], got {reallocate_until!r}")
    gen = torch.Generator().manual_seed(_check_int("seed", seed, 0))
    epoch_batches, n_batches = _batches(data, batch_size, gen)
    loss_fn = loss_fn or nn.functional.cross_entropy
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    trainer: SparseTrainer | None = None
    common = dict(sparsity=sparsity, nonzero_budget=nonzero_budget, seed=seed,
                  dense_layers=dense_layers, optimizer=opt,
                  scale_initial_weights=scale_initial_weights)
    if reallocate_every is None:
        reallocate_every = 100 if n_batches is None else max(1, epochs * n_batches // 20)
    if method == "dsr":
        trainer = DynamicSparseTrainer(
            model, reallocate_every=reallocate_every, prune_fraction_per_cycle=prune_fraction_per_cycle,
            initial_threshold=initial_threshold,
            stop_after=None if n_batches is None else int(reallocate_until * epochs * n_batches),
            **common,
        )
    elif method == "static":
        trainer = StaticSparseTrainer(model, **common)
    sched = None
    if lr_schedule == "cosine":
        if n_batches is None:
            raise ValueError("lr_schedule='cosine' needs data with a len(); got an unsized iterable")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * n_batches)

    model.train()
    losses = []
    steps = 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in epoch_batches():
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            if trainer is not None:
                trainer.step()
            if sched is not None:
                sched.step()
            steps += 1
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        losses.append(total / max(count, 1))
    if trainer is not None:
        trainer.remove()
        nonzeros, density = trainer.nonzeros_per_layer(), trainer.density_per_layer()
        budget, cycles = trainer.nonzero_budget, tuple(trainer.history)
    else:
        layers = prunable_layers(model)
        nonzeros = {n: m.weight.numel() for n, m in layers.items()}
        density = {n: 1.0 for n in layers}
        budget, cycles = None, ()
    return model, SparseTrainingHistory(
        method=method, epochs=epochs, steps=steps, loss_per_epoch=tuple(losses),
        nonzero_budget=budget, nonzeros_per_layer=nonzeros, density_per_layer=density, cycles=cycles,
    )
