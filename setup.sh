#!/usr/bin/env bash
# One command for a fresh machine: a virtual environment with proactive_jax and everything its tests and
# commands use.   bash setup.sh [VENV_DIR]   (default .venv; then: . VENV_DIR/bin/activate)
#
# - PyTorch (the transformers parity tests and the PyTorch peers in eval/) as its CPU build: a local CPU wheel when
#   pip is configured with one (find-links), otherwise PyTorch's CPU package index (plain `pip install torch`
#   would pull the multi-GB CUDA build). TORCH_INDEX=URL overrides the index.
# - the package with the extras test, tensorboard (tensorboardX), tpu (libtpu: `plan` compiles for TPU on any machine), audio (soundfile,
#   soxr), speech-data (grain, array_record), simuleval (SimulEval's runtime dependencies);
# - SimulEval itself without its dependency pins (its tqdm pin clashes with datasets'; see docs/decisions.md).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${1:-.venv}
TORCH_VERSION=2.13.0
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
local_wheel=""
for d in $(pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do
  if ls "$d"/torch-${TORCH_VERSION}+cpu-*.whl >/dev/null 2>&1; then local_wheel=$d; fi
done
if [ -n "$local_wheel" ] && [ -z "${TORCH_INDEX:-}" ]; then
  echo "setup: torch ${TORCH_VERSION} CPU build from the local wheel in $local_wheel"
  python -m pip install -q "torch==${TORCH_VERSION}"
else
  index=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
  echo "setup: torch ${TORCH_VERSION} CPU build from $index"
  python -m pip install -q "torch==${TORCH_VERSION}" --index-url "$index"
fi
python -m pip install -q -e ".[test,tpu,audio,speech-data,simuleval,tensorboard]"
python -m pip install -q --no-deps simuleval==1.1.4
python -c "import torch, jax, proactive_jax; print(f'setup: done (torch {torch.__version__}, jax {jax.__version__}); activate with: . $VENV/bin/activate')"
