#!/usr/bin/env bash
# One GPU: train-step MFU of a Qwen2.5-1.5B-shaped model (random weights) at packed length S+2T = 2048 in bf16,
# dense XLA attention vs cuDNN flash attention (model.attention=cudnn), side by side; then the decode benchmark.
# Record the printed figures and the device in eval/NOTES_gpu.md.
#   PEAK_TFLOPS=989 eval/bench_gpu.sh          # H100 SXM bf16 dense peak; A100: 312
# Prepared without a GPU: NOT run yet (no figures exist).
set -euo pipefail
cd "$(dirname "$0")/.."
PEAK=${PEAK_TFLOPS:-989}
BATCH=${BATCH:-8}
for attn in dense cudnn; do
  echo "== train step, Qwen2.5-1.5B shape, bucket S=1024 T=512 (packed 2048), batch $BATCH, bf16, remat, attention=$attn"
  JAX_PLATFORMS=cuda python eval/bench_train.py --model-json configs/qwen2.5-1.5b.json --bucket 1024 512 \
    --batch "$BATCH" --dtype bfloat16 --remat --modes packed --peak-tflops "$PEAK" \
    --json "runs/bench_gpu_train_$attn.json" model.attention="$attn" objective.logit_chunk=64
done
echo "== streaming decode (jitted KV-cached loop vs naive), batch 1 and 32"
JAX_PLATFORMS=cuda python eval/bench_decode.py --batch-sizes 1,32
# Still to write: decode tokens/s of a 3B-shaped model with HBM-bandwidth utilisation (bench_decode.py runs a
# small model only).
