"""Where to run: CUDA, then Apple MPS, else CPU, plus the torchrun (DDP) environment."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def pick_device(preference: str = "auto", local_rank: int | None = None) -> torch.device:
    """`auto` takes the fastest device present; anything else is passed to torch.device."""
    if preference != "auto":
        dev = torch.device(preference)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
        if dev.type == "mps" and not _mps_available():
            raise RuntimeError("device 'mps' was asked for but Apple MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank if local_rank is not None else 0)
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@dataclass(frozen=True)
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistInfo:
    """Read the variables torchrun sets; a plain `python` run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Join the torchrun process group; True when this call created it (and should end it)."""
    import torch.distributed as dist

    if not info.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return True


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
