"""Slow, obviously right attribution: plain autograd from the input, one question at a time.

Each function runs whole forward passes with the parameters as they are (requiring grad or not)
and takes one gradient per question, never sharing a graph: the oracles the concept graph's
fast paths (:mod:`carto_assets.core.attribution`) are tested against.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import torch
from torch import nn


def _outputs(model: nn.Module, layers: list[str], x: torch.Tensor, zero=None):
    """One forward pass from ``x`` (requiring grad): each layer's output (in the graph) and the
    logits. ``zero=(layer, units)`` zeroes those channels of that layer's output in place of
    the output handed on."""
    modules = dict(model.named_modules())
    kept: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:

        def hook(_m, _i, out, name=name):
            if zero is not None and zero[0] == name:
                out = out.clone()
                if out.ndim == 3:
                    out[:, :, list(zero[1])] = 0
                else:
                    out[:, list(zero[1])] = 0
            kept[name] = out
            return out

        handles.append(modules[name].register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return kept, logits


def _space_sum(t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 4:
        return t.sum(dim=(2, 3))
    if t.ndim == 3:
        return t.sum(dim=1)
    return t


def _space_max(t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 4:
        return t.flatten(2).max(dim=2).values
    if t.ndim == 3:
        return t.max(dim=1).values
    return t


def relevance(model: nn.Module, layers: list[str], x: torch.Tensor, targets) -> dict:
    """Per layer, (B, C): each image's gradient x activation for its target logit, one image
    and one layer at a time."""
    model.eval()
    out = {name: [] for name in layers}
    for i in range(x.shape[0]):
        for name in layers:
            xi = x[i : i + 1].clone().requires_grad_(True)
            kept, logits = _outputs(model, layers, xi)
            (grad,) = torch.autograd.grad(logits[0, int(targets[i])], kept[name])
            out[name].append(_space_sum(grad * kept[name]).detach().double()[0].numpy())
    return {name: np.stack(rows) for name, rows in out.items()}


def edge_contributions(
    model: nn.Module, layers: list[str], lower: str, upper: str, members, x: torch.Tensor
) -> np.ndarray:
    """(B, C_lower): each image's gradient x activation at ``lower`` for the summed spatial
    maxima of ``upper``'s ``members``."""
    model.eval()
    rows = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        kept, _ = _outputs(model, layers, xi)
        objective = _space_max(kept[upper])[0, list(members)].sum()
        (grad,) = torch.autograd.grad(objective, kept[lower])
        rows.append(_space_sum(grad * kept[lower]).detach().double()[0].numpy())
    return np.stack(rows)


def ablated_logits(model: nn.Module, layers: list[str], layer: str, units, x: torch.Tensor):
    """(B, outputs): the logits with ``units`` of ``layer`` zeroed, a whole forward pass."""
    model.eval()
    with torch.no_grad():
        _, logits = _outputs(model, layers, x, zero=(layer, units))
    return logits.double().numpy()


def ablated_activation(
    model: nn.Module, layers: list[str], layer: str, units, target: str, members, x
) -> np.ndarray:
    """(B,): ``target``'s members' summed spatial maxima with ``units`` of ``layer`` zeroed."""
    model.eval()
    with torch.no_grad():
        kept, _ = _outputs(model, layers, x, zero=(layer, units))
    return _space_max(kept[target])[:, list(members)].double().sum(dim=1).numpy()


def graph_nodes_sql(scores: pl.DataFrame, fraction: float, nodes_per_layer: int) -> pl.DataFrame:
    """The concept graph's node choice as the SQL the stage used to run over
    ``class_importance`` (``scores``: label, neuron_id, layer, layer_index, cluster_id, score)."""
    con = duckdb.connect()
    con.register("scores", scores.to_arrow())
    return con.sql(f"""
        WITH ranked AS (
            SELECT *, row_number() OVER (PARTITION BY label, layer
                                         ORDER BY score DESC, neuron_id) AS r,
                   count(*) OVER (PARTITION BY label, layer) AS layer_size
            FROM scores
        ), top AS (
            SELECT * FROM ranked
            WHERE r <= greatest(1, ceil(layer_size * {float(fraction)})) AND score > 0
        ), nodes AS (
            SELECT label, cluster_id, layer, any_value(layer_index) AS layer_index,
                   sum(score) AS importance, count(*) AS important_members
            FROM top GROUP BY label, cluster_id, layer
        )
        SELECT label::INTEGER AS label, cluster_id::BIGINT AS cluster_id, layer,
               layer_index::INTEGER AS layer_index, importance::DOUBLE AS importance,
               important_members::INTEGER AS important_members
        FROM nodes
        QUALIFY row_number() OVER (PARTITION BY label, layer
                                   ORDER BY importance DESC, cluster_id) <= {int(nodes_per_layer)}
        ORDER BY label, layer_index, importance DESC, cluster_id
    """).pl()


def relevance_maps(model: nn.Module, layers: list[str], x: torch.Tensor, targets) -> dict:
    """Per layer, each image's gradient x activation per unit and position (the output's own
    layout), one image at a time."""
    model.eval()
    out = {name: [] for name in layers}
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        kept, logits = _outputs(model, layers, xi)
        grads = torch.autograd.grad(logits[0, int(targets[i])], [kept[n] for n in layers])
        for name, grad in zip(layers, grads):
            out[name].append((grad * kept[name]).detach().double()[0].numpy())
    return {name: np.stack(rows) for name, rows in out.items()}
