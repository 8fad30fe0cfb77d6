#!/usr/bin/env bash
# Copy this checkout to every worker, install JAX for TPU + the package, and download the HF model(s).
#   HF_MODELS="Qwen/Qwen2.5-3B-Instruct:/mnt/models/Qwen2.5-3B-Instruct" launch/tpu_setup.sh
# HF_MODELS: space-separated hub_id:local_dir pairs (local_dir must match model.hf_dir of the config).
source "$(dirname "$0")/common.sh"
HF_MODELS=${HF_MODELS:-"Qwen/Qwen2.5-3B-Instruct:/mnt/models/Qwen2.5-3B-Instruct Qwen/Qwen3-4B:/mnt/models/Qwen3-4B"}
tarball=$(mktemp /tmp/proactive_jax.XXXX.tar.gz)
git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard \
  | tar -C "$REPO_ROOT" --null -T - -czf "$tarball"
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":proactive_jax.tar.gz "${G[@]}" --worker=all
rm -f "$tarball"
on_all "set -e; mkdir -p $REMOTE_DIR && tar -xzf proactive_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
  && python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip \
  && pip install -q '$JAX_SPEC' && pip install -q -e . && pip install -q 'huggingface_hub[cli]' gcsfs \
  && python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
for pair in $HF_MODELS; do
  hub=${pair%%:*}; dir=${pair#*:}
  on_all "sudo mkdir -p $dir && sudo chown \$USER $dir && cd $REMOTE_DIR && . .venv/bin/activate \
    && hf download $hub --local-dir $dir --exclude '*.pth' '*.bin'"
done
