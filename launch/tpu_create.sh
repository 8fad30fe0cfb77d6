#!/usr/bin/env bash
# Request a TPU VM pod slice with queued resources and wait until it is ACTIVE.
#   ACCELERATOR=v4-32 TPU_NAME=proactive-pod launch/tpu_create.sh
source "$(dirname "$0")/common.sh"
extra=()
[ "$SPOT" = 1 ] && extra+=(--spot)
gcloud compute tpus queued-resources create "$QR_ID" "${G[@]}" --node-id="$TPU_NAME" \
  --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${extra[@]}"
while true; do
  state=$(gcloud compute tpus queued-resources describe "$QR_ID" "${G[@]}" --format='value(state.state)')
  echo "$(date +%T) $QR_ID: $state"
  case "$state" in
    ACTIVE) break ;;
    FAILED|SUSPENDED) echo "queued resource $QR_ID is $state" >&2; exit 1 ;;
  esac
  sleep 30
done
