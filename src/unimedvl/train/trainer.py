"""The trainer: one loop for every curriculum stage, from one CPU to many GPUs (torchrun + FSDP2).

    torchrun --nproc_per_node N -m unimedvl.train RECIPE.yaml [key=value ...]
    unimedvl train RECIPE.yaml [key=value ...]            (one process)

Per step: the global batch is `packs_per_step` packs; rank r takes packs r, r+W, ... and
accumulates their gradients. Losses are divided by the global CE / MSE token counts and multiplied
by the world size (FSDP averages gradients over ranks), so a step computes the same update on any
number of ranks. AdamW, warmup + cosine decay, gradient clipping, EMA of the trainable weights.

Checkpoints (`output_dir/checkpoints/step_XXXXXXX/`) hold the model, the optimizer's tensors, the
EMA and the step. They are written by torch.distributed.checkpoint through its safetensors storage
(each rank its own shards, offsets in the safetensors headers) and read back the same way, so
resuming never unpickles anything, not even DCP's usual `.metadata`; the optimizer's
hyper-parameters come from the recipe, not the file. The data stream and every random draw are
functions of (seed, step), so a resumed run continues exactly, on any world size.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from unimedvl.checkpoint.folder import save_checkpoint
from unimedvl.errors import CheckpointError
from unimedvl.train.config import OptimConfig, TrainConfig
from unimedvl.train.fsdp import install_unused_weight_anchors, shard
from unimedvl.train.init import build_for_training
from unimedvl.train.objective import pack_losses
from unimedvl.train.packer import CorpusIndex, PackMaker
from unimedvl.train.prefetch import PackStream
from unimedvl.train.schedule import lr_factor
from unimedvl.utils.files import atomic_write_text

CHECKPOINT_PREFIX = "step_"


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """Silence DCP's warning for a run without a process group: one process is intended there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def build_optimizer(params: list[torch.nn.Parameter] | list[dict[str, Any]], optim: OptimConfig, *,
                    sharded: bool) -> torch.optim.AdamW:
    """AdamW as a run uses it: the fused kernel for unsharded parameters (one pass per tensor; the small
    preset's step 2.69 -> 0.52 s on CPU in bench/train.py), the multi-tensor path for FSDP's DTensors.
    `params` may be parameter groups; a group's `lr_scale` multiplies the scheduled learning rate."""
    kernel = {"foreach": True} if sharded else {"fused": True}
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                             weight_decay=optim.weight_decay, **kernel)


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(config.seed)
        self.model_config, self.model, self.vae, self.tokenizer = build_for_training(config.model, config.seed)
        if config.precision == "bf16" and self.device.type == "cpu":
            warnings.warn("precision bf16 on CPU: autocast runs, but CPUs without native bf16 compute it far slower "
                          "than fp32; use precision fp32 on CPU", stacklevel=2)
        self.model.to(self.device)
        self.vae.to(self.device).requires_grad_(not config.freeze_vae)
        self._apply_freezing()
        install_unused_weight_anchors(self.model)  # before sharding: the hooks run on gathered weights
        if self.distributed:
            shard(self.model, self.device.type, self.world)
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self._param_groups(), config.optim, sharded=self.distributed)
        self.ema = {n: p.detach().clone().float() for n, p in self.trainable}
        self.index = CorpusIndex(config.data.corpus, config.data.split)
        self.packs = PackMaker(self.index, self.tokenizer, config.data, self.model_config, seed=config.seed)
        self.stream = PackStream(self.packs, tuple(range(self.rank, config.data.packs_per_step, self.world)),
                                 workers=config.data.workers, last_step=config.total_steps)
        self.out = Path(config.output_dir)
        self.step = 0

    # ---------------------------------------------------------------- setup
    def _apply_freezing(self) -> None:
        c = self.config
        if c.freeze_vit:
            self.model.vit_model.requires_grad_(False)
            self.model.connector.requires_grad_(False)
        if c.freeze_und:
            for name, p in self.model.language_model.named_parameters():
                if "_moe_gen" not in name:
                    p.requires_grad_(False)
            self.model.vit_model.requires_grad_(False)
            self.model.connector.requires_grad_(False)

    def _param_groups(self) -> list[dict[str, Any]]:
        """One group, or two when the recipe scales the vision encoder's learning rate."""
        scale = self.config.optim.vit_lr_scale
        if scale == 1.0:
            return [{"params": [p for _, p in self.trainable], "lr_scale": 1.0}]
        vit = [p for n, p in self.trainable if n.startswith("vit_model.")]
        rest = [p for n, p in self.trainable if not n.startswith("vit_model.")]
        return [g for g in ({"params": rest, "lr_scale": 1.0}, {"params": vit, "lr_scale": scale}) if g["params"]]

    # ---------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        """Tensors only (safetensors holds nothing else): the optimizer's per-parameter state, not its param groups."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd["state"], "ema": self.ema}

    def save(self) -> Path:
        import torch.distributed.checkpoint as dcp

        path = self.out / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step:07d}"
        tmp = path.with_name(path.name + ".tmp")
        if self.rank == 0 and tmp.exists():
            shutil.rmtree(tmp)
        self._barrier()
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        with _single_process_ok():
            dcp.save(self._state(), storage_writer=HuggingFaceStorageWriter(str(tmp), save_distributed=True))
        self._barrier()
        if self.rank == 0:
            atomic_write_text(tmp / "trainer.json", json.dumps({"step": self.step, "stage": self.config.stage}))
            if path.exists():  # an older run's checkpoint of the same step (resume=false)
                shutil.rmtree(path)
            os.replace(tmp, path)  # a checkpoint exists under its final name only when complete
        self._barrier()
        return path

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (final name, `trainer.json` written last), oldest first."""
        folder = self.out / "checkpoints"
        return sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if not p.name.endswith(".tmp")
                      and (p / "trainer.json").is_file()) if folder.is_dir() else []

    def resume(self) -> Path | None:
        """Load the newest checkpoint that reads back; a damaged one is skipped, and the log says so."""
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

        found = self.checkpoints()
        for path in reversed(found):
            try:
                self.load(path)
            except (Exception, CheckpointException) as exc:  # noqa: BLE001 - damage fails in many ways; try the next
                self._log(f"checkpoint {path.name} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); "
                          "falling back to the previous one")
                continue
            self._log(f"resumed from {path.name} (step {self.step})")
            return path
        if found:
            raise CheckpointError(f"none of the {len(found)} checkpoints in {self.out / 'checkpoints'} can be read; "
                                  "move them away to start again, or set resume: false")
        return None

    def load(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageReader
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_state_dict

        state = self._state()
        with _single_process_ok():
            dcp.load(state, storage_reader=HuggingFaceStorageReader(str(path)))
        groups = get_optimizer_state_dict(self.model, self.optimizer)["param_groups"]  # from the recipe
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict={"state": state["optim"], "param_groups": groups})
        self.step = json.loads((path / "trainer.json").read_text())["step"]

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # ---------------------------------------------------------------- loop
    def _all_reduce(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def train_step(self) -> dict[str, float]:
        c = self.config
        mine = self.stream.packs(self.step)
        ce_count, mse_count, tokens = self._all_reduce([sum(p.num_ce_tokens for p in mine),
                                                        sum(p.num_mse_tokens for p in mine),
                                                        sum(p.num_tokens for p in mine)])
        ce_total = mse_total = 0.0
        # bf16 autocast on the run's device: the GPU path; on CPU the same code runs (correct, but slow
        # where the CPU has no native bf16), which is how the tests exercise it.
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.precision == "bf16")
        for pack in mine:
            with autocast:
                sums = pack_losses(self.model, self.vae, pack, timestep_shift=c.timestep_shift,
                                   checkpoint_layers=c.activation_checkpointing,
                                   per_sample=c.packed_attention == "per_sample")
            ce = sums.ce_sum / max(ce_count, 1.0)
            mse = sums.mse_sum / max(mse_count, 1.0)
            (self.world * (c.ce_weight * ce + c.mse_weight * mse)).backward()
            ce_total += float(ce.detach())
            mse_total += float(mse.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], c.optim.grad_clip)
        factor = lr_factor(self.step, c.optim.warmup_steps, c.total_steps, c.optim.schedule, c.optim.min_lr / c.optim.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = c.optim.lr * factor * group.get("lr_scale", 1.0)
        self.optimizer.step()
        # Gradient buffers are kept and zeroed, not freed: reallocating ~a model's worth of memory each
        # step cost page faults (bench/train.py: AdamW step 2.1 -> 1.0 s on the small preset).
        self.optimizer.zero_grad(set_to_none=False)
        with torch.no_grad():
            ema = [self.ema[name] for name, _ in self.trainable]
            weights = [p.detach().float() for _, p in self.trainable]
            torch._foreach_lerp_(ema, weights, 1 - c.optim.ema_decay)  # one fused update, not a Python loop
        ce_total, mse_total = self._all_reduce([ce_total, mse_total])
        grad = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        return {"loss": c.ce_weight * ce_total + c.mse_weight * mse_total, "ce": ce_total, "mse": mse_total,
                "lr": c.optim.lr * factor, "tokens": tokens, "grad_norm": float(grad)}

    def fit(self) -> list[dict[str, float]]:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if c.resume:
            self.resume()
        log_path = self.out / "losses.jsonl"
        history = self._read_history(log_path)
        writer = self._tensorboard()
        start, first = time.perf_counter(), self.step
        while self.step < c.total_steps:
            t0 = time.perf_counter()
            metrics = self.train_step()
            self.step += 1
            metrics.update(step=self.step, seconds=round(time.perf_counter() - t0, 4))
            history.append(metrics)
            if self.rank == 0:
                with log_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(metrics) + "\n")
                if writer is not None:
                    for key in ("loss", "ce", "mse", "lr", "grad_norm"):
                        writer.add_scalar(f"{c.stage}/{key}", metrics[key], self.step)
                if self.step % c.log_every == 0 or self.step == c.total_steps:
                    elapsed = time.perf_counter() - start
                    rate = metrics["tokens"] / max(metrics["seconds"], 1e-9)
                    eta = elapsed / (self.step - first) * (c.total_steps - self.step)
                    self._log(f"[{c.stage}] step {self.step}/{c.total_steps} loss {metrics['loss']:.4f} "
                              f"(ce {metrics['ce']:.4f}, mse {metrics['mse']:.4f}) {rate:,.0f} tok/s ETA {eta:,.0f}s")
            if self.step % c.save_every == 0 or self.step == c.total_steps:
                self.save()
        if writer is not None:
            writer.close()
        if self.rank == 0:
            from unimedvl.train.plots import plot_losses

            plot_losses(history, self.out / "loss_curve.png", title=c.stage)
        return history

    def _read_history(self, path: Path) -> list[dict[str, float]]:
        """Losses logged up to the resumed step (lines of steps past the checkpoint are dropped)."""
        if self.rank != 0 or not path.is_file():
            return []
        kept = []
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:  # a line torn by a kill: its step is logged again when retrained
                self._log(f"{path.name}: line {number} is torn; dropped")
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                kept.append(record)
        kept = [h for h in kept if h["step"] <= self.step]
        atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in kept))
        return kept

    def _tensorboard(self):  # noqa: ANN202
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _log(self, message: str) -> None:
        if self.rank == 0:
            print(message, file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- export
    @property
    def trains_think_mode(self) -> bool:
        """Whether this stage's corpus holds chain-of-thought answers (an export records it, `capabilities.json`):
        think mode is refused for a checkpoint whose last stage never saw one."""
        return any(sample.provenance.get("transform") == "chain_of_thought"
                   for rows in self.index.by_source["understanding"].values() for sample in rows)

    def export(self, folder: str | Path, *, use_ema: bool = True) -> Path:
        """Write the released layout (`checkpoint.save_checkpoint`) with the EMA weights and this stage's image sizes."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        folder = Path(folder)
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if use_ema:
            for name, value in self.ema.items():
                full[name] = value.full_tensor() if hasattr(value, "full_tensor") else value
        if self.rank == 0:
            save_checkpoint(folder, config=self.model_config, weights=full, vae_weights=self.vae.state_dict(),
                            tokenizer=self.tokenizer, image_config=self.config.data.image_config,
                            think_trained=self.trains_think_mode)
        self._barrier()
        return folder

    def close(self) -> None:
        self.stream.close()
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
