"""Fine-tuning and evaluation helpers (small, CPU, deterministic given a seed)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pruning.blocks import MaskedWeights


def as_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a pair of arrays/tensors or an iterable of (x, y) batches (a DataLoader)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = data
    else:
        xs, ys = zip(*[(bx, by) for bx, by in data])
        x = torch.cat([torch.as_tensor(b) for b in xs])
        y = torch.cat([torch.as_tensor(b) for b in ys])
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
    return x, y


def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1] (module in eval mode for the call)."""
    was_training = module.training
    module.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = module(x[start:start + batch_size])
            correct += int((out.argmax(dim=1) == y[start:start + batch_size]).sum())
    module.train(was_training)
    return correct / max(1, len(x))


def fine_tune(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: float,
    seed: int,
    masks: dict[str, torch.Tensor] | None = None,
    lr: float = 1e-3,
    batch_size: int = 64,
    on_step: Callable[[], None] | None = None,
) -> int:
    """Adam on cross-entropy for ``epochs`` (a fraction runs that share of one epoch's
    batches); weights under ``masks`` (qualified names -> bool) stay zero. Returns the number
    of samples trained on."""
    if epochs <= 0 or len(x) == 0:
        return 0
    generator = torch.Generator().manual_seed(seed)
    keeper = MaskedWeights(module, masks) if masks else None
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    total_batches = max(1, int(round(epochs * -(-len(x) // batch_size))))
    module.train()
    done, seen = 0, 0
    try:
        while done < total_batches:
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                optimizer.zero_grad()
                loss = F.cross_entropy(module(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                if keeper is not None:
                    keeper.reapply()
                seen += len(idx)
                done += 1
                if on_step is not None:
                    on_step()
                if done >= total_batches:
                    break
    finally:
        if keeper is not None:
            keeper.remove()
        module.eval()
    return seen
