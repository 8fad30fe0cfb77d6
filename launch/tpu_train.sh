#!/usr/bin/env bash
# Run training on every worker of the slice (each worker is one JAX process; jax.distributed is
# initialized from the TPU environment). Checkpoints go to GCS, metrics/TensorBoard to worker 0's out_dir.
#   BUCKET=gs://my-bucket launch/tpu_train.sh configs/qwen2.5-3b-iwslt-ende.yaml [key=value ...]
# Rerunning the same command after a preemption resumes from the latest checkpoint.
source "$(dirname "$0")/common.sh"
CONFIG=${1:?usage: tpu_train.sh CONFIG [key=value ...]}; shift
: "${BUCKET:?set BUCKET=gs://your-bucket}"
RUN_NAME=${RUN_NAME:-$(basename "$CONFIG" .yaml)}
overrides="checkpoint.dir=$BUCKET/runs/$RUN_NAME/checkpoints out_dir=runs/$RUN_NAME $*"
on_all "cd $REMOTE_DIR && . .venv/bin/activate && \
  python -m proactive_jax train $CONFIG $overrides > train-$RUN_NAME.log 2>&1; rc=\$?; tail -n 5 train-$RUN_NAME.log; exit \$rc"
