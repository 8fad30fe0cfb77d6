#!/usr/bin/env bash
# One GPU (sized for one H100, <= 10 minutes in all, compilation included). Prepared without a GPU: NOT run yet.
#   1. train-step MFU, Qwen2.5-1.5B shape (28 layers, random weights), bucket S=1024 T=512 (packed 2048), bf16,
#      remat: dense XLA attention vs cuDNN flash attention (model.attention=cudnn)          (eval/bench_train.py)
#   2. streaming decode, ours vs the PyTorch peer, fp32, small shape: the strict equality check on this GPU
#   3. streaming decode, Qwen2.5-3B shape (36 layers, vocab 151936), bf16: ours at batch 1 and 32, the peer at
#      batch 1, with HBM bandwidth utilisation (bytes of weights + KV cache read per loop iteration / time / peak)
#                                                                                       (eval/bench_peer_decode.py)
# Each part runs under `timeout` and logs to $OUT/<part>.log (default runs/bench_gpu/); a failed or timed-out part
# does not stop the next. Record the printed figures and the device in eval/NOTES_gpu.md.
#   eval/bench_gpu.sh                                    # H100 SXM: bf16 dense peak 989 TFLOP/s, HBM3 3.35 TB/s
#   PEAK_TFLOPS=312 PEAK_GBPS=2039 eval/bench_gpu.sh     # A100 80GB
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-runs/bench_gpu}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python}
PEAK=${PEAK_TFLOPS:-989}
GBPS=${PEAK_GBPS:-3350}
BATCH=${BATCH:-8}
export JAX_PLATFORMS=cuda
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch and jax share the GPU in the peer benchmark

status=0
part() {  # part NAME SECONDS CMD...: run under timeout, tee to $OUT_DIR/NAME.log, report the exit code
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee "$OUT_DIR/$name.log"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')" | tee -a "$OUT_DIR/$name.log"
  [ "$rc" = 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/device.log"

for attn in dense cudnn; do
  part "train_1.5b_$attn" 120 "$PY" eval/bench_train.py --model-json configs/qwen2.5-1.5b.json --bucket 1024 512 \
    --batch "$BATCH" --dtype bfloat16 --remat --modes packed --steps 4 --rounds 3 --warmup 1 \
    --peak-tflops "$PEAK" --json "$OUT_DIR/train_1.5b_$attn.json" model.attention="$attn" objective.logit_chunk=64
done

# fp32 on the GPU (jax_default_matmul_precision=highest, torch without TF32): tokens and phi must be identical
part decode_check_fp32 60 "$PY" eval/bench_peer_decode.py --device gpu --rounds 2

# bf16: the two sides round differently, so outputs may drift apart after a near-tie (counted, not fatal)
part decode_3b_bf16 290 "$PY" eval/bench_peer_decode.py --device gpu --shape 3b --layers 36 --vocab 151936 \
  --dtype bfloat16 --examples 32 --batch-sizes 1,32 --heads wait-k --rounds 2 --peak-gbps "$GBPS" --allow-mismatch

echo "logs in $OUT_DIR"
exit $status
