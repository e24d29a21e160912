"""Hashed (SLIDE) layers as a pruning output: convert chosen Gemm/MatMul layers to
hash-selected sparse layers, fine-tune them with sparse updates, export them as ONNX.

    result = to_hashed("mlp.onnx", ["/fc1/Gemm"], calib_x, target_active_fraction=0.05,
                       train=(x, y), eval=(x_val, y_val))
    result.layers["/fc1/Gemm"].K, .L, .active_fraction, .recall
    export_hashed(result, "mlp_hashed.onnx")       # runs in kernels.runner.GraphRunner
    verify_hashed("mlp_hashed.onnx", result.module, x_val)   # max abs diff vs torch

Each converted layer becomes a :class:`HashedLinearModule` in torch and one ONNX node

    joulecut.HashedLinear(X [..., in], W [out, in], B [out],
                          <name>.bucket_offsets int32 [L, slots + 1], <name>.bucket_ids int32 [L, out])
        attributes K, L, family ("simhash" | "dwta"), seed, active_fraction (mean fraction of
        outputs active per calibration sample), mode ("batched" | "per-sample"), and the hash
        family's own parameter: density (simhash, share of inputs per projection) or bin_size (dwta)
    -> Y [..., out]: W[j] . x + B[j] for j in the sample's active set, exactly 0 elsewhere
       (the bias too is only added on active neurons: SLIDE computes nothing else).

The hash functions (projections / sampled coordinates) are drawn by ``kernels.slide`` from
(seed, table), so they are not stored; the loader rebuilds them and the bucket tables from
W + seed, and the stored tables must equal the rebuilt ones (a check, and the bucket sizes for
a cost model). Export therefore always rehashes every row first: tables == hash(W).

The torch module selects its active sets with the same ``kernels.slide.HashedLinear`` hash
functions and tables, so it picks exactly the kernel runner's sets whenever it sees the same
layer input bits. (An active set is a discontinuous function of the input: a layer that sits
behind other layers may see inputs that differ from the runner's in the last bit, and a sign
flip of one projection then changes a set.)
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from energy.io import write_atomic
from energy.errors import DataError, ModelError, OptionError
from kernels.slide import FAMILIES, HashedLinear, choose_k_l
from pruning.export import onnx_from_module
from pruning.onnx_torch import OnnxModule, onnx_to_torch
from pruning.train import accuracy, as_tensors

DOMAIN = "joulecut"
OP_TYPE = "HashedLinear"
MODES = {"batched": "batched", "per-sample": "per_sample"}  # ONNX spelling -> kernels.slide
HASHABLE_OPS = ("Gemm", "MatMul")


class HashedLinearModule(nn.Module):
    """A linear layer y = W x + b computed only on the neurons a ``kernels.slide.HashedLinear``
    selects for each sample; every other output is 0. ``weight`` [out, in] and ``bias`` [out]
    are trainable; the gradient reaches only the rows (and biases) of active neurons.

    ``slide`` is the ``kernels.slide.HashedLinear`` whose hash functions and tables pick the
    active sets. The tables follow the weights only on ``rehash()``: ``rehash(rows)`` updates
    the codes of those rows (SLIDE's periodic rehash), ``rehash()`` rebuilds everything."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, *, family: str, K: int, L: int,
                 seed: int, density: float = 1 / 3, bin_size: int = 8):
        super().__init__()
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        bias = np.zeros(weight.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32)
        self.weight = nn.Parameter(torch.from_numpy(weight.copy()))
        self.bias = nn.Parameter(torch.from_numpy(bias.copy()))
        self.family, self.K, self.L, self.seed = family, int(K), int(L), int(seed)
        # stored as float32 in ONNX: use that value here too, so both sides draw the same hashes
        self.hash_params = {"density": float(np.float32(density))} if family == "simhash" else {"bin_size": int(bin_size)}
        self.touched = torch.zeros(weight.shape[0], dtype=torch.bool)  # rows gathered since reset
        self.rehash()

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def rehash(self, rows: np.ndarray | None = None) -> None:
        """Rebuild the hash tables from the current weights (all rows, or only ``rows``)."""
        w = self.weight.detach().numpy()
        b = self.bias.detach().numpy()
        if rows is None:
            self.slide = HashedLinear(w.copy(), b.copy(), family=self.family, K=self.K, L=self.L,
                                       seed=self.seed, **self.hash_params)
            return
        self.slide.weight[rows] = w[rows]
        self.slide.bias[:] = b
        self.slide.rehash(rows=np.asarray(rows, dtype=np.int64))

    def recalibrate(self, x2: np.ndarray, target: float, L_max: int) -> int:
        """Set L (1..L_max, K kept) to the fewest tables whose mean active fraction on inputs
        x2 [B, in] reaches ``target`` (L_max if none does); rebuilds the tables. Returns L.
        The first L tables of a layer are those of any layer with more tables (kernels.slide)."""
        w, b = self.weight.detach().numpy().copy(), self.bias.detach().numpy().copy()
        probe = HashedLinear(w, b, family=self.family, K=self.K, L=L_max, seed=self.seed, **self.hash_params)
        x2 = np.ascontiguousarray(x2, dtype=np.float32)
        frac = probe.tables.prefix_union_sizes(probe.hash_codes(x2)).mean(axis=0) / self.out_features
        reach = np.flatnonzero(frac >= target)
        self.L = int(reach[0]) + 1 if reach.size else L_max
        self.rehash()
        return self.L

    def active(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CSR active sets (indptr int64 [B+1], neuron ids int32) of inputs x2 [B, in]."""
        layer = self.slide
        return layer.tables.active_sets(layer.hash_codes(np.ascontiguousarray(x2, dtype=np.float32)))

    def active_fraction(self, x2: np.ndarray) -> float:
        indptr, _ = self.active(x2)
        return float(indptr[-1]) / max(1, (len(indptr) - 1) * self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input must have {self.in_features} features, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        indptr, ids = self.active(x2.detach().numpy())
        rows = torch.from_numpy(np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)))
        ids = torch.from_numpy(ids.astype(np.int64))
        values = (self.weight[ids] * x2[rows]).sum(dim=1) + self.bias[ids]
        y = x2.new_zeros(x2.shape[0], self.out_features).index_put((rows, ids), values)
        if self.training:
            self.touched[ids] = True
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, family={self.family}, "
                f"K={self.K}, L={self.L}, seed={self.seed}")


@dataclass(frozen=True)
class HashedLayer:
    """What conversion did to one layer (fractions and recall measured on the calibration data)."""

    name: str
    op: str
    n_in: int
    n_out: int
    family: str
    K: int
    L: int  # tables after fine-tuning (L re-fitted to the target after each epoch)
    seed: int
    L_chosen: int  # tables choose_k_l picked on the source weights
    target_active_fraction: float
    active_fraction_chosen: float  # from choose_k_l, before fine-tuning (with L_chosen tables)
    active_fraction: float  # after fine-tuning and re-fitting L (what the ONNX attribute says)
    recall: float  # recall@k_recall of the true top-k outputs, after fine-tuning
    k_recall: int
    candidates: tuple[tuple[int, int, float, float], ...] = ()  # (K, L, fraction, recall) tried

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "candidates"}
        d["candidates"] = [list(c) for c in self.candidates]
        return d


@dataclass(frozen=True)
class HashedResult:
    module: OnnxModule  # the model with HashedLinearModule layers
    onnx: onnx.ModelProto  # with joulecut.HashedLinear nodes
    layers: dict[str, HashedLayer]
    accuracy_before: float | None  # source model on eval data
    accuracy_hashed: float | None  # hashed, before fine-tuning
    accuracy_after: float | None  # hashed, after fine-tuning
    mode: str
    source: str | None = None  # the file the model came from (never overwritten)
    history: list[float] = field(default_factory=list)  # mean training loss per epoch

    def to_dict(self) -> dict:
        return {"layers": {n: l.to_dict() for n, l in self.layers.items()}, "mode": self.mode,
                "accuracy_before": self.accuracy_before, "accuracy_hashed": self.accuracy_hashed,
                "accuracy_after": self.accuracy_after, "history": list(self.history)}


# --- checks -----------------------------------------------------------------------------------
def _check_options(target: float, family: str, mode: str, layers) -> None:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise OptionError(f"target active fraction must be in (0, 1], got {target!r}")
    if family not in FAMILIES:
        raise OptionError(f"hash family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(layers, str) or not layers:
        raise OptionError(f"layers must be a non-empty list of layer names, got {layers!r}")
    dup = sorted({n for n in layers if list(layers).count(n) > 1})
    if dup:
        raise OptionError(f"layer(s) listed twice: {', '.join(dup)}")


def _check_layer(module: OnnxModule, name: str) -> None:
    steps = {s.name: s for s in module.steps}
    if name not in steps:
        close = difflib.get_close_matches(name, list(steps), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        gemms = [s.name for s in module.steps if s.op in HASHABLE_OPS]
        raise OptionError(f"unknown layer {name!r}{hint} (Gemm/MatMul layers: {', '.join(gemms) or 'none'})")
    step = steps[name]
    if step.op not in HASHABLE_OPS or name not in module.node_modules or \
            not isinstance(module.layer(name), nn.Linear):
        what = step.op if step.op not in HASHABLE_OPS else f"{step.op} without a constant 2-D weight"
        raise ModelError(f"a hashed layer must be a Gemm or MatMul with a constant weight, got {what}",
                         file=module.file, node=name)


def _as_inputs(x, what: str) -> torch.Tensor:
    try:
        a = np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a float array: {exc}") from exc
    if a.ndim < 2 or len(a) == 0:
        raise DataError(f"{what} must be a non-empty batch N x ..., got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{what} contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(a))


def _layer_input(module: OnnxModule, name: str, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    """The input of layer ``name`` on model inputs x, as [rows, in] float32."""
    step = next(s for s in module.steps if s.name == name)
    parts = []
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch):
                try:
                    t = module.tensors(x[start:start + batch])[step.inputs[0]]
                except (RuntimeError, ValueError) as exc:
                    if isinstance(exc, (ModelError, DataError)):
                        raise
                    raise DataError(f"inputs do not fit the model: {exc}") from exc
                parts.append(t.reshape(-1, t.shape[-1]).numpy())
    finally:
        module.train(was)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


# --- fine-tuning ------------------------------------------------------------------------------
def finetune_sparse(module: nn.Module, hashed: list[HashedLinearModule], x: torch.Tensor, y: torch.Tensor, *,
                    epochs: float, lr: float = 1e-3, hashed_lr: float | None = None,
                    batch_size: int = 64, rehash_every: int = 10,
                    seed: int = 0, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Adam on cross-entropy. In the hashed layers only the rows (and biases) of neurons active
    in a batch move in that step (the other rows are put back after the optimizer step, so
    Adam's momentum cannot move them); the changed rows are rehashed every ``rehash_every``
    steps and every row at the end. ``hashed_lr`` (default ``lr``) is the hashed layers' rate;
    0 keeps them (and their active sets) fixed while the other layers adapt. Returns the mean loss of each (partial) epoch."""
    if epochs <= 0 or len(x) == 0:
        return []
    if rehash_every < 1:
        raise OptionError(f"rehash_every must be >= 1, got {rehash_every}")
    generator = torch.Generator().manual_seed(seed)
    own = {id(p) for h in hashed for p in (h.weight, h.bias)}
    rest = [p for p in module.parameters() if id(p) not in own]
    groups = [{"params": rest}] + ([{"params": [p for h in hashed for p in (h.weight, h.bias)],
                                      "lr": lr if hashed_lr is None else hashed_lr}] if hashed else [])
    optimizer = torch.optim.Adam(groups, lr=lr)
    steps_per_epoch = -(-len(x) // batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    changed = [np.zeros(h.out_features, dtype=bool) for h in hashed]
    history: list[float] = []
    module.train()
    done = 0
    try:
        while done < total:
            order = torch.randperm(len(x), generator=generator)
            losses = []
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                for h in hashed:
                    h.touched.zero_()
                optimizer.zero_grad()
                loss = F.cross_entropy(module(x[idx]), y[idx])
                loss.backward()
                kept = [(h.weight.detach()[~h.touched].clone(), h.bias.detach()[~h.touched].clone()) for h in hashed]
                optimizer.step()
                with torch.no_grad():
                    for h, (w_old, b_old), ch in zip(hashed, kept, changed):
                        h.weight[~h.touched] = w_old
                        h.bias[~h.touched] = b_old
                        ch |= h.touched.numpy()
                done += 1
                losses.append(float(loss.detach()))
                if done % rehash_every == 0:
                    for h, ch in zip(hashed, changed):
                        h.rehash(np.flatnonzero(ch))
                        ch[:] = False
                if done >= total:
                    break
            history.append(float(np.mean(losses)))
            if on_epoch is not None:
                on_epoch(len(history), history[-1])
    finally:
        module.eval()
        for h in hashed:
            h.rehash()
    return history


# --- conversion -------------------------------------------------------------------------------
def to_hashed(
    model: OnnxModule | onnx.ModelProto | str | Path,
    layers: list[str],
    calib_x,
    *,
    target_active_fraction: float = 0.05,
    family: str = "simhash",
    seed: int = 0,
    mode: str = "batched",
    train=None,
    eval=None,
    finetune_epochs: float = 3.0,
    lr: float = 3e-3,
    hashed_lr: float = 1e-4,
    batch_size: int = 64,
    rehash_every: int = 10,
    L_max: int = 64,
    K_range: tuple[int, int] | None = None,
    k_recall: int = 10,
    progress: Callable[[str], None] | None = None,
) -> HashedResult:
    """Convert ``layers`` (ONNX node names of Gemm/MatMul nodes with a constant weight) of
    ``model`` to SLIDE hashed layers.

    Per layer, in graph order: K and L come from ``kernels.slide.choose_k_l`` on the layer's
    inputs over ``calib_x`` (model inputs, N x ...), aiming at ``target_active_fraction`` of the
    outputs active per sample; layers after a converted one see the converted model's
    activations. Then, with ``train`` = (x, y) (arrays or batches), ``finetune_epochs`` of
    sparse-update fine-tuning (``finetune_sparse``), one epoch at a time, each followed by
    re-fitting L (K kept) to the target on the calibration data. ``eval`` = (x, y) gives the
    accuracies. ``lr`` is Adam's rate for the other layers, ``hashed_lr`` for the hashed rows:
    moving a row moves its codes, and faster hashed rows crowd into common buckets (on the
    digits MLP, 1e-3 doubled the active fraction in three epochs and cost accuracy once L was
    re-fitted; 0 and 1e-4 did best). ``L_max``, ``K_range`` and ``k_recall`` go to ``choose_k_l``.
    ``mode`` is the execution mode written to ONNX ("batched" | "per-sample").

    Raises OptionError (bad target, family, mode, unknown layer name), ModelError (a layer that
    is not a Gemm/MatMul with a constant weight, an unreadable model), DataError (inputs that
    do not fit). The input model is not modified (an OnnxModule is copied).
    """
    _check_options(target_active_fraction, family, mode, layers)
    if isinstance(model, OnnxModule):
        module, source = copy.deepcopy(model), model.file
    else:
        module = onnx_to_torch(model)
        source = module.file
    module.eval()
    for name in layers:
        _check_layer(module, name)
    calib = _as_inputs(calib_x, "calibration inputs")
    train_xy = as_tensors(train) if train is not None else None
    eval_xy = as_tensors(eval) if eval is not None else None
    say = progress or (lambda message: None)
    try:
        with torch.no_grad():
            out = module(calib[:1])
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, (ModelError, DataError)):
            raise
        raise DataError(f"calibration inputs do not fit the model: {exc}") from exc
    for what, xy in (("training", train_xy), ("evaluation", eval_xy)):
        if xy is not None and len(xy[1]) and (not isinstance(out, torch.Tensor) or out.dim() != 2
                                              or len(xy[0]) != len(xy[1]) or xy[1].min() < 0
                                              or xy[1].max() >= out.shape[-1]):
            raise DataError(f"{what} data must be N inputs with N labels in [0, {out.shape[-1] - 1}] "
                            "of a classifier with one N x classes output")

    def acc() -> float | None:
        return accuracy(module, *eval_xy) if eval_xy is not None else None

    accuracy_before = acc()
    order = [s.name for s in module.steps if s.name in set(layers)]
    target = min(float(target_active_fraction), float(np.nextafter(1.0, 0.0)))  # choose_k_l wants < 1
    chosen: dict[str, tuple[int, int, dict]] = {}
    hashed: dict[str, HashedLinearModule] = {}
    for name in order:
        linear = module.layer(name)
        xin = _layer_input(module, name, calib)
        w = linear.weight.detach().numpy().astype(np.float32)
        b = linear.bias.detach().numpy().astype(np.float32) if linear.bias is not None else None
        try:
            K, L, info = choose_k_l(w, xin, target, family=family, seed=seed, bias=b, L_max=L_max, k_recall=k_recall,
                                    K_range=K_range)
        except ValueError as exc:
            raise ModelError(f"cannot hash this layer: {exc}", file=source, node=name) from exc
        say(f"{name}: K={K} L={L} active {info['active_fraction']:.3f} recall@{k_recall} {info['recall']:.3f}")
        chosen[name] = (K, L, info)
        hashed[name] = HashedLinearModule(w, b, family=family, K=K, L=L, seed=seed)
        module.set_layer(name, hashed[name])
    accuracy_hashed = acc()
    history: list[float] = []
    if train_xy is not None and finetune_epochs > 0:
        # one epoch at a time; after each, L is re-fitted to the target (training moves the
        # weight rows' codes, and with them the active fraction)
        rounds = int(np.ceil(finetune_epochs))
        for r in range(rounds):
            history += finetune_sparse(module, list(hashed.values()), *train_xy,
                                       epochs=min(1.0, finetune_epochs - r), lr=lr, hashed_lr=hashed_lr,
                                       batch_size=batch_size,
                                       rehash_every=rehash_every, seed=seed + r)
            for name in order:
                L = hashed[name].recalibrate(_layer_input(module, name, calib), target, L_max)
                say(f"fine-tune epoch {r + 1}: loss {history[-1]:.4f}; {name}: L={L}")
    accuracy_after = acc() if history else accuracy_hashed
    results: dict[str, HashedLayer] = {}
    for name in order:
        h, (K, L0, info) = hashed[name], chosen[name]
        xin = _layer_input(module, name, calib)
        results[name] = HashedLayer(
            name=name, op=next(s.op for s in module.steps if s.name == name), n_in=h.in_features,
            n_out=h.out_features, family=family, K=K, L=h.L, seed=seed, L_chosen=L0,
            target_active_fraction=float(target_active_fraction),
            active_fraction_chosen=float(info["active_fraction"]), active_fraction=h.active_fraction(xin),
            recall=float(h.slide.recall_at_k(xin, min(k_recall, h.out_features))), k_recall=min(k_recall, h.out_features),
            candidates=tuple(tuple(c) for c in info["candidates"]))
    proto = hashed_onnx(module, results, mode)
    return HashedResult(module, proto, results, accuracy_before, accuracy_hashed, accuracy_after, mode, source, history)


def prune_hashed(
    model: OnnxModule | onnx.ModelProto | str | Path,
    layers: list[str],
    data,
    *,
    target_active_fraction: float = 0.05,
    val=None,
    val_fraction: float = 0.2,
    calib_size: int = 256,
    seed: int = 0,
    **options,
) -> HashedResult:
    """``to_hashed`` from one labelled data set (what ``joulecut prune --granularity hashed``
    runs): ``data`` = (x, y) is split into training and validation parts (seeded
    ``val_fraction``, unless ``val`` is given), the first ``calib_size`` training inputs
    calibrate K and L, the training part fine-tunes and the validation part gives the
    accuracies. ``options`` go to ``to_hashed`` (family, mode, finetune_epochs, ...).
    Same errors as ``to_hashed``; DataError when x or y do not fit the model."""
    from pruning.data import check_data, split

    _check_options(target_active_fraction, options.get("family", "simhash"), options.get("mode", "batched"), layers)
    module = copy.deepcopy(model) if isinstance(model, OnnxModule) else onnx_to_torch(model)
    x, y = (t.numpy() for t in as_tensors(data))
    if val is None:
        (x, y), (vx, vy) = split(x, y, val_fraction, seed)
    else:
        vx, vy = (t.numpy() for t in as_tensors(val))
    inits = {t.name for t in module.source.graph.initializer}
    first = next(i for i in module.source.graph.input if i.name not in inits)
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim)
    where = module.file and f"data for {module.file}"
    check_data(x, y, shape, int(max(y.max(initial=0), vy.max(initial=0))) + 1, file=where)
    check_data(vx, vy, shape, int(max(y.max(initial=0), vy.max(initial=0))) + 1, file=where)
    with torch.no_grad():
        out = module.eval()(torch.from_numpy(x[:1]))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelError("hashed pruning needs a classifier with one N x classes output", file=module.file)
    for a, b in ((x, y), (vx, vy)):
        check_data(a, b, shape, out.shape[1], file=where)
    return to_hashed(module, layers, x[:calib_size], target_active_fraction=target_active_fraction,
                     train=(x, y), eval=(vx, vy), seed=seed, **options)


# --- ONNX -------------------------------------------------------------------------------------
def hashed_onnx(module: OnnxModule, layers: dict[str, HashedLayer], mode: str = "batched") -> onnx.ModelProto:
    """The ONNX model of ``module`` with each layer in ``layers`` as a joulecut.HashedLinear node
    (contract in the module docstring). Rehashes every row of those layers first."""
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name in layers:
        module.layer(name).rehash()
    model = onnx_from_module(module)
    graph = model.graph
    tensors: list[onnx.TensorProto] = []
    taken = {t.name for t in graph.initializer}

    def fresh(name: str) -> str:  # the exported model may already hold e.g. "fc2.weight"
        while name in taken:
            name += ".hashed"
        taken.add(name)
        return name

    for node, step in zip(graph.node, module.steps):
        if step.name not in layers:
            continue
        h, info = module.layer(step.name), layers[step.name]
        if not isinstance(h, HashedLinearModule):
            raise ModelError("layer is listed as hashed but its module is not a HashedLinearModule", node=step.name)
        n = step.name
        arrays = {fresh(f"{n}.weight"): h.weight.detach().numpy(), fresh(f"{n}.bias"): h.bias.detach().numpy(),
                  fresh(f"{n}.bucket_offsets"): h.slide.tables.offsets, fresh(f"{n}.bucket_ids"): h.slide.tables.ids}
        tensors += [numpy_helper.from_array(np.ascontiguousarray(a), k) for k, a in arrays.items()]
        new = helper.make_node(OP_TYPE, [node.input[0], *arrays], [node.output[0]], name=n, domain=DOMAIN,
                               K=h.K, L=h.L, family=h.family, seed=h.seed, mode=mode,
                               active_fraction=float(info.active_fraction), **h.hash_params)
        node.CopyFrom(new)
    graph.initializer.extend(tensors)
    used = {t for node in graph.node for t in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    dropped = {t.name for t in graph.initializer} - used
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model


def export_hashed(result: HashedResult, path: str | Path, *, source: str | Path | None = None) -> Path:
    """Write ``result.onnx`` to ``path`` atomically (temp file + rename) and return the path.
    ``source`` (default: the file the model was read from) is never overwritten. Raises
    ModelError if the model fails ``onnx.checker.check_model(full_check=True)``."""
    path = Path(path)
    source = source if source is not None else result.source
    if source is not None and path.exists() and path.resolve() == Path(source).resolve():
        raise ModelError("refusing to overwrite the input model; choose another output path", file=str(path))
    try:
        onnx.checker.check_model(result.onnx, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"hashed model is not valid ONNX: {exc}", file=str(path)) from exc
    return write_atomic(path, result.onnx.SerializeToString())


def verify_hashed(model: str | Path | onnx.ModelProto, module: nn.Module, x, atol: float = 1e-4) -> float:
    """Run the hashed ONNX ``model`` in kernels.runner.GraphRunner and ``module`` in torch on
    inputs ``x``; return the max abs output difference. Raises ModelError above ``atol``."""
    from kernels.runner import GraphRunner

    xt = _as_inputs(x, "inputs")
    runner = GraphRunner(model)
    if len(runner.inputs) != 1:
        raise ModelError(f"verify_hashed takes single-input models, this one has {len(runner.inputs)}")
    out = runner.run({runner.inputs[0]: xt.numpy()})
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            ref = module(xt)
    finally:
        module.train(was)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    diff = max(float(np.max(np.abs(r.numpy() - o))) if o.size else 0.0 for r, o in zip(refs, out))
    if not diff <= atol:
        where = str(model) if not isinstance(model, onnx.ModelProto) else None
        raise ModelError(f"kernel runner output differs from torch by {diff:.3g} (allowed {atol:g})", file=where)
    return diff
