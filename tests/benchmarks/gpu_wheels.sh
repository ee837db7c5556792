#!/usr/bin/env bash
# Gather what tests/benchmarks/gpu_check.py needs on a GPU machine that has torch, transformers, peft and
# accelerate (and numpy, pandas, pyarrow, scipy, psutil, xxhash) but no package index: wheels plus the
# SmolLM2 tokenizer, in one folder under 64 MiB.
#
#   PYTHON=.venv/bin/python bash tests/benchmarks/gpu_wheels.sh [DIR] [PYTHON_VERSION]   # defaults: .whl 3.12
#
# Versions are pinned to what $PYTHON has installed (the versions the CPU test suite passed with), for CPython
# PYTHON_VERSION on x86-64 Linux. Then, on the GPU machine, from the repository root:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site:$PWD python3 tests/benchmarks/gpu_check.py --tokenizer DIR/tokenizer --out OUT
set -euo pipefail

DIR=${1:-.whl}
PYV=${2:-3.12}
PYTHON=${PYTHON:-.venv/bin/python}
LIMIT_MIB=63  # for DIR plus the repository's files that are not ignored: 64 MiB travel, less some slack

# bitsandbytes, trl, datasets, hydra-core, omegaconf: absent there. dill, multiprocess: datasets' needs that are
# absent too. peft, transformers: present there, but at other versions than the tested ones.
PACKAGES="bitsandbytes trl datasets hydra-core omegaconf dill multiprocess peft transformers"

version() { "$PYTHON" -c "from importlib.metadata import version; print(version('$1'))"; }

mkdir -p "$DIR"
pins=()
for name in $PACKAGES; do pins+=("$name==$(version "$name")"); done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DIR" "${pins[@]}"
# omegaconf pins antlr4-python3-runtime==4.9.*, which PyPI has only as a source archive: build its (pure Python)
# wheel here.
"$PYTHON" -m pip wheel -q --no-deps -w "$DIR" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

rm -rf "$DIR/tokenizer"
"$PYTHON" -c "
import shutil, sys
from harness.model import smollm2_tokenizer_dir
shutil.copytree(smollm2_tokenizer_dir(), sys.argv[1])
" "$DIR/tokenizer"

ls -l "$DIR"
bundle=$(du -sb "$DIR" | cut -f1)
repo=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
total=$((bundle + repo))
echo "$DIR $((bundle / 1024)) KiB + repository $((repo / 1024)) KiB = $((total / 1024)) KiB" \
     "(limit $((LIMIT_MIB * 1024)) KiB)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "too large to travel: leave out what the GPU machine already has (python3 -m pip show NAME there)" >&2
    exit 1
fi
