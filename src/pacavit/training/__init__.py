"""The training library shared by the task scripts in `examples/` (classification, semantic segmentation,
instance segmentation). Needs the `train` extra: `pip install "pacavit[train]"`.

Modules
-------
- `args`       -- `RecipeArgumentParser` (precedence: explicit flag > --recipe > base defaults; --help
                  lists each recipe's value), the shared flag groups `add_architecture_arguments` /
                  `add_optimization_arguments` / `add_running_arguments`, their recipe-controlled defaults
                  `ARCHITECTURE_DEFAULTS` / `OPTIMIZATION_DEFAULTS`, `architecture_overrides` and
                  `validate_training_args`.
- `runtime`    -- `setup_run` (the shared start: all of the below plus seed, resume path, output guard, Hub
                  preflight), `make_accelerator` (mixed precision, seedable sampler, tracking, project dir),
                  `setup_logging`, `configure_threads`, `hardware_description`, `wall_time`, `teardown`.
                  The OpenMP spin guard is the top-level module `pacavit_openmp_guard` (it must run before
                  torch is imported, which any `pacavit` import does).
- `optim`      -- `global_batch_size`, `scale_learning_rates` / `learning_rates_from_args`,
                  `build_param_groups` / `build_optimizer` (no decay on 1-D params and position embeddings,
                  layer decay, per-module lr multipliers by name pattern), `create_update_scheduler` /
                  `build_scheduler` (timm cosine, poly with warm-up, multi-step with warm-up; per update),
                  `current_lr`.
- `checkpoint` -- `save_checkpoint` (atomic: write into `.tmp_<name>`, then rename), `prune_checkpoints`,
                  `list_checkpoints` / `find_latest_checkpoint` (complete checkpoints only),
                  `resolve_resume_path` (`NoCheckpointError`), `load_checkpoint` (every pickle checked
                  first: `UnsafeCheckpointError`, `CheckpointFileError`), `resume_position`,
                  `check_output_dir`, `export_atomically` (a run's final folder, never half-written).
- `loop`       -- `epoch_batches` (sampler epoch, mid-epoch skip, per-step seeding), `StopOnSignal`
                  (SIGTERM -> checkpoint and exit 143), `backward_and_step`, `check_finite_loss`,
                  `TrainingProgress` (tqdm, log lines, tracking, history), `init_tracking`, `write_run_files`
                  (all_results.json, train_log.json), `process_ranks`, `json_default`.
- `run`        -- `TrainingRun`: one run's bookkeeping over those pieces (length in updates, resume, the
                  epoch's batches, progress, periodic/epoch checkpoints, SIGTERM and NaN stops), so each
                  script's loop is only forward / backward / step / evaluate.

Per task, in the same shape (`RECIPES`, `BASE_DEFAULTS`, `DEFAULT_RECIPE`, `build_parser`, `parse_args`,
`build_model` and the task's transform / image-processor builders), importable so that the tests reach them
without loading the scripts:

- `classification` -- recipes "digits" (default) and "paper_in1k"; timm augmentation, mixup and losses
  (`examples/run_classification.py`);
- `segmentation` -- recipes "digit_scenes" (default) and "paper_ade20k"; mmseg's paired transforms and the
  heads' lr multipliers (`examples/run_semantic_segmentation.py`);
- `detection` -- recipes "digit_scenes" (default) and "paper_coco_1x"; the paper's multi-scale /
  resize-crop-resize augmentation (`examples/run_instance_segmentation.py`).

Related, outside this sub-package: `pacavit.data.common` (image decoding with errors naming the file,
per-sample seeds), `pacavit.hub.cards` (README.md with a model-index block), `pacavit.hub.push`
(`hub_preflight`, `push`), `pacavit.preprocessing` (each task's image processor), `pacavit.extras.require`
(optional imports naming the pip extra).

Call sequence of a task script
------------------------------
::

    import pacavit_openmp_guard  # noqa: F401   first line: before torch is imported
    from pacavit import training as T

    parser = T.RecipeArgumentParser(recipes=RECIPES, base_defaults=BASE_DEFAULTS, default_recipe="...")
    ...task flags (recipe-controlled ones with default=None)...
    T.add_optimization_arguments(parser); T.add_running_arguments(parser, output_dir="runs/...")
    args = T.validate_training_args(parser.parse_args(argv))

    setup = T.setup_run(args)  # Accelerator, logging, threads, seed, resume path, output guard, Hub preflight
    accelerator, resume_path = setup.accelerator, setup.resume_path
    ...data, model (task code)...
    batch = T.global_batch_size(...); lrs = T.learning_rates_from_args(args, batch)
    optimizer = T.build_optimizer(model, args, lrs["lr"], lr_multipliers={"decode_head.*": 10.0})
    model, optimizer, train_dl, eval_dl = accelerator.prepare(...)
    run = T.TrainingRun(accelerator, args, len(train_dl), batch, resume_path)  # loads the checkpoint
    scheduler = T.build_scheduler(optimizer, args, lrs, run.updates_per_epoch, run.max_steps)
    T.init_tracking(accelerator, args, "run_<task>", global_batch_size=batch, ...)
    run.start()                                      # progress bar, SIGTERM hook
    for epoch in run.epochs():
        for batch in run.batches(train_dl, epoch, train_dataset):   # resume skip, per-step seeds
            scheduler.step_update(run.completed_steps)
            with accelerator.accumulate(model): ...forward, backward, step...
            if not accelerator.sync_gradients: continue
            loss = accelerator.reduce(loss.detach(), "mean").item()
            run.update_done(loss, T.current_lr(optimizer), epoch, images)  # NaN stop, log, save, SIGTERM
            if run.done: break
        ...evaluate -> run.log_eval(record)...
        run.epoch_done(epoch)                        # --checkpointing_steps epoch
    train_time = run.finish()
    ...evaluate, save_pretrained, write_model_card, T.write_run_files(...), hub.push(...)...

    if __name__ == "__main__":
        main(); T.teardown(0)

`examples/run_classification.py` is the worked example of this sequence.
"""

from .args import (
    ARCHITECTURE_DEFAULTS,
    ARCHITECTURE_FLAGS,
    OPTIMIZATION_DEFAULTS,
    SCHEDULERS,
    RecipeArgumentParser,
    add_architecture_arguments,
    add_optimization_arguments,
    add_running_arguments,
    apply_recipe,
    architecture_overrides,
    floats,
    validate_training_args,
)
from .checkpoint import (
    CHECKPOINT_PATTERN,
    TRAINING_STATE,
    NoCheckpointError,
    check_output_dir,
    export_atomically,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume_path,
    resume_position,
    save_checkpoint,
    write_checkpoint_atomically,
)
from .loop import (
    EXIT_INTERRUPTED,
    NonFiniteLossError,
    StopOnSignal,
    TrainingProgress,
    backward_and_step,
    check_finite_loss,
    epoch_batches,
    init_tracking,
    json_default,
    process_ranks,
    write_json,
    write_run_files,
)
from .optim import (
    NO_WEIGHT_DECAY,
    build_optimizer,
    build_param_groups,
    build_scheduler,
    create_update_scheduler,
    current_lr,
    global_batch_size,
    learning_rates_from_args,
    scale_learning_rates,
)
from .run import TrainingRun
from .runtime import (
    PROCESS_START,
    RunSetup,
    available_cores,
    configure_threads,
    hardware_description,
    make_accelerator,
    setup_logging,
    setup_run,
    teardown,
    wall_time,
)

__all__ = [
    "ARCHITECTURE_DEFAULTS",
    "ARCHITECTURE_FLAGS",
    "add_architecture_arguments",
    "CHECKPOINT_PATTERN",
    "EXIT_INTERRUPTED",
    "NO_WEIGHT_DECAY",
    "NoCheckpointError",
    "NonFiniteLossError",
    "OPTIMIZATION_DEFAULTS",
    "PROCESS_START",
    "RecipeArgumentParser",
    "RunSetup",
    "SCHEDULERS",
    "StopOnSignal",
    "TRAINING_STATE",
    "TrainingProgress",
    "TrainingRun",
    "add_optimization_arguments",
    "add_running_arguments",
    "apply_recipe",
    "architecture_overrides",
    "available_cores",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "backward_and_step",
    "check_finite_loss",
    "check_output_dir",
    "export_atomically",
    "configure_threads",
    "create_update_scheduler",
    "current_lr",
    "epoch_batches",
    "find_latest_checkpoint",
    "floats",
    "global_batch_size",
    "hardware_description",
    "init_tracking",
    "json_default",
    "learning_rates_from_args",
    "list_checkpoints",
    "load_checkpoint",
    "make_accelerator",
    "process_ranks",
    "prune_checkpoints",
    "resolve_resume_path",
    "resume_position",
    "save_checkpoint",
    "scale_learning_rates",
    "setup_logging",
    "setup_run",
    "teardown",
    "validate_training_args",
    "wall_time",
    "write_checkpoint_atomically",
    "write_json",
    "write_run_files",
]
