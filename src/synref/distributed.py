"""Detecting a multi-process launch (``accelerate launch``, ``torchrun``, MPI) for the CLI.

:func:`distributed_context` is shared by ``synref generate`` and ``synref features``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Tuple

__all__ = ["distributed_context", "release_distributed", "world_size_from_env", "process_group", "row_share",
           "all_reduce_sum", "all_gather_rows", "broadcast_object"]


def world_size_from_env() -> int:
    """The number of processes the environment announces (1 when none does)."""
    world = 1
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        try:
            world = max(world, int(os.environ.get(var, "1") or 1))
        except ValueError:
            pass
    return world


def distributed_context(device: Optional[str]
                        ) -> Tuple[int, int, Optional[str], Optional[Callable[[], Any]], Any]:
    """(process_index, num_processes, device, barrier, state) -- accelerate's PartialState when
    the environment (accelerate launch / torchrun / MPI) says there is more than one process;
    else ``(0, 1, device, None, None)``. The CPU (gloo) backend is used when
    ``ACCELERATE_USE_CPU`` is set, ``device`` is a CPU one, or no GPU is visible."""
    if world_size_from_env() <= 1:
        return 0, 1, device, None, None
    import torch

    from .optional import require

    PartialState = require("accelerate", "a multi-process run (accelerate launch / torchrun / MPI)").PartialState

    use_cpu = (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
               or (device is not None and device.startswith("cpu"))
               or not torch.cuda.is_available())
    state = PartialState(cpu=use_cpu)
    if device is None:
        device = str(state.device)
    return state.process_index, state.num_processes, device, state.wait_for_everyone, state


def release_distributed(state: Any) -> None:
    """Tear down the process group of :func:`distributed_context`'s ``state`` (None: nothing to
    do); best effort, for ``finally`` blocks at shutdown."""
    if state is None:
        return
    try:
        state.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at shutdown
        pass


# ----------------------------------------------------------------------------- row sharing
# The refinement's row work under a launched process group (torch.distributed, gloo on CPU,
# NCCL on GPUs): every process takes a contiguous share of the rows, sums are all-reduced, and
# rows are gathered where every process needs them. Without a process group these are no-ops,
# so the same code runs in one process.

def process_group() -> Tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def row_share(n: int, rank: int, world: int) -> slice:
    """The contiguous rows ``[n * rank / world, n * (rank + 1) / world)`` of process ``rank``."""
    return slice(n * rank // world, n * (rank + 1) // world)


def all_reduce_sum(value: Any) -> Any:
    """The sum over processes of a tensor or ndarray (float64 arrays stay float64); the value
    itself in one process."""
    import numpy as np
    import torch
    import torch.distributed as dist

    if process_group()[1] == 1:
        return value
    if isinstance(value, torch.Tensor):
        out = value.detach().clone().contiguous()
        dist.all_reduce(out)
        return out
    tensor = torch.from_numpy(np.ascontiguousarray(value)).clone()
    dist.all_reduce(tensor)
    return tensor.numpy()


def all_gather_rows(local: Any, n: int) -> Any:
    """The (n, ...) ndarray whose :func:`row_share` of each process is that process's ``local``
    rows (every process gets all of it); ``local`` itself in one process."""
    import numpy as np
    import torch
    import torch.distributed as dist

    rank, world = process_group()
    if world == 1:
        return local
    local = np.ascontiguousarray(local)
    parts = []
    for r in range(world):
        share = row_share(n, r, world)
        parts.append(torch.empty((share.stop - share.start,) + local.shape[1:], dtype=torch.from_numpy(local).dtype))
    # all_gather needs equal sizes: pad every share to the largest
    size = max(p.shape[0] for p in parts)
    padded = torch.zeros((size,) + local.shape[1:], dtype=parts[0].dtype)
    padded[:len(local)] = torch.from_numpy(local)
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return np.concatenate([g[:p.shape[0]].numpy() for g, p in zip(gathered, parts)])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of process ``src`` in every process (pickled; for small objects)."""
    import torch.distributed as dist

    if process_group()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
