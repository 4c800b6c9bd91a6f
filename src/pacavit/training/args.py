"""Command-line arguments shared by the task scripts, and recipe precedence (explicit flag > --recipe >
defaults).

A task script declares its recipe table and base defaults, builds a `RecipeArgumentParser`, adds its own
task flags plus the shared groups below, and calls `parse_args`. Every flag named in `base_defaults` must be
declared with `default=None`: `None` means "not given", and is then filled from the recipe, then the base
defaults. `--help` shows, for those flags, the value each recipe gives them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

_NO_HELP = "\x00"  # argparse skips help expansion for flags without a help text; this makes it show defaults


class _RecipeHelpFormatter(argparse.HelpFormatter):
    """Shows real defaults, and for recipe-controlled flags the value each recipe gives them."""

    recipes: Mapping[str, Mapping] = {}
    base_defaults: Mapping = {}

    def _get_help_string(self, action):
        text = "" if action.help == _NO_HELP else (action.help or "")
        if action.dest in self.base_defaults:
            values = ", ".join(
                f"{name}: {recipe.get(action.dest, self.base_defaults[action.dest])}"
                for name, recipe in self.recipes.items()
            )
            return f"{text} [recipe defaults: {values}]".strip()
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: {action.default})".strip()


class RecipeArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` with a `--recipe` flag whose table fills every flag left unset.

    `recipes` maps a recipe name to the values that differ from `base_defaults`; `base_defaults` maps every
    recipe-controlled flag (its `dest`) to its value when neither the command line nor the recipe sets it.
    """

    def __init__(self, *, recipes: Mapping[str, Mapping], base_defaults: Mapping, default_recipe: str, **kwargs):
        unknown = {name: sorted(set(recipe) - set(base_defaults)) for name, recipe in recipes.items()}
        unknown = {name: keys for name, keys in unknown.items() if keys}
        if unknown:  # a typo in a recipe table would otherwise be silently ignored
            raise ValueError(f"Recipe keys without a base default: {unknown}")
        self.recipes, self.base_defaults = dict(recipes), dict(base_defaults)
        super().__init__(**kwargs)
        self.add_argument_group("recipe").add_argument(
            "--recipe",
            choices=sorted(self.recipes),
            default=default_recipe,
            help="Defaults for every recipe flag below (explicit flags win).",
        )

    def _get_formatter(self):
        formatter = _RecipeHelpFormatter(prog=self.prog)
        formatter.recipes, formatter.base_defaults = self.recipes, self.base_defaults
        return formatter

    def format_help(self) -> str:
        for action in self._actions:  # so that flags without a help text still show their default
            if not action.help:
                action.help = _NO_HELP
        return super().format_help()

    def parse_args(self, args: Sequence[str] | None = None, namespace=None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        missing = [key for key in self.base_defaults if not hasattr(parsed, key)]
        if missing:
            raise ValueError(f"Recipe-controlled flags not declared on the parser: {missing}")
        declared_defaults = {key: self.get_default(key) for key in self.base_defaults}
        wrong = [key for key, value in declared_defaults.items() if value is not None]
        if wrong:  # a non-None default would make the recipe unable to set the flag
            raise ValueError(f"Recipe-controlled flags must be declared with default=None: {wrong}")
        # which recipe-controlled flags the user gave (scripts may need it, e.g. to prefer a checkpoint's own
        # preprocessing unless the user overrode it)
        parsed.explicit_flags = sorted(key for key in self.base_defaults if getattr(parsed, key) is not None)
        return apply_recipe(parsed, self.recipes[parsed.recipe], self.base_defaults)


def apply_recipe(args: argparse.Namespace, recipe: Mapping, base_defaults: Mapping) -> argparse.Namespace:
    """Fill every flag of `base_defaults` left at None from `recipe`, then from `base_defaults`."""
    for key, value in base_defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, recipe.get(key, value))
    return args


def floats(n: int) -> dict:
    """`add_argument` keywords for a flag taking `n` floats (recipe-controlled: default None)."""
    return dict(type=float, nargs=n, default=None)


# Values of the shared flags that are recipe-controlled (merge into a task's base defaults).
OPTIMIZATION_DEFAULTS: dict = dict(
    per_device_train_batch_size=64,
    per_device_eval_batch_size=128,
    num_train_epochs=10,
    lr_base=1e-3,
    lr_base_size=512,
    lr_base_scale="linear",
    min_lr_base=1e-5,
    warmup_lr_base=1e-6,
    warmup_epochs=1.0,
    num_warmup_steps=None,  # None: --warmup_epochs; the dense recipes count their warm-up in iterations
    cooldown_epochs=0.0,
    lr_scheduler_type="cosine",
    decay_milestones=None,
    decay_rate=0.1,
    poly_power=1.0,
    weight_decay=0.05,
    opt_eps=1e-8,
    opt_betas=[0.9, 0.999],
    layer_decay=None,
    clip_grad=None,
    clip_mode="norm",
)

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd")


# The preset's per-stage overrides, flags of every task script; None keeps the preset's value.
ARCHITECTURE_FLAGS = ("hidden_sizes", "depths", "num_attention_heads", "num_clusters")
# The backbone architecture flags of the dense-task scripts (recipe-controlled, so their parser defaults are None).
ARCHITECTURE_DEFAULTS: dict = dict(preset="pacavit-tiny", **dict.fromkeys(ARCHITECTURE_FLAGS))


def architecture_overrides(args: argparse.Namespace, flags: Sequence[str] = ARCHITECTURE_FLAGS) -> dict:
    """The preset overrides given on the command line (`flags` left at None keep the preset's values)."""
    return {key: getattr(args, key) for key in flags if getattr(args, key, None) is not None}


def add_architecture_arguments(group, clusters_help: str | None = None) -> None:
    """--preset and its per-stage overrides (4 values each) for a PaCa-ViT backbone built from scratch."""
    group.add_argument("--preset", default=None, help="PaCa-ViT preset (pacavit.list_presets()).")
    group.add_argument("--hidden_sizes", type=int, nargs=4, default=None)
    group.add_argument("--depths", type=int, nargs=4, default=None)
    group.add_argument("--num_attention_heads", type=int, nargs=4, default=None)
    group.add_argument("--num_clusters", type=int, nargs=4, default=None, help=clusters_help)


def add_optimization_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Batch sizes, epochs/updates, lr scaling with the global batch, warm-up, schedule, AdamW, clipping."""
    g = parser.add_argument_group("optimisation")
    g.add_argument("--per_device_train_batch_size", type=int, default=None)
    g.add_argument("--per_device_eval_batch_size", type=int, default=None)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--num_train_epochs", type=float, default=None)
    g.add_argument("--max_train_steps", type=int, default=None, help="Optimizer updates; overrides the epochs.")
    g.add_argument(
        "--learning_rate",
        "--lr",
        type=float,
        default=None,
        help="Absolute peak lr; disables batch-size scaling (min/warmup lr keep their ratio to it).",
    )
    g.add_argument("--lr_base", type=float, default=None, help="Peak lr for a global batch of --lr_base_size.")
    g.add_argument("--lr_base_size", type=int, default=None)
    g.add_argument("--lr_base_scale", choices=["linear", "sqrt"], default=None)
    g.add_argument("--min_lr_base", type=float, default=None, help="Final lr, scaled like --lr_base.")
    g.add_argument("--warmup_lr_base", type=float, default=None, help="Initial warmup lr, scaled like --lr_base.")
    g.add_argument("--warmup_epochs", type=float, default=None)
    g.add_argument("--num_warmup_steps", type=int, default=None, help="Overrides --warmup_epochs.")
    g.add_argument("--cooldown_epochs", type=float, default=None)
    g.add_argument(
        "--lr_scheduler_type",
        default=None,
        choices=list(SCHEDULERS),
        help="timm scheduler, stepped per optimizer update.",
    )
    g.add_argument(
        "--decay_milestones",
        type=float,
        nargs="+",
        default=None,
        help="multistep: epochs at which the lr is multiplied by --decay_rate (default: at 1/2 and 3/4 of the run).",
    )
    g.add_argument("--decay_rate", type=float, default=None, help="step/multistep: the lr factor at each decay.")
    g.add_argument("--poly_power", type=float, default=None, help="poly: the power (1.0 = linear decay).")
    g.add_argument(
        "--weight_decay",
        type=float,
        default=None,
        help="AdamW decoupled weight decay; never applied to norms, biases, 1-D params, embeddings.",
    )
    g.add_argument("--opt_eps", type=float, default=None)
    g.add_argument("--opt_betas", **floats(2))
    g.add_argument("--layer_decay", type=float, default=None, help="Layer-wise lr decay (e.g. 0.75 for fine-tuning).")
    g.add_argument("--clip_grad", type=float, default=None, help="Gradient clipping threshold (off by default).")
    g.add_argument("--clip_mode", choices=["norm", "value"], default=None)
    return g


def add_running_arguments(parser: argparse.ArgumentParser, output_dir: str) -> argparse._ArgumentGroup:
    """Output folder, seed, precision, threads, logging/tracking, checkpointing and resume, Hub push."""
    g = parser.add_argument_group("running")
    g.add_argument("--output_dir", default=output_dir)
    g.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Train into an --output_dir that already holds a run (its checkpoints are deleted first).",
    )
    g.add_argument("--seed", type=int, default=42)
    g.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Default: what `accelerate launch`/config says (fp32 otherwise).",
    )
    g.add_argument("--activation_checkpointing", action="store_true", help="Trade compute for memory.")
    g.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default on CPU: available cores / local processes).",
    )
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--eval_every_epochs", type=int, default=1, help="0: evaluate only at the end.")
    g.add_argument("--with_tracking", action="store_true", help="Log metrics with the trackers of --report_to.")
    g.add_argument("--report_to", default="tensorboard")
    g.add_argument("--checkpointing_steps", default=None, help="'N' (every N updates) or 'epoch'.")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep only the newest N checkpoints.")
    g.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="A checkpoint folder, or 'latest' for the newest complete one in --output_dir.",
    )
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    g.add_argument("--hub_private", action="store_true")
    return g


def add_image_check_arguments(group) -> None:
    """--verify_images / --skip_corrupt_images, the same in every task script (the corrupt-image error of
    `pacavit.data.common.decode_image` names them)."""
    group.add_argument(
        "--skip_corrupt_images",
        action="store_true",
        help="Check every image (and mask) first; leave unreadable ones out (counted, logged) instead of failing.",
    )
    group.add_argument(
        "--verify_images",
        action="store_true",
        help="Check every image (and mask) before training and fail early, naming each unreadable file.",
    )


def validate_training_args(args: argparse.Namespace) -> argparse.Namespace:
    """Normalise and check the shared flags (after the recipe is applied); a ValueError names the flag."""
    if getattr(args, "clip_grad", None) is not None and args.clip_grad <= 0:
        args.clip_grad = None
    if getattr(args, "num_warmup_steps", None) is not None and args.num_warmup_steps < 0:
        raise ValueError("--num_warmup_steps must be >= 0")
    if args.gradient_accumulation_steps < 1:
        raise ValueError("--gradient_accumulation_steps must be >= 1")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not str(args.checkpointing_steps).isdigit() or int(args.checkpointing_steps) < 1:
            raise ValueError(
                f"--checkpointing_steps takes a positive integer or 'epoch', not {args.checkpointing_steps!r}"
            )
        args.checkpointing_steps = int(args.checkpointing_steps)
    if args.logging_steps < 1:
        raise ValueError("--logging_steps must be >= 1")
    return args
