"""Train a PLONK denoiser on embedding shards: CPU, one GPU, or N GPUs with `torchrun` (DDP).

    python -m training.train --config run.yaml [--field value ...]
    torchrun --nproc_per_node=8 -m training.train --config run.yaml

Each rank reads its own shards (training/loader.py). The noisy training point, t and the guidance
dropout of step s on rank r come from a generator seeded by (seed, s, r), and a batch is a function of
(seed, epoch, batch index), so resuming from `<output_dir>/last.pt` continues exactly where the run stopped
(bit-identical on CPU). The final EMA weights are exported in the hub format to `<output_dir>/model`,
which `geodemo.load` reads.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from geodemo.checkpoint import save_checkpoint
from geodemo.losses import training_loss
from geodemo.network import GeoDenoiser, NetworkConfig
from geodemo.processes import process_from_name
from geodemo.schedules import schedule_from_config, schedule_to_config
from training.config import TrainConfig, parse_args
from training.loader import ShardLoader, seeded_generator
from training.shards import embedding_dim, list_shards, shard_sizes

log = logging.getLogger("training")

STATE_FILE = "last.pt"
EXPORT_DIR = "model"
METRICS_FILE = "metrics.csv"
_NOISE_STREAM = 3  # seeded-stream tag of the per-step training noise (see training.loader)
_COMPATIBLE_CHANGES = {"total_steps", "stop_at_step", "resume", "progress", "output_dir", "checkpoint_every",
                       "log_every", "num_workers", "audit", "export_half", "device", "train_shards", "compile"}
"""Fields a resumed run may change; any other difference from the saved run is an error."""


@dataclass
class Runtime:
    """Where this process runs: its rank among world_size processes and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    rank = dist.get_rank() if world_size > 1 else 0
    return Runtime(rank=rank, world_size=world_size, device=device)


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to 1 over warmup_steps, then cosine from 1 to min_lr_ratio at total_steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(network: GeoDenoiser, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """LAMB (timm) or AdamW; weight decay on matrices only (biases and embeddings' biases excluded)."""
    decay = [p for p in network.parameters() if p.ndim >= 2]
    no_decay = [p for p in network.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=config.lr, betas=config.betas, max_grad_norm=None)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda")


class EMA:
    """Exponential moving average of the weights: ema <- d ema + (1 - d) w after every optimizer step.

    With warm-up, update n (counting from 0) uses d_n = min(decay, (1 + n) / (10 + n)).
    """

    def __init__(self, network: GeoDenoiser, decay: float, warmup: bool = True):
        self.network = copy.deepcopy(network).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, network: GeoDenoiser) -> None:
        ema = list(self.network.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in network.parameters()], 1 - self.current_decay())
        self.updates += 1

    def state_dict(self) -> dict:
        return {"network": self.network.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        self.updates = int(state["updates"])


class StopRequest:
    """SIGINT / SIGTERM ask the run to checkpoint and stop at the next step boundary; a second signal stops at once."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        log.warning("signal %d: checkpointing and stopping after this step (again to stop now)", signum)
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@dataclass
class Position:
    """The next batch to train on: step counter, epoch, and batch index inside the epoch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass
class Trainer:
    """One training run's state; `run()` trains until total_steps (or stop_at_step)."""

    config: TrainConfig
    runtime: Runtime
    network: GeoDenoiser = field(init=False)
    ema: EMA = field(init=False)

    def __post_init__(self) -> None:
        cfg, rt = self.config, self.runtime
        self.out = Path(cfg.output_dir)
        paths = list_shards(cfg.train_shards)
        cond_dim = embedding_dim(paths[0], cfg.embedding_key)
        if cfg.cond_dim is not None and cfg.cond_dim != cond_dim:
            raise ValueError(f"cond_dim is {cfg.cond_dim} but the shards hold {cond_dim}-d {cfg.embedding_key!r} embeddings")
        cfg.cond_dim = cond_dim
        self.process = process_from_name(cfg.process)
        self.schedule = schedule_from_config(cfg.schedule)
        cfg.schedule = schedule_to_config(self.schedule)
        if cfg.batch_size % rt.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {rt.world_size} ranks")
        self.loader = ShardLoader(paths, shard_sizes(paths), cfg.embedding_key, cfg.batch_size // rt.world_size,
                                  rank=rt.rank, world_size=rt.world_size, seed=cfg.seed, mode=cfg.data_mode,
                                  window_shards=cfg.stream_window_shards, num_workers=cfg.num_workers,
                                  device=rt.device)
        torch.manual_seed(cfg.seed)
        self.network = GeoDenoiser(NetworkConfig(dim=cfg.dim, depth=cfg.depth, cond_dim=cond_dim,
                                                 expansion=cfg.expansion)).to(rt.device)
        self.ema = EMA(self.network, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = build_optimizer(self.network, cfg, rt.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: learning_rate_factor(s, cfg))
        model: torch.nn.Module = self.network
        if rt.world_size > 1:
            model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                            gradient_as_bucket_view=True)
        self.model = torch.compile(model) if cfg.compile else model
        self.position = Position()
        self.nonfinite_steps = 0
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and rt.device.type == "cuda")
        self.seen_ids: dict[int, list[torch.Tensor]] = {}
        self.stop_request = StopRequest()

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "position": vars(self.position).copy(),
                "network": self.network.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "nonfinite_steps": self.nonfinite_steps, "world_size": self.runtime.world_size}

    def save_state(self) -> None:
        """Rank 0 writes <output_dir>/last.pt atomically; every rank waits for it."""
        if self.runtime.main:
            tmp = self.out / (STATE_FILE + ".tmp")
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, self.out / STATE_FILE)
        if self.runtime.world_size > 1:
            dist.barrier()

    def load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.runtime.device, weights_only=False)
        if state.get("world_size", self.runtime.world_size) != self.runtime.world_size:
            raise ValueError(f"{path} was written by {state['world_size']} ranks, this run has "
                             f"{self.runtime.world_size}: an exact resume needs the same number of ranks")
        saved, now = state["config"], self.config.to_dict()
        changed = sorted(k for k in now if k not in _COMPATIBLE_CHANGES and saved.get(k) != now[k])
        if changed:
            raise ValueError(f"{path} was written by a run with different {changed} "
                             f"(saved {[saved.get(k) for k in changed]}, now {[now[k] for k in changed]}); "
                             "use a new output_dir or --resume false")
        self.network.load_state_dict(state["network"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = Position(**state["position"])
        self.nonfinite_steps = int(state["nonfinite_steps"])

    def export(self) -> Path:
        """The EMA weights in the hub format (config.json + model.safetensors) that geodemo.load reads."""
        cfg = self.config
        metadata = {"training": {"train_data": cfg.train_data, "train_shards": cfg.train_shards,
                                 "embedding_key": cfg.embedding_key, "steps": self.position.step,
                                 "batch_size": cfg.batch_size, "optimizer": cfg.optimizer, "lr": cfg.lr,
                                 "ema_decay": cfg.ema_decay, "guidance_dropout": cfg.guidance_dropout,
                                 "seed": cfg.seed, "world_size": self.runtime.world_size}}
        return save_checkpoint(self.out / EXPORT_DIR, self.ema.network, cfg.process, cfg.schedule,
                               cfg.encoder or cfg.embedding_key, metadata=metadata, half=cfg.export_half)

    # -- training --------------------------------------------------------------------------------
    def step(self, embeddings: torch.Tensor, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (loss, gradient norm) as device tensors (no host sync).

        A non-finite gradient norm zeroes the whole gradient (the update then only carries momentum).
        """
        generator = seeded_generator(self.config.seed, _NOISE_STREAM, self.position.step, self.runtime.rank,
                                     device=self.runtime.device)
        autocast = (torch.autocast(self.runtime.device.type, dtype=torch.bfloat16) if self.bf16
                    else contextlib.nullcontext())
        with autocast:
            loss = training_loss(self.model, self.process, self.schedule, xyz, embeddings, generator=generator,
                                 cond_drop=self.config.guidance_dropout)
        loss.backward()
        params = list(self.network.parameters())
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        finite = torch.isfinite(norm)
        zero = torch.zeros((), device=norm.device)
        for p in params:
            torch.where(finite, p.grad, zero, out=p.grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.ema.update(self.network)
        return loss.detach(), norm.detach()

    def run(self) -> Path | None:
        """Train; returns the exported model folder, or None when stopped early (stop_at_step, SIGINT/SIGTERM)."""
        cfg, rt = self.config, self.runtime
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume and (self.out / STATE_FILE).is_file():
            self.load_state(self.out / STATE_FILE)
            log.info("resumed from %s at step %d", self.out / STATE_FILE, self.position.step)
        if rt.main:
            cfg.save(self.out)
        logger = MetricsLog(self.out / METRICS_FILE, self.position.step) if rt.main else None
        stop = min(cfg.total_steps, cfg.stop_at_step or cfg.total_steps)
        bar = tqdm(total=stop, initial=self.position.step, disable=not (cfg.progress and rt.main), unit="step")
        self.network.train()
        with self.stop_request:
            stopping = self._train_until(stop, logger, bar)
        bar.close()
        if cfg.audit:
            self.write_audit()
        if stopping:
            log.warning("stopped at step %d; %s resumes from here", self.position.step, self.out / STATE_FILE)
        if self.position.step < cfg.total_steps:
            return None
        path = self.export() if rt.main else self.out / EXPORT_DIR
        if rt.world_size > 1:
            dist.barrier()
        return path

    def _stop_agreed(self, at_log_step: bool) -> bool:
        """Whether every rank stops now: every step alone, at log steps (one all-reduce) under DDP."""
        if self.runtime.world_size == 1:
            return self.stop_request.requested
        if not at_log_step:
            return False
        flag = torch.tensor(float(self.stop_request.requested), device=self.runtime.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def _train_until(self, stop: int, logger: "MetricsLog | None", bar) -> bool:
        """The training loop up to step `stop`; True when a stop request ended it early."""
        cfg, rt = self.config, self.runtime
        window_loss = torch.zeros((), device=rt.device)
        window_nonfinite = torch.zeros((), device=rt.device, dtype=torch.long)
        window_start, window_steps = time.perf_counter(), 0
        stopping = False
        while self.position.step < stop and not stopping:
            for batch in self.loader.batches(self.position.epoch, self.position.batch):
                loss, norm = self.step(batch.embeddings, batch.xyz)
                if cfg.audit:
                    self.seen_ids.setdefault(self.position.epoch, []).append(batch.ids.cpu())
                window_loss += loss
                window_nonfinite += (~torch.isfinite(norm)).long()
                window_steps += 1
                self.position.step += 1
                self.position.batch += 1
                bar.update(1)
                at_log_step = self.position.step % cfg.log_every == 0 or self.position.step == stop
                stopping = self._stop_agreed(at_log_step)
                if at_log_step or stopping:
                    if rt.world_size > 1:
                        dist.all_reduce(window_loss)
                        window_loss /= rt.world_size
                    elapsed = time.perf_counter() - window_start
                    row = {"step": self.position.step, "epoch": self.position.epoch,
                           "loss": float(window_loss) / window_steps, "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": float(norm), "nonfinite_steps": int(window_nonfinite),
                           "samples_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9)}
                    self.nonfinite_steps += row["nonfinite_steps"]
                    if logger is not None:
                        logger.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    window_loss.zero_()
                    window_nonfinite.zero_()
                    window_start, window_steps = time.perf_counter(), 0
                if self.position.step % cfg.checkpoint_every == 0 or self.position.step == stop or stopping:
                    self._normalise_position()
                    self.save_state()
                if self.position.step >= stop or stopping:
                    break
            self._normalise_position()
        return stopping

    def _normalise_position(self) -> None:
        """Move to the next epoch once the batch index reaches the end of the current one."""
        if self.position.batch >= self.loader.steps_per_epoch(self.position.epoch):
            self.position.epoch += 1
            self.position.batch = 0

    def write_audit(self) -> None:
        """<output_dir>/audit/rank<r>.json: sample ids seen per epoch and hashes of the final weights."""
        folder = self.out / "audit"
        folder.mkdir(exist_ok=True)
        record = {"ids": {e: torch.cat(v).tolist() for e, v in self.seen_ids.items()},
                  "network_sha256": state_hash(self.network), "ema_sha256": state_hash(self.ema.network)}
        (folder / f"rank{self.runtime.rank}.json").write_text(json.dumps(record))


def state_hash(network: torch.nn.Module) -> str:
    """sha256 of every tensor of the state dict, in name order (bitwise identity of weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class MetricsLog:
    """Append-only CSV of training metrics; on resume, rows past the resumed step are dropped."""

    FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "nonfinite_steps", "samples_per_s")

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if path.is_file() and resume_step > 0:
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS).writerow(row)


def train(config: TrainConfig) -> Path | None:
    """Run training in this process (one rank under torchrun); returns the exported model folder."""
    runtime = setup_runtime(config)
    try:
        return Trainer(config, runtime).run()
    finally:
        if runtime.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = parse_args(argv)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    path = train(config)
    if path is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"model written to {path} (load it with geodemo.load({str(path)!r}))")


if __name__ == "__main__":
    main()
