"""Several processes of one run (torchrun / accelerate launch): who is where, and the data plan.

`World` says which rank this process is; `process_group` joins the others
(gloo on CPU, nccl on CUDA); `EpochPlan` is the order of the training rows in
each epoch — length-grouped, optionally weighted, and split between the ranks;
`ddp_model` wraps the model in DistributedDataParallel; `weights_digest` and
`compare_ranks` let the ranks check they ended with the same weights. A plain
single process is rank 0 of 1 and touches none of torch.distributed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import TrainingError
from .formatting import LengthGroupedBatches

if TYPE_CHECKING:
    from .events import Events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run.

    `torchrun` and `accelerate launch` start one process per device and tell each
    its RANK, WORLD_SIZE and LOCAL_RANK; a plain `python -m trainer train` is rank 0
    of 1, for which every method here returns at once without touching
    torch.distributed.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> World:
        env = os.environ if environ is None else environ
        try:
            size = int(env.get("WORLD_SIZE") or 1)
            rank = int(env.get("RANK") or 0)
            local_rank = int(env.get("LOCAL_RANK") or rank)
        except ValueError:
            shown = ", ".join(f"{n}={env.get(n)!r}" for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
            raise TrainingError(f"the distributed environment is not whole numbers ({shown}); "
                                f"start several processes with torchrun or accelerate "
                                f"launch, or unset these variables") from None
        if size < 1 or not 0 <= rank < size or local_rank < 0:
            raise TrainingError(f"RANK {rank} does not fit WORLD_SIZE {size}; start several "
                                f"processes with torchrun or accelerate launch, or unset "
                                f"these variables")
        return cls(rank, size, local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sum(self, values: Sequence[float], device: str = "cpu") -> list[float]:
        """Element-wise sums over the ranks (float64: token counts stay exact)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()


@contextlib.contextmanager
def process_group(world: World, device: str) -> Iterator[None]:
    """Join the run's other processes for as long as it lasts (gloo on CPU, nccl on CUDA)."""
    if not world.distributed:
        yield
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():  # the launcher (or a caller) joined already: theirs to close
        yield
        return
    if device == "cuda":
        torch.cuda.set_device(world.local_rank)  # "cuda" then means this process's device
    try:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    except (ValueError, RuntimeError) as exc:
        raise TrainingError(f"cannot join the other training processes (rank {world.rank} of "
                            f"{world.size}): {exc}; start them with torchrun --nproc-per-node "
                            f"N -m trainer train ... or accelerate launch") from exc
    try:
        yield
    finally:
        dist.destroy_process_group()


def saved_bytes(value: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def ddp_model(model: Any, world: World, device: str) -> Any:
    """DDP around the model when there are several processes; the model itself otherwise."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.local_rank] if device == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def weights_digest(model: Any) -> str:
    """A fingerprint of the trained weights: equal on every rank when DDP kept them in step."""
    import torch

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()[:16]


def compare_ranks(world: World, model: Any, local_tokens: int, events: Events) -> None:
    """With several processes: did they all end with the same weights? (They must.)"""
    if not world.distributed:
        return
    reports = world.gather({"rank": world.rank, "checksum": weights_digest(model),
                            "tokens": local_tokens})
    agree = len({r["checksum"] for r in reports}) == 1
    events.emit("ranks", world_size=world.size, agree=agree, ranks=reports)
    if agree:
        log.info("all %d processes end with the same weights (checksum %s)", world.size,
                 reports[0]["checksum"])
    elif world.is_main:
        log.warning("the processes end with different weights (checksums %s); rank 0's "
                    "are kept", ", ".join(r["checksum"] for r in reports))


class EpochPlan:
    """The micro-batches of every epoch for this process, a pure function of (seed, epoch).

    Which examples: each once (a seeded shuffle), or with sampling weights as many
    draws with replacement as there are examples, so an epoch stays the data size.
    With several processes each takes its share of those (torch's DistributedSampler,
    seeded, padded so every rank gets as many batches). Then length grouping as in
    LengthGroupedBatches. The plain case (one process, no weights) is exactly
    LengthGroupedBatches, so turning the new options off changes nothing.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int,
                 group_by_length: bool = True, weights: Sequence[float] | None = None,
                 world: World | None = None):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.weights = list(weights) if weights is not None else None
        self.world = world or World()
        self._plain = LengthGroupedBatches(self.lengths, batch_size, seed=seed,
                                           group_by_length=group_by_length)
        self.per_rank = -(-len(self.lengths) // self.world.size)

    def __len__(self) -> int:
        return -(-self.per_rank // self.batch_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        if self.weights is None and not self.world.distributed:
            return self._plain.epoch(epoch)
        drawn = self.draw(epoch)
        mine = self._shard(drawn, epoch)
        grouped = LengthGroupedBatches([self.lengths[i] for i in mine], self.batch_size,
                                       seed=self.seed, group_by_length=self.group_by_length)
        return [[mine[i] for i in batch] for batch in grouped.epoch(epoch)]

    def draw(self, epoch: int) -> list[int]:
        """The examples of one epoch over all ranks: weighted draws, or each once."""
        import torch

        if self.weights is None:
            return list(range(len(self.lengths)))
        # its own stream, apart from the shuffles' (seed * 100_003 + epoch)
        generator = torch.Generator().manual_seed((self.seed + 1) * 999_983 + epoch)
        weights = torch.tensor(self.weights, dtype=torch.float64)
        return torch.multinomial(weights, len(self.lengths), replacement=True,
                                 generator=generator).tolist()

    def _shard(self, drawn: list[int], epoch: int) -> list[int]:
        if not self.world.distributed:
            return drawn
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(drawn, num_replicas=self.world.size, rank=self.world.rank,
                                     shuffle=True, seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        return [drawn[i] for i in sampler]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch(0))

    def stream(self, start: int) -> Iterator[list[int]]:
        """The data order as one stream across epochs, from micro-batch `start` on."""
        epoch, skip = divmod(start, len(self))
        while True:
            yield from self.epoch(epoch)[skip:]
            epoch, skip = epoch + 1, 0
