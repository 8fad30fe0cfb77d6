#!/usr/bin/env bash
# Train (or just benchmark) on one GPU: installs JAX for CUDA into .venv-gpu and runs the trainer.
#   launch/gpu_single.sh configs/tiny-synthetic.yaml steps=500
#   launch/gpu_single.sh configs/qwen2.5-3b-iwslt-ende.yaml model.hf_dir=/data/Qwen2.5-3B-Instruct \
#       mesh.data=1 mesh.fsdp=1 data.global_batch_size=16 data.micro_batch_size=4
# A 3B/4B model with AdamW needs 16 bytes/param = 49/64 GB of float32 state: it fits an 80 GB H100 only
# with small microbatches; use the pod configs for the paper's runs.
# BENCH=1 runs eval/bench_train.py instead (tokens/s, step time, MFU; e.g. BENCH_ARGS="--model qwen2.5-0.5b").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
if [ ! -d "$VENV" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  "$VENV/bin/pip" install -q "${JAX_SPEC:-jax[cuda12]}"
  "$VENV/bin/pip" install -q -e .
fi
. "$VENV/bin/activate"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
if [ "${BENCH:-0}" = 1 ]; then
  exec python eval/bench_train.py ${BENCH_ARGS:-}
fi
exec python -m proactive_jax train "$@"
