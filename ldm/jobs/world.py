"""Which process of a run this is, from the variables torchrun (and `accelerate launch`, which runs torchrun)
gives every worker, and which jobs and device are its own.

ldm reads RANK / WORLD_SIZE / LOCAL_RANK itself rather than asking Accelerate: on a CPU, Accelerate's plain
`PartialState()` sees a single process under torchrun and would hand every process every job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ldm.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process, 0 .. size - 1
    size: int = 1  # processes in the run, over every machine
    local_rank: int = 0  # this process on its machine: its GPU

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> World:
        environ = os.environ if environ is None else environ
        try:
            world = cls(*(int(environ.get(name, default)) for name, default in
                          (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"))))  # fmt: skip
        except ValueError:
            raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; start with torchrun") from None
        if not 0 <= world.rank < world.size or world.local_rank < 0:
            raise ConfigError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}; start ldm with torchrun")
        return world

    def jobs(self, count: int) -> range:
        """The indices of this process's jobs out of `count`."""
        return block(count, self.rank, self.size)

    def device(self, requested: str | None, cuda_available: bool) -> str | None:
        """This process's device: its own GPU (cuda:LOCAL_RANK) unless a numbered one was asked for.
        None: the pipeline's own choice (a single process)."""
        if requested is None and self.size == 1:
            return None
        if requested is None:
            return f"cuda:{self.local_rank}" if cuda_available else "cpu"
        return f"cuda:{self.local_rank}" if requested == "cuda" else requested


def block(count: int, rank: int, size: int) -> range:
    """Accelerate's `split_between_processes` rule: contiguous blocks in rank order, the first `count % size`
    ranks taking one job more than the rest."""
    each, extra = divmod(count, size)
    start = rank * each + min(rank, extra)
    return range(start, start + each + (1 if rank < extra else 0))
