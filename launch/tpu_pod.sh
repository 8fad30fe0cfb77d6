#!/usr/bin/env bash
# Everything in one go: plan (compile for the slice here; stop if it does not fit), create the slice, set it
# up, train, fetch the results, delete the slice.
#   BUCKET=gs://my-bucket ACCELERATOR=v4-32 launch/tpu_pod.sh configs/qwen3-4b-squad.yaml [key=value ...]
# KEEP=1 keeps the slice afterwards. The slice is deleted even if training fails (unless KEEP=1).
# SKIP_PLAN=1 skips the local `proactive-jax plan` gate (it needs the tpu extra installed here).
set -euo pipefail
here=$(dirname "$0")
if [ "${SKIP_PLAN:-0}" != 1 ]; then
  "$here/tpu_plan.sh" "$@" || { echo "tpu_pod.sh: the plan says the run does not fit ${ACCELERATOR:-v4-32} (or failed); not renting" >&2; exit 1; }
fi
"$here/tpu_create.sh"
[ "${KEEP:-0}" = 1 ] || trap '"$here/tpu_delete.sh"' EXIT
"$here/tpu_setup.sh"
"$here/tpu_train.sh" "$@"
"$here/tpu_fetch.sh" "$1"
