#!/usr/bin/env bash
# Run transformers' own common model tests (ModelTesterMixin, ConfigTester, BackboneTesterMixin) against every
# PaCa-ViT model class. Downloads the source distribution of the installed transformers version (it ships
# tests/test_*common.py) once into ${TRANSFORMERS_SDIST_DIR:-~/.cache/pacavit/transformers-sdist}, installs
# `parameterized` if missing, and runs tests/transformers_common/ with pytest (extra arguments are passed on).
#   tests/transformers_common/run.sh -q -k "not Teacher"
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(python -c "import transformers; print(transformers.__version__)")
cache=${TRANSFORMERS_SDIST_DIR:-$HOME/.cache/pacavit/transformers-sdist}
tests_dir="$cache/transformers-$version/tests"
if [ ! -f "$tests_dir/test_modeling_common.py" ]; then
    mkdir -p "$cache"
    python -m pip download --no-binary :all: --no-deps "transformers==$version" -d "$cache"
    tar -xzf "$cache/transformers-$version.tar.gz" -C "$cache" "transformers-$version/tests" "transformers-$version/setup.py"
fi
# the repository's tests/ is a package (an empty __init__.py, which test_configuration_common.py loads); the sdist
# leaves that file out
touch "$tests_dir/__init__.py"
python -c "import parameterized" 2>/dev/null || python -m pip install "parameterized>=0.9"
export TRANSFORMERS_TESTS_DIR="$tests_dir" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python -m pytest tests/transformers_common -p no:cacheprovider "$@"
