"""Detecting a multi-process launch (``accelerate launch``, ``torchrun``, MPI) for the CLI.

:func:`distributed_context` is shared by ``synref generate`` and ``synref features``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Tuple

__all__ = ["distributed_context", "release_distributed", "world_size_from_env"]


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
