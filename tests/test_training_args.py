"""pacavit.training.args: recipe precedence (explicit flag > --recipe > base defaults), recipe-aware help."""

from __future__ import annotations

import pytest

from pacavit.training import (
    OPTIMIZATION_DEFAULTS,
    RecipeArgumentParser,
    add_optimization_arguments,
    add_running_arguments,
    validate_training_args,
)

BASE = dict(OPTIMIZATION_DEFAULTS, image_size=224, crop_pct=0.875)
RECIPES = {"small": dict(image_size=32, lr_base=2e-3), "paper": dict(crop_pct=0.9, num_train_epochs=300)}


def make_parser(recipes=RECIPES, base=BASE) -> RecipeArgumentParser:
    parser = RecipeArgumentParser(recipes=recipes, base_defaults=base, default_recipe="small", prog="train")
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--crop_pct", type=float, default=None, help="Eval crop fraction.")
    add_optimization_arguments(parser)
    add_running_arguments(parser, output_dir="runs/x")
    return parser


def test_explicit_flag_beats_recipe_beats_base_defaults():
    parser = make_parser()
    args = parser.parse_args([])  # the default recipe
    assert (args.recipe, args.image_size, args.lr_base, args.crop_pct) == ("small", 32, 2e-3, 0.875)
    assert args.explicit_flags == []
    args = parser.parse_args(["--recipe", "paper"])
    assert (args.image_size, args.crop_pct, args.num_train_epochs, args.lr_base) == (224, 0.9, 300, 1e-3)
    args = parser.parse_args(["--recipe", "paper", "--crop_pct", "1.0", "--lr_base", "0.5", "--image_size", "64"])
    assert (args.crop_pct, args.lr_base, args.image_size, args.num_train_epochs) == (1.0, 0.5, 64, 300)
    assert args.explicit_flags == ["crop_pct", "image_size", "lr_base"]
    # the shared flags' own defaults
    assert (args.output_dir, args.seed, args.gradient_accumulation_steps, args.opt_betas) == (
        "runs/x",
        42,
        1,
        [0.9, 0.999],
    )


def test_help_lists_each_recipes_value_and_plain_defaults():
    text = " ".join(make_parser().format_help().split())
    assert "Eval crop fraction. [recipe defaults: small: 0.875, paper: 0.9]" in text
    assert "--image_size IMAGE_SIZE [recipe defaults: small: 32, paper: 224]" in text
    assert "--logging_steps LOGGING_STEPS (default: 10)" in text


def test_recipe_table_mistakes_are_errors():
    with pytest.raises(ValueError, match="without a base default.*'typo'"):
        make_parser(recipes={"small": dict(typo=1)})
    parser = make_parser(base=dict(BASE, undeclared_flag=3))
    with pytest.raises(ValueError, match="not declared on the parser.*undeclared_flag"):
        parser.parse_args([])
    parser = make_parser()
    parser.add_argument("--hflip", type=float, default=0.5)
    parser.base_defaults["hflip"] = 0.5
    with pytest.raises(ValueError, match="default=None.*hflip"):
        parser.parse_args([])


def test_validate_training_args():
    parser = make_parser()
    args = validate_training_args(parser.parse_args(["--checkpointing_steps", "5", "--clip_grad", "0"]))
    assert args.checkpointing_steps == 5 and args.clip_grad is None
    assert validate_training_args(parser.parse_args(["--checkpointing_steps", "epoch"])).checkpointing_steps == (
        "epoch"
    )
    for bad, match in (
        (["--checkpointing_steps", "often"], "positive integer or 'epoch'"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps"),
        (["--num_warmup_steps", "-1"], "num_warmup_steps"),
    ):
        with pytest.raises(ValueError, match=match):
            validate_training_args(parser.parse_args(bad))
