#!/usr/bin/env bash
# Single-GPU evaluation of a Qwen2.5-3B / Qwen3-4B streaming checkpoint on the four text tasks.
#   CKPT=runs/qwen2.5-3b-iwslt-ende (a training run) or an HF directory; OUT=eval_out/qwen2.5-3b
#   bash eval/eval_text_tasks.sh
# Needs network access to the Hugging Face Hub for the datasets (or set dataset.source=files/disk to local
# copies). Heads: batch, wait-k, entropy and attention with the paper's 0.9-quantile thresholds plus sweeps.
set -euo pipefail
CKPT=${CKPT:?set CKPT to a training run or HF directory}
OUT=${OUT:-eval_out}
N=${N:-1000}
HEADS='[batch, "wait-k:k=3|5|7|9", "entropy:tau=q0.9|0.2|0.3|0.4", "attention:tau=q0.9|0.4|0.5|0.6,layers=-4:"]'
common=(checkpoint="$CKPT" num_examples="$N" calibration_examples=100 batch_size=32 dtype=bfloat16 "heads=$HEADS")

proactive-jax eval "${common[@]}" task=iwslt2017 out_dir="$OUT/iwslt-ende" max_new_tokens=160 \
  dataset.source=hub dataset.path=IWSLT/iwslt2017 dataset.revision=refs/convert/parquet \
  dataset.data_dir=iwslt2017-en-de split=test calibration_split=validation \
  'adapter_options={src: en, tgt: de}'
proactive-jax eval "${common[@]}" task=squad out_dir="$OUT/squad" max_new_tokens=32 \
  dataset.source=hub dataset.path=rajpurkar/squad split='validation[50%:]' calibration_split='validation[:50%]'
proactive-jax eval "${common[@]}" task=mctest out_dir="$OUT/mctest" max_new_tokens=8 \
  dataset.source=hub dataset.path=sagnikrayc/mctest dataset.revision=refs/convert/parquet \
  dataset.data_dir=mc500 split=test calibration_split=validation
proactive-jax eval "${common[@]}" task=dialogsum out_dir="$OUT/dialogsum" max_new_tokens=128 \
  dataset.source=hub dataset.path=knkarthick/dialogsum split=test calibration_split=validation
python eval/plot_results.py "$OUT"/*/results.json --out "$OUT/quality_latency.png"
