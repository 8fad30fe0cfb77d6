# Shared settings of the TPU launch scripts (source it; every value can be overridden from the environment).
#   PROJECT      Google Cloud project                      (default: gcloud's current project)
#   ZONE         TPU zone                                  us-central2-b (v4) / us-west4-a (v5e)
#   TPU_NAME     node id of the slice                      proactive-pod
#   QR_ID        queued-resource id                        ${TPU_NAME}-qr
#   ACCELERATOR  slice type                                v4-32 | v5litepod-32
#   RUNTIME      TPU VM image                              tpu-ubuntu2204-base (v4) | v2-alpha-tpuv5-lite (v5e)
#   SPOT         1 = Spot capacity (preemptible; the run resumes from its checkpoints)
#   BUCKET       gs://bucket for checkpoints               (required by tpu_train.sh)
#   RUN_NAME     run name under $BUCKET/runs and runs/     (default: the config's basename)
#   REMOTE_DIR   checkout on every worker                  ~/proactive_jax
#   JAX_SPEC     pip spec of JAX for TPU                   jax[tpu]
set -euo pipefail
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
ACCELERATOR=${ACCELERATOR:-v4-32}
case "$ACCELERATOR" in
  v5litepod-*|v5e-*) ZONE=${ZONE:-us-west4-a}; RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite} ;;
  *)                 ZONE=${ZONE:-us-central2-b}; RUNTIME=${RUNTIME:-tpu-ubuntu2204-base} ;;
esac
TPU_NAME=${TPU_NAME:-proactive-pod}
QR_ID=${QR_ID:-${TPU_NAME}-qr}
SPOT=${SPOT:-0}
REMOTE_DIR=${REMOTE_DIR:-proactive_jax}
JAX_SPEC=${JAX_SPEC:-jax[tpu]}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
G=(--project="$PROJECT" --zone="$ZONE")
# run a command on every worker of the slice
on_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${G[@]}" --worker=all --command="$1"; }
on_worker0() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${G[@]}" --worker=0 --command="$1"; }
