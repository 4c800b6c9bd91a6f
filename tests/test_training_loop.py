"""pacavit.training.loop: non-finite loss stop, SIGTERM hook, resumable epoch iteration, progress records."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
import torch

from pacavit.training import NonFiniteLossError, StopOnSignal, TrainingProgress, check_finite_loss, epoch_batches


def test_non_finite_loss_stops_naming_the_update():
    check_finite_loss(0.5, 3)
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(NonFiniteLossError, match=r"\((nan|inf|-inf)\) at update 17 \(epoch 2\)"):
            check_finite_loss(value, 17, epoch=2)


def test_sigterm_is_remembered_until_the_loop_checks():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    previous = signal.getsignal(signal.SIGTERM)
    stop = StopOnSignal()
    one_process = Accelerator(cpu=True)
    try:
        assert not stop.requested(one_process)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs; the process keeps going
        assert stop.requested(one_process) and stop.received == signal.SIGTERM
        ended = []
        with pytest.raises(SystemExit) as exit_info:
            stop.exit(SimpleNamespace(is_main_process=True, end_training=lambda: ended.append(True)), "step_5")
        assert exit_info.value.code == 143 and ended == [True]
    finally:
        stop.close()
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_epoch_batches_resume_mid_epoch_replays_batches_and_step_seeds(fresh_accelerate_state):
    from accelerate import Accelerator, DataLoaderConfiguration

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    data = torch.utils.data.TensorDataset(torch.arange(40))
    loader = accelerator.prepare(torch.utils.data.DataLoader(data, batch_size=4, shuffle=True))

    def run(epoch, skip):
        return [
            (i, b[0].tolist(), torch.rand(2).tolist()) for i, b in epoch_batches(accelerator, loader, epoch, 7, skip)
        ]

    full, resumed = run(1, 0), run(1, 6)
    assert [i for i, *_ in full] == list(range(10)) and resumed == full[6:]
    assert run(0, 0) != full  # another epoch: another order and other step seeds


def test_progress_records_history_and_logs_every_n_updates(caplog):
    accelerator = SimpleNamespace(is_local_main_process=False, is_main_process=True, log=None)
    progress = TrainingProgress(accelerator, total_steps=5, logging_steps=2)
    with caplog.at_level("INFO", logger="pacavit.training.loop"):
        for step in range(1, 6):
            progress.update(step, loss=float(step), lr=0.1, epoch=0, images=8)
    assert [h["step"] for h in progress.history] == [1, 2, 3, 4, 5]
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(":")[0] for line in lines] == ["step 2/5", "step 4/5", "step 5/5"]
    assert "loss 1.5000" in lines[0] and "loss 5.0000" in lines[2]  # the mean over the window
    assert progress.close() >= 0
