"""glimmer-train under torchrun: which process this is, its device, its share of the data, and the
collectives that make N processes train like one.

torchrun (``python -m torch.distributed.run``) starts one process per device and tells each who it
is in its environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``);
without ``WORLD_SIZE`` (or with 1) the run is the ordinary single process and nothing here talks to
anyone.
NCCL on GPUs (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``), gloo on the CPU.

The semantics are the single process's: ``--batch-size`` is the global batch, every step's batches
over the ranks together are exactly the single process's batch (same seeded order, same per-sample
augmentation keys), DDP averages the gradients, and BatchNorm normalises over the global batch
(:class:`GlobalBatchNorm2d`). torch's ``SyncBatchNorm`` does that on GPUs only; this one does it
with one all-reduce per layer on any backend, so the CPU test exercises what a GPU run computes.
"""

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from glimmer.runtime.core.errors import GlimmerError

from .data import SampleKey, epoch_order

T = TypeVar("T")
ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Launch:
    """This process's place in the run (``world_size`` 1: a plain single-process run)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, logs and draws progress bars."""
        return self.rank == 0


SINGLE = Launch()


def launch_from_env(environ: Optional[Mapping[str, str]] = None) -> Launch:
    """The launch torchrun describes in the environment; the single process without it."""
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE") in (None, ""):
        return SINGLE
    values = {}
    for key in ENV:
        try:
            values[key] = int(env.get(key, "0" if key != "WORLD_SIZE" else ""))
        except ValueError:
            raise GlimmerError(
                f"environment {key}={env.get(key)!r} is not an integer (set by torchrun)"
            ) from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise GlimmerError(
            f"environment WORLD_SIZE={world} RANK={rank} LOCAL_RANK={local} is not a torchrun "
            "launch (0 <= RANK < WORLD_SIZE)"
        )
    return Launch(rank=rank, local_rank=local, world_size=world)


def pick_device(flag: str, launch: Launch) -> torch.device:
    """``--device`` for this process: as given in a single process; under torchrun ``auto``/``cuda``
    become ``cuda:LOCAL_RANK`` (one GPU per process) and ``cpu`` stays the CPU."""
    if not launch.enabled:
        return _single_device(flag)
    if flag == "cpu":
        return torch.device("cpu")
    if flag == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if flag not in ("auto", "cuda"):
        raise GlimmerError(
            f"--device {flag}: under torchrun each process takes cuda:LOCAL_RANK; pass --device "
            "cuda (or auto, or cpu) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if not torch.cuda.is_available():
        raise GlimmerError(f"--device {flag}: CUDA is not available to this torch build or machine")
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise GlimmerError(
            f"LOCAL_RANK {launch.local_rank}: only {count} CUDA device(s) visible; start at most "
            f"{count} processes per node (torchrun --nproc_per_node)"
        )
    torch.cuda.set_device(launch.local_rank)
    return torch.device("cuda", launch.local_rank)


def _single_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GlimmerError(f"--device {name}: CUDA is not available to this torch build or machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GlimmerError(
            f"--device {name!r} is not a torch device (auto, cpu, cuda, cuda:1 ...)"
        ) from None


class Group:
    """The process group of a launch (a no-op stand-in for the single process)."""

    def __init__(self, launch: Launch, device: torch.device) -> None:
        self.launch, self.device = launch, device
        self.backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.launch.enabled

    @property
    def main(self) -> bool:
        return self.launch.main

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    def __enter__(self) -> "Group":
        if self.enabled:
            self.backend = "nccl" if self.device.type == "cuda" else "gloo"
            kwargs = {"device_id": self.device} if self.device.type == "cuda" else {}
            dist.init_process_group(backend=self.backend, init_method="env://", **kwargs)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank; a :class:`GlimmerError` on any rank is raised on every rank (the
        lowest rank's), so a user mistake is one line from each process and none trains alone."""
        error: Optional[str] = None
        result: Any = None
        try:
            result = fn()
        except GlimmerError as exc:
            error = str(exc)
        if self.enabled:
            errors: List[Optional[str]] = [None] * self.world_size
            dist.all_gather_object(errors, error)
            error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise GlimmerError(error)
        return result

    def barrier(self) -> None:
        """Wait for every rank (after rank 0 wrote a file the others read)."""
        if self.enabled:
            dist.barrier()

    def sum(self, *values: float) -> Tuple[float, ...]:
        """Each value summed over the ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return tuple(float(v) for v in values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return tuple(float(v) for v in t.tolist())

    def gather_shards(self, items: Sequence[T]) -> List[T]:
        """The whole split from every rank's :func:`sampler` shard (``rank::world``), in split
        order."""
        if not self.enabled:
            return list(items)
        shards: List[Any] = [None] * self.world_size
        dist.all_gather_object(shards, list(items))
        out: List[Any] = [None] * sum(len(s) for s in shards)
        for rank, shard in enumerate(shards):
            out[rank :: self.world_size] = shard
        return out

    def sampler(self, size: int, seed: int, shuffle: bool) -> "ShardSampler":
        """Training (``shuffle``): this rank's share of the seeded epoch order, padded so every rank
        takes as many steps. Evaluation: the unpadded shard ``rank::world`` of the split."""
        return ShardSampler(size, seed, shuffle, self.rank, self.world_size, pad=shuffle)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` (BatchNorm made global) in DDP, or the model itself in a single process."""
        if not self.enabled:
            return model
        model = global_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        # BatchNorm buffers are identical on every rank (global statistics): synced once at the
        # start, never per forward
        params = inspect.signature(ddp.__init__).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        return ddp(model, device_ids=ids, **{sync: False})


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP: what is saved (no ``module.`` prefixes) and evaluated."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ShardSampler(DistributedSampler):
    """torch's DistributedSampler over :func:`~glimmer.train.data.epoch_order`, yielding the
    ``(index, epoch)`` keys that seed each sample's augmentation.

    Rank ``r`` takes positions ``r, r + W, r + 2W, ...`` of the order, so with a per-rank batch of
    ``B / W`` the ranks' k-th batches together are exactly the single process's k-th batch.
    """

    def __init__(
        self, size: int, seed: int, shuffle: bool, rank: int, world_size: int, pad: bool = True
    ) -> None:
        super().__init__(
            range(size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self.size, self.pad = size, pad
        if not pad:
            self.num_samples = len(range(rank, size, world_size))

    def __iter__(self) -> Iterator[SampleKey]:
        order = epoch_order(self.size, self.seed, self.epoch, self.shuffle)
        if self.pad and order:
            while len(order) < self.total_size:  # as DistributedSampler: repeat from the start
                order += order[: self.total_size - len(order)]
        return iter([(i, self.epoch) for i in order[self.rank :: self.num_replicas]])


class _SumAcrossRanks(torch.autograd.Function):
    """all-reduce (sum) with its gradient: the gradient of a sum over ranks is the sum of the
    ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across ranks.

    The per-channel sums are shifted by the running mean (identical on every rank) and kept in
    float64, so ``E[x^2] - E[x]^2`` does not cancel away the variance. Same parameters and buffers
    as ``nn.BatchNorm2d`` (a subclass): checkpoints do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        shift = self.running_mean.detach().view(1, c, 1, 1) if self.track_running_stats else 0.0
        xs = x - shift
        dims = (0, 2, 3)
        count = x.new_full((1,), x.numel() // max(c, 1), dtype=torch.float64)
        local = torch.cat(
            [xs.sum(dims, dtype=torch.float64), (xs * xs).sum(dims, dtype=torch.float64), count]
        )
        total = _SumAcrossRanks.apply(local)
        n = total[-1]
        mean_s = total[:c] / n
        var = (total[c : 2 * c] / n - mean_s * mean_s).clamp_min(0.0)
        mean = (mean_s + (self.running_mean.double() if self.track_running_stats else 0.0)).to(
            x.dtype
        )
        var = var.to(x.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                if m is None:
                    m = 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1)).to(x.dtype) if float(n) > 1 else var
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = (x - mean.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def global_batchnorm(model: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` of ``model`` made a :class:`GlobalBatchNorm2d` in place (the same
    parameter and buffer tensors, so an optimizer built before still holds them)."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model
