"""`TrainingRun`: the bookkeeping of one training run that every task script would repeat otherwise -- its
length in updates and epochs, resuming from a checkpoint, the epoch's batches, progress and log lines,
periodic and per-epoch checkpoints, the SIGTERM stop and the non-finite loss stop. The script keeps the loop
itself (forward, backward, optimizer step, evaluation) in view::

    run = TrainingRun(accelerator, args, len(train_dataloader), global_batch_size=batch, resume_path=path)
    scheduler = build_scheduler(optimizer, args, lrs, run.updates_per_epoch, run.max_steps)
    with run:  # progress bar + SIGTERM hook; both removed however the block ends (also on an exception)
        for epoch in run.epochs():
            model.train()
            for batch in run.batches(train_dataloader, epoch, train_dataset):
                scheduler.step_update(run.completed_steps)
                with accelerator.accumulate(model):
                    ...forward, backward, optimizer.step(), zero_grad()
                if not accelerator.sync_gradients:
                    continue
                loss = accelerator.reduce(loss.detach(), "mean").item()
                run.update_done(loss, current_lr(optimizer), epoch, batch_size)  # may checkpoint, stop or raise
                if run.done:
                    break
            if run.epoch_finished and ...: run.log_eval(evaluate(...), epoch)
            run.epoch_done(epoch)                                                 # --checkpointing_steps epoch
    train_time = run.train_time
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from .checkpoint import load_checkpoint, resume_position, save_checkpoint
from .loop import StopOnSignal, TrainingProgress, check_finite_loss, epoch_batches


class TrainingRun:
    """One run's progress in optimizer updates, from `args` (the shared flags: gradient_accumulation_steps,
    max_train_steps / num_train_epochs, checkpointing_steps, checkpoints_total_limit, logging_steps,
    with_tracking, output_dir, seed).

    `batches_per_epoch` is `len(prepared_train_dataloader)`. With `resume_path`, the checkpoint is loaded
    (`accelerator.load_state`: call after `accelerator.prepare`) and the run continues where it stopped;
    `self.state` is its training_state.json (empty when starting afresh).
    """

    def __init__(
        self, accelerator, args, batches_per_epoch: int, global_batch_size: int, resume_path: str | Path | None = None
    ):
        if batches_per_epoch == 0:
            raise ValueError("The training set is smaller than one global batch; lower the batch size.")
        self.accelerator, self.args, self.global_batch_size = accelerator, args, global_batch_size
        self.updates_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
        self.max_steps = args.max_train_steps
        if self.max_steps is None:
            self.max_steps = max(1, int(round(args.num_train_epochs * self.updates_per_epoch)))
        self.num_epochs = math.ceil(self.max_steps / self.updates_per_epoch)
        self.resume_path = Path(resume_path) if resume_path else None
        self.state = load_checkpoint(accelerator, resume_path) if resume_path else {}
        self.completed_steps = int(self.state.get("completed_steps", 0))
        self.history = self.state.get("history", [])
        self.eval_history = self.state.get("eval_history", [])
        self.start_epoch, self.skip_batches = resume_position(
            self.completed_steps, self.updates_per_epoch, args.gradient_accumulation_steps
        )
        self.progress: TrainingProgress | None = None
        self.stop: StopOnSignal | None = None
        self.train_time = 0.0  # seconds between start() and finish()

    @property
    def done(self) -> bool:
        return self.completed_steps >= self.max_steps

    @property
    def epoch_finished(self) -> bool:
        """True after the last update of an epoch (or of the run)."""
        return self.completed_steps % self.updates_per_epoch == 0 or self.done

    def start(self) -> None:
        """Open the progress bar and install the SIGTERM hook (just before the loop)."""
        args = self.args
        self.progress = TrainingProgress(
            self.accelerator,
            self.max_steps,
            self.completed_steps,
            args.logging_steps,
            args.with_tracking,
            self.history,
        )
        self.stop = StopOnSignal()

    def __enter__(self) -> TrainingRun:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        # an exception in the loop (a data error, a non-finite loss, Ctrl-C) must not leave our SIGTERM hook
        # installed in the calling process (a notebook, a test, a sweep calling main() again)
        self.finish()

    def epochs(self) -> Iterator[int]:
        """The epochs still to run (none once `done`)."""
        for epoch in range(self.start_epoch, self.num_epochs):
            if self.done:
                return
            yield epoch

    def batches(self, dataloader, epoch: int, dataset=None) -> Iterator:
        """The epoch's batches (`epoch_batches`: sampler epoch, per-sample and per-step seeds), skipping those
        a resumed run has already trained on."""
        skip = self.skip_batches if epoch == self.start_epoch else 0
        for _, batch in epoch_batches(self.accelerator, dataloader, epoch, self.args.seed, skip, dataset):
            yield batch

    def checkpoint(self, name: str, epoch: int) -> Path:
        """Save a resumable checkpoint `output_dir/name` (atomic; rotated to --checkpoints_total_limit)."""
        state = dict(
            completed_steps=self.completed_steps,
            epoch=epoch,
            global_batch_size=self.global_batch_size,
            world_size=self.accelerator.num_processes,
            history=self.history,
            eval_history=self.eval_history,
        )
        return save_checkpoint(self.accelerator, self.args.output_dir, name, state, self.args.checkpoints_total_limit)

    def update_done(self, loss: float, lr: float, epoch: int, images: int) -> None:
        """After an optimizer update with the process-averaged `loss`: count it, stop on a non-finite loss,
        record and log it, save `step_N` every --checkpointing_steps, and on SIGTERM save and exit (143)."""
        self.completed_steps += 1
        check_finite_loss(loss, self.completed_steps, epoch)
        self.progress.update(self.completed_steps, loss, lr, epoch, images)
        saved = None
        every = self.args.checkpointing_steps
        if isinstance(every, int) and self.completed_steps % every == 0:
            saved = self.checkpoint(f"step_{self.completed_steps}", epoch)
        if self.stop.requested(self.accelerator):
            self.stop.exit(self.accelerator, saved or self.checkpoint(f"step_{self.completed_steps}", epoch))

    def epoch_done(self, epoch: int) -> None:
        """At the end of an epoch: `epoch_E` checkpoint with --checkpointing_steps epoch."""
        if self.args.checkpointing_steps == "epoch" and self.epoch_finished:
            self.checkpoint(f"epoch_{epoch}", epoch + 1)

    def log_eval(self, record: dict) -> None:
        """Keep an evaluation record (saved in checkpoints and train_log.json) and log its `eval_*` values."""
        self.eval_history.append(record)
        self.progress.log_eval(record, self.completed_steps)

    def finish(self) -> float:
        """Close the bar and remove the SIGTERM hook (once; later calls do nothing); returns the training time
        in seconds, also kept as `train_time`."""
        if self.stop is not None:
            self.stop.close()
            self.stop = None
            self.train_time = self.progress.close()
        return self.train_time
