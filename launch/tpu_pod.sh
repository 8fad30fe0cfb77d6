#!/usr/bin/env bash
# Everything in one go: create the slice, set it up, train, fetch the results, delete the slice.
#   BUCKET=gs://my-bucket ACCELERATOR=v4-32 launch/tpu_pod.sh configs/qwen3-4b-squad.yaml [key=value ...]
# KEEP=1 keeps the slice afterwards. The slice is deleted even if training fails (unless KEEP=1).
set -euo pipefail
here=$(dirname "$0")
"$here/tpu_create.sh"
[ "${KEEP:-0}" = 1 ] || trap '"$here/tpu_delete.sh"' EXIT
"$here/tpu_setup.sh"
"$here/tpu_train.sh" "$@"
"$here/tpu_fetch.sh" "$1"
