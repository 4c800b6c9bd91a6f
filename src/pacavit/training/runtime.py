"""The process around a training run: Accelerator construction, logging set-up, CPU threads, hardware
description, wall time, and a teardown that survives multi-process CPU runs.

The OpenMP spin guard must run before torch is imported, so it lives outside this package, in the top-level
module `pacavit_openmp_guard` (first import of a task script); `PROCESS_START` comes from there.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    from pacavit_openmp_guard import PROCESS_START
except ImportError:  # the package used without its top-level helper module (e.g. vendored)
    PROCESS_START = time.time()

from ..extras import require
from ..hub.push import hub_preflight
from ..safe_io import OutputFolderError
from .checkpoint import check_output_dir, resolve_resume_path

LOG_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"

logger = logging.getLogger(__name__)


def wall_time() -> float:
    """Seconds since the process started (imports and data preparation included)."""
    return time.time() - PROCESS_START


def make_accelerator(args, **overrides):
    """An `accelerate.Accelerator` for a task script.

    - `DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed)`: the shuffling order is a
      function of (seed, epoch) and is saved/restored by `save_state`/`load_state`;
    - `project_dir=args.output_dir` (TensorBoard logs go under it);
    - `mixed_precision=args.mixed_precision` when given (else what `accelerate launch`/config says);
    - `log_with=args.report_to` when `args.with_tracking`;
    - `gradient_accumulation_steps=args.gradient_accumulation_steps`.
    """
    require("accelerate", extra="train")
    from accelerate import Accelerator, DataLoaderConfiguration

    kwargs = dict(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        project_dir=args.output_dir,
    )
    if getattr(args, "mixed_precision", None) is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    if getattr(args, "with_tracking", False):
        kwargs["log_with"] = args.report_to
    kwargs.update(overrides)
    return Accelerator(**kwargs)


def setup_logging(accelerator) -> None:
    """INFO log lines with time stamps; library warnings only on the local main process."""
    import transformers

    datasets = require("datasets", extra="train")

    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S", level=logging.INFO)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(num_threads: int | None, accelerator) -> int:
    """On CPU, use the cores available to this process divided among the local processes (accelerate launch
    exports OMP_NUM_THREADS=1, which wastes cores on a single-process CPU run); `num_threads` overrides.
    Returns the number of torch threads in use."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    elif accelerator.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes or 1))
        torch.set_num_threads(max(1, available_cores() // max(1, local)))
    return torch.get_num_threads()


def hardware_description(accelerator, num_threads: int) -> str:
    """One line for model cards and results: devices, processes, threads, library versions."""
    import transformers

    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        device = f"{accelerator.num_processes} process(es) on GPU ({', '.join(names)})"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        device = (
            f"CPU only: {available_cores()} core(s) available ({cpu}), {accelerator.num_processes} "
            f"process(es) x {num_threads} torch thread(s)"
        )
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    return f"{device}; {versions}, Python {platform.python_version()}"


@dataclass
class RunSetup:
    accelerator: object
    num_threads: int
    resume_path: Path | None  # the checkpoint to resume from (None: start afresh)
    repo_id: str | None  # the Hub repository when --push_to_hub (created by the preflight)


def setup_run(args, guard_output_dir: bool = True) -> RunSetup:
    """The start every task script shares, on every process: the Accelerator (`make_accelerator`), logging,
    CPU threads, `set_seed(args.seed)`, the checkpoint to resume from (--resume_from_checkpoint; 'latest'
    without any checkpoint starts afresh, with a warning, but refuses a folder holding a finished run:
    `NoCheckpointError`), the output-folder guard (`check_output_dir`,
    skipped with `guard_output_dir=False`, e.g. for evaluation only), the Hub preflight (--push_to_hub) and
    the output folder itself."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(args)
    setup_logging(accelerator)
    logger.info(accelerator.state)
    num_threads = configure_threads(args.num_threads, accelerator)
    if accelerator.is_main_process:
        logger.info(f"Using {num_threads} torch thread(s) per process; {accelerator.num_processes} process(es).")
    set_seed(args.seed)
    # 'latest' into a folder holding a finished run without checkpoints is refused (NoCheckpointError)
    overwrite = args.overwrite_output_dir or not guard_output_dir
    resume_path = resolve_resume_path(args.resume_from_checkpoint, args.output_dir, overwrite)
    latest_without_checkpoint = args.resume_from_checkpoint == "latest" and resume_path is None
    if latest_without_checkpoint and accelerator.is_main_process:
        logger.warning(f"--resume_from_checkpoint latest: no checkpoint in {args.output_dir}; starting afresh.")
    if guard_output_dir:  # refuse to mix this run into another one's folder
        check_output_dir(
            args.output_dir,
            args.overwrite_output_dir,
            # 'latest' without a checkpoint (and without a finished run, checked above) starts afresh in the
            # folder, e.g. a requeued job killed during its first checkpoint; with --overwrite_output_dir, the
            # guard clears the folder's stale checkpoints as for any overwrite
            resuming=resume_path is not None or (latest_without_checkpoint and not args.overwrite_output_dir),
            remove_stale=accelerator.is_main_process,
        )
    repo_id = None
    if args.push_to_hub and accelerator.is_main_process:
        repo_id = hub_preflight(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private)
    make_output_dir(args.output_dir)  # on every process: all fail alike, none waits at a barrier for the others
    accelerator.wait_for_everyone()
    return RunSetup(accelerator, num_threads, resume_path, repo_id)


def make_output_dir(output_dir: str | os.PathLike) -> None:
    """Create --output_dir and check that files can be written into it, before any training: an error naming
    the flag instead of a traceback at the first checkpoint or at the export, after the training time is spent."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise OutputFolderError(
            f"--output_dir {str(output_dir)!r} cannot be written ({type(error).__name__}: {error.strerror or error}). "
            "Pass a folder you can write to (its parent folders are created)."
        ) from error


def teardown(exit_code: int = 0) -> None:
    """Flush everything, then leave without running interpreter/gloo teardown, which can abort a finished
    multi-process CPU run ("terminate called without an active exception"). Call last in `__main__`."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
