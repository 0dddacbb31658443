"""Page-copy pieces shared by every host<->device mover: plan checks, copy lists batched into one
``torch._foreach_copy_`` call, and the split of a page list into runs of consecutive host pages
(one copy per run, never one per page per layer)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer, page_runs


def check_plan(host: HostKVBuffer, dev: DeviceKVBuffer, host_pages: Sequence[int],
               device_pages: Sequence[int]) -> None:
    if len(host_pages) != len(device_pages):
        raise ValueError(f"page copy: {len(host_pages)} host pages but {len(device_pages)} device pages")
    for pages, limit, name in ((host_pages, host.num_pages, "host"), (device_pages, dev.num_pages, "device")):
        bad = [p for p in pages if not 0 <= p < limit]
        if bad:
            raise ValueError(f"page copy: {name} page id {bad[0]} outside [0, {limit})")


_foreach_ok = True
"""Whether ``torch._foreach_copy_`` takes mixed host/device lists here (diagnostics: benchmarks
report it); after one failure every copy goes through the per-tensor loop."""


def _foreach_copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """``dst[i].copy_(src[i], non_blocking=True)`` for every ``i``, in one call when torch can."""
    global _foreach_ok
    if _foreach_ok:
        try:
            torch._foreach_copy_(dst, src, non_blocking=True)
            return
        except (AttributeError, RuntimeError, TypeError, NotImplementedError):
            _foreach_ok = False
    for d, s in zip(dst, src):
        d.copy_(s, non_blocking=True)


def foreach_copy_works() -> bool:
    return _foreach_ok


def pinned_index(pages: Sequence[int], device: torch.device) -> torch.Tensor:
    """Page ids as a device tensor, uploaded on the current stream without blocking the caller."""
    host = torch.tensor(list(pages), dtype=torch.long, pin_memory=True)
    return host.to(device, non_blocking=True)


def run_pieces(host_pages: Sequence[int], staged: Sequence[torch.Tensor] | torch.Tensor,
               staged_block: torch.Tensor, host_views: Sequence[torch.Tensor],
               host_block: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching pieces of a staging buffer (pages in load order) and of the page-major host buffer,
    one per run of consecutive ``host_pages``: single pages as the pre-made views ``staged[i]`` /
    ``host_views[id]``, longer runs as slices of ``staged_block`` / ``host_block``."""
    staged_parts: list[torch.Tensor] = []
    host_parts: list[torch.Tensor] = []
    for off, first, count in page_runs(host_pages):
        if count == 1:
            staged_parts.append(staged[off])
            host_parts.append(host_views[first])
        else:
            staged_parts.append(staged_block[off:off + count])
            host_parts.append(host_block[first:first + count])
    return staged_parts, host_parts


def unit_pieces(host_pages: Sequence[int], staged: Sequence[torch.Tensor], staged_block: torch.Tensor,
                host_views: Sequence[torch.Tensor], host_block: torch.Tensor, first_layer: int,
                num_layers: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Destination and source pieces of one unit's host->staging copies. All layers: one piece per
    run of consecutive host pages (:func:`run_pieces`). A layer range: one contiguous piece per
    page, ``host_views[id][first:first + n]`` into ``staged[i][:n]`` (a page's layers are
    contiguous on the host; consecutive pages of a layer range are not)."""
    if num_layers == host_block.shape[1]:
        return run_pieces(host_pages, staged, staged_block, host_views, host_block)
    stop = first_layer + num_layers
    return ([staged[i][:num_layers] for i in range(len(host_pages))],
            [host_views[p][first_layer:stop] for p in host_pages])


def require_gpu_buffers(device_kv: DeviceKVBuffer, host_kv: HostKVBuffer, who: str) -> None:
    if device_kv.device.type != "cuda":
        raise ValueError(f"{who} needs a cuda device buffer, got {device_kv.device}")
    if not host_kv.pinned:
        raise ValueError(f"{who} needs a pinned host buffer (HostKVBuffer(pin_memory=True))")
