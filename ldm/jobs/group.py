"""The processes of one run talking to each other: rank 0's choices (the random seed) shared with every process,
and waits for all. Over torch.distributed's gloo backend (CPU, TCP), which torchrun's MASTER_ADDR / MASTER_PORT
set up; a run of one process needs none of it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from ldm.errors import ConfigError
from ldm.jobs.world import World

# Rank 0 waits at the end for the slowest process's last job: far longer than torch's 30-minute default.
WAIT = timedelta(days=7)


class Group:
    def __init__(self, world: World):
        self.world = world
        self.owned = False  # this group started torch.distributed, so it ends it
        self.handle: Any = None
        if world.size == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():  # a user's script (Accelerate on GPUs: NCCL) already joined: add a CPU channel
            self.handle = dist.new_group(backend="gloo", timeout=WAIT)
            return
        if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            raise ConfigError(f"WORLD_SIZE is {world.size} but MASTER_ADDR/MASTER_PORT are not set; "
                              "start the processes with torchrun or accelerate launch")  # fmt: skip
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=WAIT)
        self.owned = True

    def from_rank_0(self, value: Any) -> Any:
        """Rank 0's `value`, on every process."""
        if self.world.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.handle)
        return box[0]

    def wait_for_all(self) -> None:
        if self.world.size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.handle)

    def close(self) -> None:
        if self.world.size == 1:
            return
        import torch.distributed as dist

        if self.owned:
            dist.destroy_process_group()
        elif self.handle is not None:
            dist.destroy_process_group(self.handle)
        self.owned, self.handle = False, None
