"""The cost of a convolution with adaptive deep reuse (Ning & Shen, ICDE 2019).

Input sub-vectors are hashed (H random projections per sub-vector of every input pixel:
N x H x W x C x H_hashes multiply-adds, each pixel's channels hashed once for all the kernel
taps that read it) and one product is computed per cluster: the conv's effective MACs times
the measured cluster ratio r_c. Data movement is the dataflow model's cost of the plain conv:
the weights, inputs and outputs still move, and counting the MAC-level operand reads of every
product (not only of the centroids) makes this an upper bound on what reuse saves.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from energy.ir import Layer, OpKind
from energy.report import LayerEnergy


def reuse_layer_energy(layer: Layer, spec, conv_energy: Callable[[Layer], LayerEnergy]) -> LayerEnergy:
    """``conv_energy`` costs an ordinary Conv layer (the estimator's dataflow model)."""
    conv = conv_energy(layer.replace(op=OpKind.CONV))
    d = layer.dims
    assert d is not None
    hash_macs = d.input_elements * layer.reuse_hashes
    products = conv.effective_macs * layer.cluster_ratio
    mac_pj = conv.compute_pj / conv.effective_macs if conv.effective_macs else 0.0
    compute_pj = (hash_macs + products) * mac_pj
    return dataclasses.replace(
        conv, op=layer.onnx_op, kind=layer.op.value, effective_macs=hash_macs + products, compute_pj=compute_pj,
        energy_pj=conv.energy_pj - conv.compute_pj + compute_pj,
        note=(f"deep reuse: cluster ratio {layer.cluster_ratio:.3f}, {layer.reuse_hashes} hashes per sub-vector: "
              f"{hash_macs} hash MACs + {products:.0f} centroid MACs; data movement as the plain conv"),
    )
