"""pacavit.training.optim: lr scaling with the global batch, parameter groups, and the three schedules."""

from __future__ import annotations

import math

import pytest
import torch

from pacavit.training import (
    build_param_groups,
    create_update_scheduler,
    current_lr,
    global_batch_size,
    scale_learning_rates,
)

from helpers import tiny_config


@pytest.fixture(scope="module")
def model():
    from pacavit import PaCaViTForImageClassification

    # conftest's tiny widths; depths 1+1+2+1: stem, 5 blocks and the head are 7 layer-decay groups
    return PaCaViTForImageClassification(tiny_config(num_labels=10, layer_scale_init_value=1e-5))


def test_lr_scales_with_the_global_batch():
    assert global_batch_size(32, 4, 2) == 256
    lrs = scale_learning_rates(1e-3, 1e-5, 1e-6, 256, lr_base_size=512)
    assert (lrs["lr"], lrs["min_lr"], lrs["warmup_lr"], lrs["factor"]) == pytest.approx((5e-4, 5e-6, 5e-7, 0.5))
    assert scale_learning_rates(1e-3, 0, 0, 128, 512, "sqrt")["lr"] == pytest.approx(5e-4)
    assert scale_learning_rates(1e-3, 1e-5, 0, 999, learning_rate=4e-3)["min_lr"] == pytest.approx(4e-5)
    with pytest.raises(ValueError, match="lr_base_scale"):
        scale_learning_rates(1e-3, 0, 0, 128, 512, "cubic")


def groups_by_param(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g for g in groups for p in g["params"]}


def test_no_decay_on_1d_params_and_position_embeddings(model):
    of = groups_by_param(model, build_param_groups(model, weight_decay=0.05))
    assert len(of) == sum(1 for _ in model.parameters())
    for name, p in model.named_parameters():
        expected = 0.0 if p.ndim <= 1 or "position_embeddings" in name else 0.05
        assert of[name]["weight_decay"] == expected, name


def test_layer_decay_and_lr_multipliers_compose(model):
    plain = groups_by_param(model, build_param_groups(model, 0.05, layer_decay=0.5))
    multipliers = {"classifier.*": 10.0, "pacavit.stages.3.*": 3.0, "pacavit.stages.*.clustering*": 2.0}
    scaled = groups_by_param(model, build_param_groups(model, 0.05, layer_decay=0.5, lr_multipliers=multipliers))
    assert plain.keys() == scaled.keys()
    for name in plain:
        if name.startswith("classifier."):
            factor = 10.0
        elif name.startswith("pacavit.stages.3."):
            factor = 3.0  # the first matching pattern wins
        elif name.startswith("pacavit.stages.") and ".clustering" in name:
            factor = 2.0
        else:
            factor = 1.0
        assert scaled[name]["lr_scale"] == pytest.approx(plain[name]["lr_scale"] * factor), name
        assert scaled[name]["weight_decay"] == plain[name]["weight_decay"], name
    assert plain["classifier.weight"]["lr_scale"] == 1.0
    assert plain["pacavit.embeddings.projection.0.weight"]["lr_scale"] == pytest.approx(0.5**6)
    # multipliers without layer decay: the lr_scale is the multiplier itself
    alone = groups_by_param(model, build_param_groups(model, 0.05, lr_multipliers={"classifier.*": 10.0}))
    assert alone["classifier.weight"]["lr_scale"] == 10.0
    assert alone["pacavit.embeddings.projection.0.weight"]["lr_scale"] == 1.0
    with pytest.raises(ValueError, match="decode_head"):
        build_param_groups(model, 0.05, lr_multipliers={"decode_head.*": 10.0})


def schedule(sched, total, lr=1.0, param_groups=None, **kwargs):
    params = param_groups or [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
    optimizer = torch.optim.AdamW(params, lr=lr)
    scheduler = create_update_scheduler(optimizer, sched, total, **kwargs)

    def lr_at(update):
        scheduler.step_update(update)
        return current_lr(optimizer)

    return lr_at, optimizer


def test_cosine_schedule_values():
    lr_at, _ = schedule("cosine", 1000, lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_updates=100)
    assert lr_at(0) == pytest.approx(1e-6)
    assert lr_at(50) == pytest.approx(1e-6 + 50 * (1e-3 - 1e-6) / 100)
    assert lr_at(500) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(999) == pytest.approx(1e-5, rel=1e-3)


def test_poly_schedule_with_linear_warmup_per_iteration():
    # segmentation (mmseg 160k schedule, shortened): power 1, min lr 0, 1500-iteration warm-up from 1e-6 x lr
    lr, total = 6e-5, 16000
    lr_at, _ = schedule("poly", total, lr=lr, min_lr=0.0, warmup_lr=lr * 1e-6, warmup_updates=1500, power=1.0)
    assert lr_at(0) == pytest.approx(lr * 1e-6)
    assert lr_at(750) == pytest.approx(lr * 1e-6 + 750 * (lr - lr * 1e-6) / 1500)
    assert lr_at(1500) == pytest.approx(lr * (1 - 1500 / total))
    assert lr_at(8000) == pytest.approx(lr * 0.5)
    assert lr_at(total - 1) == pytest.approx(lr / total)
    lr_at, _ = schedule("poly", 100, lr=1.0, min_lr=0.1, warmup_lr=0.0, power=0.9)
    assert lr_at(40) == pytest.approx(0.1 + 0.9 * 0.6**0.9)


def test_multistep_schedule_with_warmup_decays_at_epochs_8_and_11():
    # detection (mmdet 1x): 12 epochs, x0.1 at epochs 8 and 11, linear warm-up over 500 iterations from 0.001
    upe, lr = 100, 2e-4
    lr_at, _ = schedule(
        "multistep",
        12 * upe,
        lr=lr,
        min_lr=0.0,
        warmup_lr=lr * 1e-3,
        warmup_updates=500,
        milestones=[8 * upe, 11 * upe],
        decay_rate=0.1,
    )
    assert lr_at(0) == pytest.approx(lr * 1e-3)
    assert lr_at(250) == pytest.approx(lr * 1e-3 + 250 * (lr - lr * 1e-3) / 500)
    assert lr_at(500) == pytest.approx(lr)
    assert lr_at(8 * upe - 1) == pytest.approx(lr)  # the last update of epoch index 7
    assert lr_at(8 * upe) == pytest.approx(lr * 0.1)  # the first update of epoch index 8
    assert lr_at(11 * upe - 1) == pytest.approx(lr * 0.1)
    assert lr_at(11 * upe) == pytest.approx(lr * 0.01)


def test_schedulers_apply_each_groups_lr_scale(model):
    groups = build_param_groups(model, 0.05, layer_decay=0.5, lr_multipliers={"classifier.*": 10.0})
    lr_at, optimizer = schedule("poly", 100, lr=1e-3, param_groups=groups, min_lr=0.0, warmup_lr=0.0)
    base = lr_at(30)
    assert base == pytest.approx(1e-3 * 0.7)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(base * group["lr_scale"])
    assert max(g["lr_scale"] for g in optimizer.param_groups) == 10.0
