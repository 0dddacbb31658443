"""The ``direct`` copier's index arithmetic, checked on the CPU: units in layer groups and the
host->staging pieces each unit copies, followed by the scatter the copier runs on the device
(here with plain tensor copies), reproduce every page of a load exactly."""

from __future__ import annotations

import pytest
import torch
from context_forge.prefetch.copier import layer_chunk_units
from context_forge.prefetch.stream_copier import unit_pieces

LAYERS, PS, HEADS, DIM = 6, 2, 1, 3


@pytest.mark.parametrize("per_unit", [LAYERS, 2, 4, 1])
def test_layer_group_units_and_pieces_reproduce_the_pages(per_unit: int) -> None:
    host = torch.randn(10, LAYERS, 2, PS, HEADS, DIM)  # page-major host layout
    dev = torch.zeros(LAYERS, 2, 12, PS, HEADS, DIM)  # layer-major device layout
    host_pages, dev_pages = [3, 4, 5, 9, 0], [11, 2, 7, 0, 5]
    chunk = 2
    staging = torch.empty(chunk, LAYERS, 2, PS, HEADS, DIM)
    staged, host_views = staging.unbind(0), host.unbind(0)
    scatter_src = staging.permute(1, 2, 0, 3, 4, 5)
    units = layer_chunk_units(len(host_pages), LAYERS, chunk, per_unit)
    covered = [(p, layer) for u in units for p in range(u.start, u.stop)
               for layer in range(u.first_layer, u.first_layer + u.num_layers)]
    assert sorted(covered) == [(p, layer) for p in range(len(host_pages)) for layer in range(LAYERS)]
    firsts = [u.first_layer for u in units]
    assert firsts == sorted(firsts), "layer groups land in order"
    for u in units:
        hp, dp = host_pages[u.start:u.stop], dev_pages[u.start:u.stop]
        dst, src = unit_pieces(hp, staged, staging, host_views, host, u.first_layer, u.num_layers)
        assert all(d.is_contiguous() and s.is_contiguous() for d, s in zip(dst, src)), "one copy each"
        if per_unit < LAYERS:
            assert len(dst) == len(hp)
        for d, s in zip(dst, src):
            d.copy_(s)
        g0, g = u.first_layer, u.num_layers
        source = scatter_src[:g][:, :, :len(hp)]
        dev[g0:g0 + g].index_copy_(2, torch.tensor(dp), source)
    want = torch.zeros_like(dev)
    want[:, :, dev_pages] = host[host_pages].permute(1, 2, 0, 3, 4, 5)
    assert torch.equal(dev, want)


def test_all_layer_units_copy_runs_of_consecutive_pages_at_once() -> None:
    host = torch.randn(8, LAYERS, 2, PS, HEADS, DIM)
    staging = torch.empty(4, LAYERS, 2, PS, HEADS, DIM)
    _dst, src = unit_pieces([2, 3, 4, 7], staging.unbind(0), staging, host.unbind(0), host, 0, LAYERS)
    assert [s.shape[0] if s.dim() == host.dim() else 1 for s in src] == [3, 1]
