#!/usr/bin/env bash
# Delete the slice and its queued resource (stops billing). Checkpoints on GCS are kept.
source "$(dirname "$0")/common.sh"
gcloud compute tpus queued-resources delete "$QR_ID" "${G[@]}" --force --quiet
