#!/usr/bin/env bash
# Copy results back: worker 0's run directory (metrics.jsonl, TensorBoard, run_config.yaml) and a
# Hugging Face export of the latest checkpoint (written on worker 0, from GCS).
#   BUCKET=gs://my-bucket launch/tpu_fetch.sh configs/qwen2.5-3b-iwslt-ende.yaml [STEP]
source "$(dirname "$0")/common.sh"
CONFIG=${1:?usage: tpu_fetch.sh CONFIG [STEP]}
: "${BUCKET:?set BUCKET=gs://your-bucket}"
RUN_NAME=${RUN_NAME:-$(basename "$CONFIG" .yaml)}
step=${2:+--step $2}
on_worker0 "cd $REMOTE_DIR && . .venv/bin/activate && \
  python -m proactive_jax export --checkpoint $BUCKET/runs/$RUN_NAME/checkpoints $step --out runs/$RUN_NAME/hf --dtype bfloat16"
mkdir -p "$REPO_ROOT/runs"
gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME":"$REMOTE_DIR/runs/$RUN_NAME" "$REPO_ROOT/runs/" "${G[@]}" --worker=0
echo "results in $REPO_ROOT/runs/$RUN_NAME"
