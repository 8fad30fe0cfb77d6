#!/usr/bin/env bash
# Evaluate one cell (or a whole table) on one GPU and print the paper-style table with the paper's numbers beside ours:
#   launch/reproduce_gpu.sh qwen2.5-3b/iwslt-ende [OUT]        # OUT holds <cell>/hf from launch/reproduce_tpu.sh
#   launch/reproduce_gpu.sh --table 1 [OUT]
# Installs JAX for CUDA into .venv-gpu (as launch/gpu_single.sh) and runs `reproduce --stages eval,table`: the heads'
# sweeps with calibration on held-out data, resumable (a rerun decodes only what is missing). Extra reproduce
# options go in REPRODUCE_ARGS (e.g. REPRODUCE_ARGS="-e num_examples=200 -e batch_size=16").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
if [ ! -d "$VENV" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  "$VENV/bin/pip" install -q "${JAX_SPEC:-jax[cuda12]}"
  "$VENV/bin/pip" install -q -e ".[audio]"
fi
. "$VENV/bin/activate"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
if [ "${1:-}" = --table ]; then sel=(--table "${2:?usage: reproduce_gpu.sh --table 1|2 [OUT]}"); OUT=${3:-results}
else sel=(--cell "${1:?usage: reproduce_gpu.sh MODEL/TASK [OUT]}"); OUT=${2:-results}; fi
# shellcheck disable=SC2086
exec python -m proactive_jax reproduce "${sel[@]}" --out "$OUT" --stages eval,table ${REPRODUCE_ARGS:-}
