#!/usr/bin/env bash
# Run timm's own model tests (tests/test_models.py of the installed timm release) on every `pacavit_*` model.
# Downloads the source distribution of the installed timm version (it ships tests/) once into
# ${TIMM_SDIST_DIR:-~/.cache/pacavit/timm-sdist} and runs tests/timm_models/ with pytest (extra arguments are passed
# on), e.g.
#   tests/timm_models/run.sh -q -k "forward_features"
# TorchScript cases are reported as skipped with the reason (a transformers PreTrainedModel cannot be scripted);
# the pretrained-weight cases need the Hub (HF_HUB_OFFLINE=0) or the weights in the local cache, else they are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(python -c "import timm; print(timm.__version__)")
cache=${TIMM_SDIST_DIR:-$HOME/.cache/pacavit/timm-sdist}
tests_dir="$cache/timm-$version/tests"
if [ ! -f "$tests_dir/test_models.py" ]; then
    mkdir -p "$cache"
    python -m pip download --no-binary :all: --no-deps "timm==$version" -d "$cache"
    tar -xzf "$cache/timm-$version.tar.gz" -C "$cache" "timm-$version/tests"
fi
export TIMM_TESTS_DIR="$tests_dir" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python -m pytest tests/timm_models -p no:cacheprovider "$@"
