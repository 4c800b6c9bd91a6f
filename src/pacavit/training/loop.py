"""Pieces of the training loop every task script shares: the epoch's batches (exact resume and per-step
randomness), a SIGTERM hook, non-finite loss detection, progress bar / log lines / tracking, result files.

Exact resume rests on three things: Accelerate's seedable sampler (the shuffling order depends on seed and
epoch only, and `load_state` restores it), `accelerator.skip_first_batches` (continue mid-epoch), and seeds
derived from positions rather than from the history of the global generators: per-sample augmentation seeds
come from `pacavit.data.common.sample_seed(seed, epoch, index)` inside the datasets (given `set_epoch`), and
`epoch_batches` reseeds the global generators before every batch from (seed, epoch, batch, rank), so
drop-path, mixup and similar per-step randomness replay identically after a resume whatever the loader
pre-fetched.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..data.common import sample_seed, seed_everything_from
from ..extras import require

# Plain logging, gated on `accelerator.is_main_process` where every process would repeat a line: accelerate's
# get_logger raises unless an accelerate state exists, which unit tests and tools do not always have.
logger = logging.getLogger(__name__)

STEP_SEED_SALT = 1_000_003  # keeps per-step seeds apart from the per-sample seeds (seed, epoch, index)


def epoch_batches(
    accelerator, dataloader, epoch: int, seed: int, skip_batches: int = 0, dataset=None
) -> Iterator[tuple[int, dict]]:
    """Yield `(batch_index, batch)` for one epoch of a prepared dataloader.

    Sets the epoch on `dataset` (per-sample augmentation seeds) and on the sampler, skips the first
    `skip_batches` batches (resume mid-epoch, via `accelerator.skip_first_batches`), and before each batch
    seeds Python/NumPy/torch from (seed, epoch, batch index, process index).
    """
    if dataset is not None and hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    active = accelerator.skip_first_batches(dataloader, skip_batches) if skip_batches else dataloader
    active.set_epoch(epoch)
    batch_index = skip_batches
    for batch in active:
        seed_everything_from(sample_seed(seed, STEP_SEED_SALT, epoch, batch_index, accelerator.process_index))
        yield batch_index, batch
        batch_index += 1


# --------------------------------------------------------------------------------------------
# Stopping: SIGTERM, non-finite loss
# --------------------------------------------------------------------------------------------
EXIT_INTERRUPTED = 128 + signal.SIGTERM  # the conventional status of a SIGTERM'd process: "not finished"


class StopOnSignal:
    """Remembers a SIGTERM (or the given signals) so the loop can save a resumable checkpoint and exit.

    Schedulers (Slurm, Kubernetes, `timeout`) send SIGTERM some time before killing a job. Use::

        stop = StopOnSignal()
        ...  # after each optimizer update:
        if stop.requested(accelerator):
            save_checkpoint(...)
            stop.exit(accelerator, path)   # logs, ends tracking, raises SystemExit(143)

    `requested` agrees on every process (`accelerator.set_trigger` / `check_trigger`: one all-reduce per call
    in multi-process runs), so all ranks save the same step. Handlers are restored by `close()`.
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self.received: int | None = None
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker thread): no hook
                pass

    def _handle(self, signum, frame) -> None:
        self.received = signum
        logger.warning(f"Received {signal.Signals(signum).name}: saving a checkpoint after this update.")

    def requested(self, accelerator) -> bool:
        # Accelerate's trigger: set on the processes that got the signal, true on all once any has it
        if self.received is not None:
            accelerator.set_trigger()
        return accelerator.check_trigger()

    def exit(self, accelerator, checkpoint: Path) -> None:
        if accelerator.is_main_process:
            logger.warning(
                f"Stopped on request; resumable checkpoint {checkpoint}. Continue with "
                "--resume_from_checkpoint latest."
            )
        self.close()
        accelerator.end_training()
        raise SystemExit(EXIT_INTERRUPTED)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def backward_and_step(accelerator, model, loss, optimizer, clip_grad: float | None = None, clip_mode: str = "norm"):
    """The optimizer half of one micro-batch, inside `with accelerator.accumulate(model):`: backward, gradient
    clipping (by norm or value) on the micro-batch that completes an update, step and zero_grad. Under
    accumulation Accelerate's wrapped optimizer skips step/zero_grad until the gradients are synchronised."""
    accelerator.backward(loss)
    if clip_grad and accelerator.sync_gradients:
        if clip_mode == "norm":
            accelerator.clip_grad_norm_(model.parameters(), clip_grad)
        else:
            accelerator.clip_grad_value_(model.parameters(), clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; training stops instead of updating the weights further."""


def check_finite_loss(loss: float, step: int, epoch: int | None = None) -> None:
    """Raise `NonFiniteLossError` naming the update when `loss` (the process-averaged loss of update `step`,
    identical on every rank) is not finite."""
    if not math.isfinite(loss):
        where = f"update {step}" + (f" (epoch {epoch})" if epoch is not None else "")
        raise NonFiniteLossError(
            f"Non-finite training loss ({loss}) at {where}; stopping before training on it. Lower the "
            "learning rate, enable --clip_grad, use bf16 instead of fp16, or resume from an earlier "
            "checkpoint with --resume_from_checkpoint."
        )


# --------------------------------------------------------------------------------------------
# Progress, log lines, tracking
# --------------------------------------------------------------------------------------------
class TrainingProgress:
    """A tqdm bar over optimizer updates, a log line every `logging_steps` updates (windowed mean loss, lr,
    images/s), tracker logging, and the per-update `history` saved in train_log.json and checkpoints."""

    def __init__(
        self,
        accelerator,
        total_steps: int,
        completed_steps: int = 0,
        logging_steps: int = 10,
        with_tracking: bool = False,
        history: list | None = None,
    ):
        tqdm = require("tqdm.auto", extra="train").tqdm
        self.accelerator, self.total_steps = accelerator, total_steps
        self.logging_steps, self.with_tracking = logging_steps, with_tracking
        self.history = history if history is not None else []
        self.bar = tqdm(
            total=total_steps,
            initial=completed_steps,
            disable=not accelerator.is_local_main_process,
            desc="train",
            dynamic_ncols=True,
        )
        self.start = time.time()
        self._window_loss, self._window_images, self._window_start = 0.0, 0, time.time()

    def update(self, step: int, loss: float, lr: float, epoch: int, images: int) -> None:
        """Record update `step` (1-based count of updates done) with its loss and lr."""
        self.history.append({"step": step, "loss": loss, "lr": lr})
        self._window_loss += loss
        self._window_images += images
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if step % self.logging_steps == 0 or step == self.total_steps:
            elapsed = time.time() - self._window_start
            n = step % self.logging_steps or self.logging_steps
            record = {
                "train_loss": self._window_loss / n,
                "lr": lr,
                "epoch": epoch,
                "images_per_s": self._window_images / max(elapsed, 1e-9),
            }
            if self.accelerator.is_main_process:
                logger.info(
                    f"step {step}/{self.total_steps}: loss {record['train_loss']:.4f} lr {lr:.3e} "
                    f"{record['images_per_s']:.0f} img/s"
                )
            if self.with_tracking:
                self.accelerator.log(record, step=step)
            self._window_loss, self._window_images, self._window_start = 0.0, 0, time.time()

    def log_eval(self, record: dict, step: int) -> None:
        """Log the `eval_*` entries of an evaluation record (and send them to the trackers)."""
        values = {k: v for k, v in record.items() if k.startswith("eval_")}
        if self.accelerator.is_main_process:
            logger.info(f"epoch {record.get('epoch')}: " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if self.with_tracking:
            self.accelerator.log(values, step=step)

    def close(self) -> float:
        """Close the bar; returns the training time in seconds."""
        self.bar.close()
        return time.time() - self.start


def init_tracking(accelerator, args, project_name: str, **extra) -> dict:
    """`accelerator.init_trackers` (TensorBoard by default, under --output_dir) with every scalar flag plus
    `extra` as hyper-parameters, when --with_tracking. Returns the hyper-parameters."""
    hparams = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
    hparams.update(extra)
    if args.with_tracking:
        accelerator.init_trackers(project_name, config=hparams)
    return hparams


# --------------------------------------------------------------------------------------------
# Result files
# --------------------------------------------------------------------------------------------
def json_default(value):
    """`json.dumps(default=...)` for paths, tensors and anything else printable."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def write_json(path: str | Path, data, indent: int = 2) -> None:
    Path(path).write_text(json.dumps(data, indent=indent, default=json_default))


def write_run_files(
    output_dir: str | Path, results: dict, history: list, eval_history: list, world_size: int, global_batch_size: int
) -> None:
    """all_results.json (the run's final numbers) and train_log.json (per-update loss/lr, evaluations)."""
    out = Path(output_dir)
    write_json(out / "all_results.json", results)
    write_json(
        out / "train_log.json",
        dict(world_size=world_size, global_batch_size=global_batch_size, history=history, eval_history=eval_history),
        indent=1,
    )


def process_ranks(accelerator) -> list[int]:
    """The ranks that took part (gathered from every process): a cheap check that DDP really ran."""
    ranks = accelerator.gather(torch.tensor([accelerator.process_index], device=accelerator.device))
    return sorted(int(r) for r in ranks.cpu())
