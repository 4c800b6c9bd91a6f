"""Import this first in a training script (before torch): it records the process start time and limits how
long GNU OpenMP threads spin-wait.

    import pacavit_openmp_guard  # noqa: F401  (first import of a training script)

It is a top-level module, not part of the `pacavit` package, because `import pacavit...` imports torch, and
OpenMP reads its settings when torch loads it. By default GNU OpenMP threads spin ~300k iterations at every
barrier; on a CPU that other processes also use, that turned a 0.17 s training step of the default
classification run into ~10 s (measured on a shared 2-core machine). A spin count of 10k costs nothing on an
idle machine and degrades gracefully on a busy one. An explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
"""

import os
import time

PROCESS_START = time.time()  # wall times in the task scripts' results are measured from here

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
