#!/usr/bin/env bash
# Compile the run's train step for the slice on THIS machine (no TPU, no weights, no data) and fail when it
# does not fit the chips' HBM: run it before renting a pod. Needs the package with its tpu extra locally
# (pip install -e ".[tpu]").
#   ACCELERATOR=v5litepod-32 launch/tpu_plan.sh configs/qwen2.5-3b-iwslt-ende.yaml [key=value ...]
# PLAN_ARGS adds options, e.g. PLAN_ARGS="--headroom 0.25 --max-batch".
source "$(dirname "$0")/common.sh"
CONFIG=${1:?usage: tpu_plan.sh CONFIG [key=value ...]}; shift
cd "$REPO_ROOT"
# shellcheck disable=SC2086
JAX_PLATFORMS=cpu python -m proactive_jax.cli plan "$CONFIG" "$@" --topology "$ACCELERATOR" ${PLAN_ARGS:-}
