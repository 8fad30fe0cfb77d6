#!/usr/bin/env bash
# One cell of the paper's tables on a TPU pod slice, up to the Hugging Face export, copied back here:
#   BUCKET=gs://my-bucket ACCELERATOR=v5litepod-32 launch/reproduce_tpu.sh qwen2.5-3b/iwslt-ende [OUT]
# 1. `reproduce --stages plan` here for $ACCELERATOR (the gate: no slice is rented for a run that does not fit;
#    SKIP_PLAN=1 skips it; it needs `pip install -e ".[tpu]"` here),
# 2. create + set up the slice (the cell's model downloaded on every worker, as configs/reproduce.yaml names it),
# 3. `reproduce --stages train` on every worker (one JAX process each; checkpoints to $BUCKET; rerunning resumes),
# 4. `reproduce --stages export` on worker 0 (the HF directory <OUT>/<cell>/hf, bfloat16),
# 5. copy <OUT>/<cell> back here (train_config.yaml, run/ metrics, train.json, hf/), 6. delete the slice (KEEP=1 keeps it).
# Then evaluate on one GPU: launch/reproduce_gpu.sh CELL [OUT]. Speech cells also need their prepared audio on every
# worker (the config header's `prepare-audio` step; audio.stream.dir).
source "$(dirname "$0")/common.sh"
here=$(dirname "$0")
CELL=${1:?usage: reproduce_tpu.sh MODEL/TASK [OUT]}
OUT=${2:-results}
: "${BUCKET:?set BUCKET=gs://your-bucket}"
NAME=${CELL//\//-}
CKPT="checkpoint.dir=$BUCKET/runs/$NAME/checkpoints"
cd "$REPO_ROOT"
if [ "${SKIP_PLAN:-0}" != 1 ]; then
  JAX_PLATFORMS=cpu python -m proactive_jax reproduce --cell "$CELL" --out "$OUT" --stages plan --topology "$ACCELERATOR" \
    || { echo "reproduce_tpu.sh: the plan says $CELL does not fit $ACCELERATOR (or failed); not renting" >&2; exit 1; }
fi
HF_MODELS=${HF_MODELS:-$(python -c 'import sys, yaml; m = yaml.safe_load(open("configs/reproduce.yaml"))["models"][sys.argv[1].split("/")[0]]; print(m["hub"] + ":" + m["hf_dir"])' "$CELL")}
"$here/tpu_create.sh"
[ "${KEEP:-0}" = 1 ] || trap '"$here/tpu_delete.sh"' EXIT
HF_MODELS="$HF_MODELS" "$here/tpu_setup.sh"
on_all "cd $REMOTE_DIR && . .venv/bin/activate && python -m proactive_jax reproduce --cell $CELL --out $OUT \
  --stages train -t $CKPT > reproduce-$NAME.log 2>&1; rc=\$?; tail -n 5 reproduce-$NAME.log; exit \$rc"
on_worker0 "cd $REMOTE_DIR && . .venv/bin/activate && python -m proactive_jax reproduce --cell $CELL --out $OUT \
  --stages export -t $CKPT"
mkdir -p "$REPO_ROOT/$OUT/$(dirname "$CELL")"
gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME":"$REMOTE_DIR/$OUT/$CELL" "$REPO_ROOT/$OUT/$(dirname "$CELL")/" "${G[@]}" --worker=0
echo "$CELL: trained and exported into $OUT/$CELL; evaluate with: launch/reproduce_gpu.sh $CELL $OUT"
