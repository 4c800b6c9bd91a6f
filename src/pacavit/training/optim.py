"""Learning rates, optimizer parameter groups and schedules, counted in optimizer updates.

- `scale_learning_rates`: the timm/PaCa rule lr = lr_base x global_batch / lr_base_size (linear or sqrt);
- `build_param_groups`: no weight decay on 1-D params (norms, biases, layer scales) and position embeddings
  (timm's `param_groups_weight_decay`), layer-wise lr decay (timm's `param_groups_layer_decay`, driven by the
  model's `group_matcher()`), and per-module lr multipliers by parameter-name pattern (e.g. a segmentation
  decode head at x10). Every lr factor is a group's `lr_scale`, which timm's schedulers multiply in;
- `create_update_scheduler`: timm's `create_scheduler_v2` in units of optimizer updates, covering cosine
  (classification), poly with linear warm-up (segmentation) and multi-step with linear warm-up (detection).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence

import torch

from ..extras import require

# Names (fnmatch patterns) never decayed in addition to 1-D parameters (norm weights, biases, layer scales).
NO_WEIGHT_DECAY = ("*position_embeddings*",)


def global_batch_size(per_device_batch_size: int, num_processes: int, gradient_accumulation_steps: int) -> int:
    """Images per optimizer update, over all processes and accumulation steps."""
    return per_device_batch_size * num_processes * gradient_accumulation_steps


def scale_learning_rates(
    lr_base: float,
    min_lr_base: float,
    warmup_lr_base: float,
    batch_size: int,
    lr_base_size: int = 512,
    lr_base_scale: str = "linear",
    learning_rate: float | None = None,
) -> dict:
    """Peak, minimum and warmup-start learning rates for a global `batch_size`.

    timm/PaCa rule: `lr = lr_base * batch_size / lr_base_size` (`sqrt` of that ratio for `"sqrt"`), and
    min/warmup lr scaled by the same factor. An absolute `learning_rate` replaces the peak lr; min/warmup keep
    their ratio to it. Returns `dict(lr, min_lr, warmup_lr, factor)`.
    """
    if learning_rate is not None:
        factor = learning_rate / lr_base
    else:
        ratio = batch_size / lr_base_size
        if lr_base_scale == "linear":
            factor = ratio
        elif lr_base_scale == "sqrt":
            factor = math.sqrt(ratio)
        else:
            raise ValueError(f"Unknown lr_base_scale {lr_base_scale!r}; use 'linear' or 'sqrt'.")
    return dict(lr=lr_base * factor, min_lr=min_lr_base * factor, warmup_lr=warmup_lr_base * factor, factor=factor)


def learning_rates_from_args(args, batch_size: int) -> dict:
    """`scale_learning_rates` from the shared optimisation flags."""
    return scale_learning_rates(
        args.lr_base,
        args.min_lr_base,
        args.warmup_lr_base,
        batch_size,
        args.lr_base_size,
        args.lr_base_scale,
        args.learning_rate,
    )


def build_param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
    no_weight_decay_list: Sequence[str] = NO_WEIGHT_DECAY,
) -> list[dict]:
    """AdamW parameter groups.

    - no decay on 1-D params (norms, biases) and names matching `no_weight_decay_list` (fnmatch patterns);
    - with `layer_decay`: timm's `param_groups_layer_decay` (BEiT-style `lr_scale` per group, from the
      model's `group_matcher()`);
    - `lr_multipliers`: `{fnmatch pattern of parameter names: factor}`; the first matching pattern multiplies
      that parameter's `lr_scale` (a group is split where its parameters get different factors). A pattern
      that matches no parameter is an error (a typo would silently train at the wrong lr).
    """
    timm_optim = require("timm.optim", extra="timm", purpose="optimizer parameter groups")
    if layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"--layer_decay needs a model with `group_matcher()`; {type(model).__name__} has none.")
        groups = timm_optim.param_groups_layer_decay(
            model,  # PaCaViTPreTrainedModel.group_matcher: stem, one group per block, head
            weight_decay=weight_decay,
            no_weight_decay_list=no_weight_decay_list,
            layer_decay=layer_decay,
        )
    else:
        groups = timm_optim.param_groups_weight_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay_list
        )
    if not lr_multipliers:
        return groups
    return _apply_lr_multipliers(model, groups, lr_multipliers)


def _apply_lr_multipliers(model, groups: list[dict], lr_multipliers: Mapping[str, float]) -> list[dict]:
    # timm's group helpers have no per-name lr factor (mmcv's `paramwise_cfg.custom_keys` has, which the
    # original segmentation recipe uses); folding it into `lr_scale` keeps timm's schedulers applying it.
    name_of = {id(p): name for name, p in model.named_parameters()}
    used = set()

    def factor(param) -> float:
        name = name_of[id(param)]
        for pattern, value in lr_multipliers.items():
            if fnmatch.fnmatchcase(name, pattern):
                used.add(pattern)
                return float(value)
        return 1.0

    out = []
    for group in groups:
        by_factor: dict[float, list] = {}
        for param in group["params"]:
            by_factor.setdefault(factor(param), []).append(param)
        for value, params in by_factor.items():
            split = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            split["params"] = params
            split["lr_scale"] = group.get("lr_scale", 1.0) * value
            out.append(split)
    unused = [pattern for pattern in lr_multipliers if pattern not in used]
    if unused:
        raise ValueError(f"lr multiplier pattern(s) {unused} match no parameter of {type(model).__name__}.")
    return out


def build_optimizer(
    model: torch.nn.Module, args, lr: float, lr_multipliers: Mapping[str, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW over `build_param_groups`, from the shared flags (weight_decay, layer_decay, opt_betas,
    opt_eps)."""
    groups = build_param_groups(model, args.weight_decay, args.layer_decay, lr_multipliers)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(args.opt_betas), eps=args.opt_eps)


def create_update_scheduler(
    optimizer: torch.optim.Optimizer,
    sched: str,
    total_updates: int,
    min_lr: float,
    warmup_lr: float,
    warmup_updates: int = 0,
    cooldown_updates: int = 0,
    milestones: Sequence[int] | None = None,
    decay_rate: float = 0.1,
    power: float = 1.0,
):
    """A timm scheduler whose unit is one optimizer update: call `scheduler.step_update(n)` before update n+1
    (n = updates done so far). The peak lr is each group's lr when this is called, times its `lr_scale`.

    - `"cosine"` (classification): linear warm-up from `warmup_lr`, cosine to `min_lr` at `total_updates -
      cooldown_updates`, then `min_lr`;
    - `"poly"` (segmentation; `power` 1.0 = linear decay): linear warm-up from `warmup_lr` over
      `warmup_updates`, then `min_lr + (peak - min_lr) * (1 - n / total_updates) ** power`. (mmseg
      multiplies its warm-up factor into the poly value instead of ramping to the peak; the two differ by
      less than warmup/total.)
    - `"multistep"` (detection): linear warm-up, then the peak lr multiplied by `decay_rate` from update
      `m` on, for each `m` in `milestones` (updates; default 1/2 and 3/4 of the run);
    - `"step"`: x `decay_rate` every `total_updates // 3`; `"tanh"`, `"constant"`, `"wsd"`: timm's.
    """
    timm_scheduler = require("timm.scheduler", extra="timm", purpose="learning-rate schedules")
    if milestones is None:
        milestones = [total_updates // 2, total_updates * 3 // 4]
    scheduler, _ = timm_scheduler.create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=max(1, total_updates - cooldown_updates),
        decay_epochs=max(1, total_updates // 3),
        # timm's MultiStepLRScheduler decays at t >= milestone - 1 (it keeps a t + 1 offset for
        # compatibility); +1 makes update `m` the first one at the decayed lr, as in torch's MultiStepLR.
        decay_milestones=[int(m) + 1 for m in milestones],
        decay_rate=power if sched == "poly" else decay_rate,  # timm passes decay_rate as poly's power
        cooldown_epochs=cooldown_updates,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        warmup_epochs=warmup_updates,
        step_on_epochs=False,
        updates_per_epoch=1,  # the schedule's unit is one optimizer update
    )
    return scheduler


def build_scheduler(optimizer, args, lrs: dict, updates_per_epoch: int, total_updates: int):
    """`create_update_scheduler` from the shared flags: warm-up from --num_warmup_steps or --warmup_epochs,
    cool-down from --cooldown_epochs, multistep milestones from --decay_milestones (epochs)."""
    warmup = args.num_warmup_steps
    if warmup is None:
        warmup = int(round(args.warmup_epochs * updates_per_epoch))
    milestones = getattr(args, "decay_milestones", None)
    if milestones is not None:
        milestones = [int(round(epoch * updates_per_epoch)) for epoch in milestones]
    return create_update_scheduler(
        optimizer,
        args.lr_scheduler_type,
        total_updates,
        min_lr=lrs["min_lr"],
        warmup_lr=lrs["warmup_lr"],
        warmup_updates=warmup,
        cooldown_updates=int(round(args.cooldown_epochs * updates_per_epoch)),
        milestones=milestones,
        decay_rate=args.decay_rate,
        power=args.poly_power,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's lr now (group 0's lr without its `lr_scale`)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)
