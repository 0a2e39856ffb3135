"""Data-parallel training under torchrun, on PyTorch's own engine: torch.distributed and
DistributedDataParallel (DDP), set up from the environment torchrun gives each process.

    torchrun --nproc_per_node=2 train.py --run-name ddp ...   # 2 processes, one machine

`python train.py` never gets here: `launch_from_env()` is None without torchrun's
RANK/WORLD_SIZE, and train.py then runs exactly as a single process.

Under torchrun every process (a rank) runs train.py's whole loop; they differ only in
the data they see and in who writes files:

- Backend and device come from --device: the CPU uses gloo; CUDA uses nccl, each rank on
  its own GPU, cuda:LOCAL_RANK.
- --batch-size is the *global* batch: each rank computes batch_size / world_size of it.
- Each epoch every rank takes its shard of the same seeded permutation that a single
  process draws (DistributedSampler, whose seed + epoch is train.py's epoch seed), and
  its k-th local batch is its part of the single process's k-th batch (see
  `epoch_shard`). DDP averages the gradients across ranks, and each rank's loss is
  scaled so that the average is the gradient of the global batch's mean loss, even
  for a last batch that does not split evenly (see `share_of_mean_loss`). So N
  processes take the same optimizer steps as one process, up to float rounding.
- Evaluation: each rank evaluates its shard, and sums of losses, correct predictions
  and counts are all-reduced, which gives the single-process numbers.
- Rank 0 alone writes the run directory (TensorBoard, metrics.json, checkpoints); the
  others learn its name from rank 0. Every rank resumes from the same last.pt.
- When a worker dies, `torchrun --max-restarts=K` restarts them all with the same
  arguments; they recognize their run (`earlier_attempt`) and resume from its last.pt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

import custom_ops

from .diagnostics import ActivationMonitor
from .errors import UserError
from .evaluation import Evaluation
from .runs import create_run_dir
from .runtime import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """What torchrun tells a worker through its environment, read before any set-up."""

    rank: int  # 0 .. world_size - 1, across all nodes
    local_rank: int  # 0 .. local_world_size - 1, on this node
    world_size: int
    local_world_size: int
    restart_count: int  # 0 on the first attempt, +1 each time this node's torchrun restarts its workers
    max_restarts: int
    run_id: str  # the rendezvous id: fresh for each `torchrun --standalone`, else --rdzv-id


def launch_from_env(environ: dict[str, str] | None = None) -> Launch | None:
    """torchrun's settings, or None when this process was not started by torchrun."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    world_size = int(env["WORLD_SIZE"])
    return Launch(
        rank=int(env["RANK"]),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        world_size=world_size,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world_size))),
        restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
        max_restarts=int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")),
        run_id=env.get("TORCHELASTIC_RUN_ID", ""),
    )


def rank_device(requested: str, launch: Launch) -> torch.device:
    """--device for one rank: cpu (gloo), or this rank's own GPU, cuda:LOCAL_RANK (nccl)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device(requested)  # cpu, or a CUDA device that exists
    if device.type == "cpu":
        return device
    if device.index is not None and launch.local_world_size > 1:
        raise UserError(
            f"--device {requested} with {launch.local_world_size} processes on this node: each process takes its "
            "own GPU, cuda:LOCAL_RANK; pass --device cuda (or auto)"
        )
    index = launch.local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise UserError(
            f"process {launch.local_rank} on this node has no GPU: {launch.local_world_size} processes per node, "
            f"{torch.cuda.device_count()} GPUs; pass --nproc_per_node={torch.cuda.device_count()} at most"
        )
    return torch.device("cuda", index)


def check_batch_size(batch_size: int, launch: Launch) -> int:
    """The per-rank batch: --batch-size is the global batch and must split evenly."""
    if batch_size % launch.world_size:
        raise UserError(
            f"--batch-size {batch_size} is the global batch and does not split evenly over {launch.world_size} "
            f"processes: use a multiple of {launch.world_size}"
        )
    return batch_size // launch.world_size


def earlier_attempt(launch: Launch, resume: str | None, logdir: str, run_name: str | None) -> Path | None:
    """The run directory of an earlier attempt of this same torchrun job, or None.

    When a worker fails, torchrun (with --max-restarts) stops all of them and starts them
    again with the same arguments. The run directory (the one --resume continues, or else
    --logdir/--run-name) then has a config.json that rank 0 wrote with this job's run id.
    Every rank reads the same file, so all make the same decision (TORCHELASTIC_RESTART_COUNT
    would not do: it counts the restarts of one node's agent, and stays 0 on a node whose
    workers were healthy)."""
    if not launch.max_restarts:
        return None
    if resume is not None:
        run_dir = Path(resume).parent
    elif run_name is not None:
        run_dir = Path(logdir) / run_name
    else:
        return None
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return run_dir if isinstance(saved, dict) and saved.get("torchelastic_run_id") == launch.run_id else None


def make_run_dir(logdir: str, run_name: str, auto_named: bool, earlier: Path | None) -> Path:
    """create_run_dir, except after a restart that came before the run's first checkpoint:
    then the earlier attempt's directory is taken up again."""
    return earlier if earlier is not None else create_run_dir(logdir, run_name, auto_named)


def epoch_shard(num_samples: int, base_seed: int, epoch: int, rank: int, world_size: int) -> Tensor:
    """Rank `rank`'s sample indices for an epoch, in order.

    DistributedSampler shuffles with torch.randperm seeded with base_seed + epoch, the
    same permutation `order` a single process draws when base_seed + epoch is its epoch
    seed, and gives rank r the positions r, r + N, r + 2N, … of it. Taken b = B / N at a
    time, rank r's k-th batch holds the positions k·B + r, k·B + r + N, … < (k + 1)·B:
    together, the N ranks' k-th batches are exactly the single process's k-th batch
    order[k·B : (k + 1)·B]. The sampler pads the permutation with repeated samples to make
    it divide by N; those are cut off here, so no sample counts twice (a rank may then
    have fewer samples in the last batch of the epoch, or none)."""
    sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=base_seed)
    sampler.set_epoch(epoch)
    own = len(range(rank, num_samples, world_size))  # without the padding
    return torch.tensor(list(sampler)[:own], dtype=torch.long)


def share_of_mean_loss(model: Any, logits: Tensor, target: Tensor, global_batch: int, world_size: int) -> Tensor:
    """A rank's loss, scaled so that DDP's average over the N ranks is the mean loss over
    the whole global batch of B samples: (1/N) Σ_r (N / B) Σ_{i in rank r} ℓ_i = (1/B) Σ_i ℓ_i.

    For equal shares (b = B / N samples each) this is the rank's mean loss. For the last
    batch of an epoch, which may split unevenly, it still weighs every sample 1/B, as a
    single process does; a rank without samples contributes 0 (and still takes part in
    the all-reduce)."""
    total = model.loss(logits, target, reduction="sum")
    return custom_ops.mul(total, world_size / global_batch)


class Group:
    """This process's membership in the process group, and the collectives train.py uses."""

    def __init__(self, launch: Launch, device: torch.device) -> None:
        self.launch, self.device = launch, device
        self.rank, self.world_size = launch.rank, launch.world_size
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # torchrun's MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE: the env:// rendezvous
        dist.init_process_group(
            self.backend,
            store=_attempt_store(launch),
            rank=launch.rank,
            world_size=launch.world_size,
            device_id=device if device.type == "cuda" else None,
        )

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """DDP around the model, for the training step only: its forward prepares the
        gradient all-reduce that backward runs. Loss, predict, evaluation and state dicts
        use the plain model (so checkpoints have no 'module.' prefix)."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    # ------------------------------------------------------------------ data

    def epoch_shard(self, num_samples: int, base_seed: int, epoch: int) -> Tensor:
        """This rank's sample indices for an epoch, in order (see `epoch_shard`)."""
        return epoch_shard(num_samples, base_seed, epoch, self.rank, self.world_size)

    def shard(self, tensor: Tensor) -> Tensor:
        """This rank's share of a split for evaluation: rows rank, rank + N, …"""
        return tensor[self.rank :: self.world_size]

    # ------------------------------------------------------------------ the loss

    def share_of_mean_loss(self, model: Any, logits: Tensor, target: Tensor, global_batch: int) -> Tensor:
        """This rank's loss for DDP to average (see `share_of_mean_loss`)."""
        return share_of_mean_loss(model, logits, target, global_batch, self.world_size)

    def average(self, tensor: Tensor) -> Tensor:
        """The mean across ranks (e.g. of the per-step `share_of_mean_loss` values: the
        global batches' mean losses)."""
        tensor = tensor.detach().clone()
        dist.all_reduce(tensor)
        return tensor / self.world_size

    # ------------------------------------------------------------------ evaluation

    def all_reduce_evaluation(self, shard: Evaluation) -> Evaluation:
        """The evaluation of the whole split, from each rank's evaluation of its shard."""
        sums = torch.tensor([shard.loss * shard.total, shard.correct, shard.total], dtype=torch.float64,
                            device=self.device)  # fmt: skip
        dist.all_reduce(sums)
        loss_sum, correct, total = sums.tolist()
        return Evaluation(loss=loss_sum / total, correct=round(correct), total=round(total))

    def all_reduce_activation_stats(self, monitor: ActivationMonitor) -> None:
        """Turn each rank's activation statistics (of its shard) into those of the whole
        split: sums and counts add up; a unit is dead if it was inactive on every rank."""

        def all_reduce(op: dist.ReduceOp) -> Callable[[Tensor], Tensor]:
            def reduce(tensor: Tensor) -> Tensor:
                tensor = tensor.to(self.device)  # the backend's device (NCCL: the GPU)
                dist.all_reduce(tensor, op=op)
                return tensor

            return reduce

        monitor.combine(add_up=all_reduce(dist.ReduceOp.SUM), any_of=all_reduce(dist.ReduceOp.MAX))

    # ------------------------------------------------------------------ coordination

    def on_rank0(self, action: Callable[[], T]) -> T:
        """Run `action` on rank 0 alone and hand its result to every rank. A UserError on
        rank 0 is raised on every rank (none is left waiting for the others)."""
        message: list[Any] = [None, None]
        if self.is_rank0:
            try:
                message[0] = action()
            except UserError as error:
                message[1] = str(error)
        dist.broadcast_object_list(message, src=0)
        if message[1] is not None:
            raise UserError(message[1])
        return message[0]

    def barrier(self) -> None:
        dist.barrier()


def _attempt_store(launch: Launch) -> dist.Store | None:
    """The key-value store for init_process_group: None (env://) except in one case.

    By default torchrun's workers share its rendezvous TCPStore (TORCHELASTIC_USE_AGENT_STORE),
    which outlives a restart, and torch 2.13 puts no per-attempt prefix on the keys: a
    restarted worker can read a dead worker's address from the failed attempt and fail to
    connect (gloo: "connectFullMesh failed ... Connection refused"; nccl: a stale unique id;
    pytorch/pytorch#135712, #167288). On one node all workers have the same restart count,
    so the keys are put under it here, as torch itself once did. Across nodes the counts
    differ, so a multi-node job that should survive restarts runs torchrun with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a fresh store each attempt) and takes env://."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or launch.local_world_size != launch.world_size:
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), launch.world_size, is_master=False,
        timeout=timedelta(minutes=10),
    )  # fmt: skip
    return dist.PrefixStore(f"custom_ops/attempt_{launch.restart_count}", store)


def close() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
