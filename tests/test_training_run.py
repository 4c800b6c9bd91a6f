"""pacavit.training.TrainingRun: length, checkpoints, exact resume position, NaN and SIGTERM stops."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
import torch

from pacavit.training import NonFiniteLossError, TrainingRun, find_latest_checkpoint, list_checkpoints


@pytest.fixture()
def accelerator():
    """A factory: each simulated run gets a fresh Accelerator (as a new process would)."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState, GradientState

    def make():
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        return Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))

    yield make
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def make_args(tmp_path, **overrides):
    values = dict(
        gradient_accumulation_steps=1,
        max_train_steps=None,
        num_train_epochs=2,
        checkpointing_steps=3,
        checkpoints_total_limit=2,
        logging_steps=100,
        with_tracking=False,
        output_dir=str(tmp_path),
        seed=3,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def train(make_accelerator, args, resume_path=None, stop_after=None, loss_at=None):
    """A linear model over 20 samples in batches of 4 (5 updates per epoch); returns the run and the batches
    it trained on."""
    accelerator = make_accelerator()
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.arange(20.0).unsqueeze(1))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    run = TrainingRun(accelerator, args, len(loader), global_batch_size=4, resume_path=resume_path)
    run.start()
    seen = []
    try:
        for epoch in run.epochs():
            for (x,) in run.batches(loader, epoch):
                loss = model(x).pow(2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                seen.append(x.flatten().tolist())
                value = loss_at(run.completed_steps + 1) if loss_at else float(loss)
                run.update_done(value, 0.1, epoch, 4)
                if stop_after is not None and run.completed_steps == stop_after:
                    return run, seen
                if run.done:
                    break
            run.epoch_done(epoch)
    finally:
        run.finish()
    return run, seen


def test_length_checkpoints_and_exact_resume_position(accelerator, tmp_path):
    args = make_args(tmp_path / "full")
    full, full_batches = train(accelerator, args)
    assert (full.updates_per_epoch, full.max_steps, full.num_epochs, full.completed_steps) == (5, 10, 2, 10)
    assert [p.name for _, p in list_checkpoints(args.output_dir)] == ["step_6", "step_9"]  # limit 2
    assert [h["step"] for h in full.history] == list(range(1, 11))

    part_args = make_args(tmp_path / "part")
    train(accelerator, part_args, stop_after=7)  # a "crash" after update 7: the newest checkpoint is step_6
    latest = find_latest_checkpoint(part_args.output_dir)
    assert latest.name == "step_6"
    resumed, resumed_batches = train(accelerator, part_args, resume_path=latest)
    assert (resumed.start_epoch, resumed.skip_batches) == (1, 1)
    assert resumed_batches == full_batches[6:]  # the same samples, in the same order
    assert [h["step"] for h in resumed.history] == list(range(1, 11))


def test_non_finite_loss_raises_naming_the_update(accelerator, tmp_path):
    with pytest.raises(NonFiniteLossError, match="at update 4 \\(epoch 0\\)"):
        train(accelerator, make_args(tmp_path), loss_at=lambda step: float("nan") if step == 4 else 1.0)
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["step_3"]  # nothing saved from the NaN update


def test_sigterm_saves_the_current_update_and_exits(accelerator, tmp_path):
    args = make_args(tmp_path, checkpointing_steps=None)

    def loss_at(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during update 2
        return 1.0

    with pytest.raises(SystemExit) as stopped:
        train(accelerator, args, loss_at=loss_at)
    assert stopped.value.code == 143
    assert find_latest_checkpoint(tmp_path).name == "step_2"
