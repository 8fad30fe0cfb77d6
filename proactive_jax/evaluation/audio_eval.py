"""`proactive-jax eval task=librispeech|spoken-squad`: speech examples for the head sweeps.

Rows come from ``dataset`` (``source: hub`` with ``path: openslr/librispeech_asr``, ``name: clean|other|all``;
``AudioLLMs/spoken_squad_test_v1``; ``disk``; ``tfds`` ``librispeech``) or, with ``source: files`` and a
``.jsonl`` path, from a local WAV + JSONL manifest. Each utterance is encoded once (causal encoder,
``conv_edge`` zero, running clamp) and streamed in chunks of ``adapter_options.chunk_ms`` (default 1000 ms);
the question of Spoken-SQuAD is in the prompt. Quality: WER (``metric`` ``wer`` = basic normalisation,
``wer-whisper`` = Whisper's English normaliser) for LibriSpeech, SQuAD F1 for Spoken-SQuAD.
"""

from __future__ import annotations

from proactive_jax.models.kinds import is_audio
import dataclasses
import logging

logger = logging.getLogger(__name__)

AUDIO_EVAL_TASKS = ("librispeech", "spoken-squad")


def audio_items(cfg, split: str, n: int):
    from proactive_jax.data.audio_tasks import adapt_audio_rows, load_audio_rows, load_manifest
    from proactive_jax.evaluation.results import EvalError

    if cfg.dataset is None:
        raise EvalError(f"task {cfg.task!r} needs a dataset (dataset.source/path/...)")
    spec = dataclasses.replace(cfg.dataset, split=split)
    if spec.source == "files" and str(spec.path).endswith(".jsonl"):
        return load_manifest(spec.path, task=cfg.task)[:n]
    rows = load_audio_rows(dataclasses.replace(spec, max_rows=spec.max_rows or n), None)
    return adapt_audio_rows(rows, cfg.task, dataset=spec.label, split=split)[:n]


def run_audio_eval(cfg, model_cfg, params, tok) -> dict:
    from proactive_jax.data.render import audio_parts
    from proactive_jax.method.audio_stream import audio_embeddings, audio_example
    from proactive_jax.models.audio_config import chunk_tokens_from_ms
    from proactive_jax.data.render import eos_ids_for
    from proactive_jax.evaluation.sweep import EvalItem, evaluate_heads
    from proactive_jax.evaluation.results import EvalError

    if not is_audio(model_cfg):
        raise EvalError(f"task {cfg.task!r} needs a qwen2_audio checkpoint, got {model_cfg.model_type}")
    opts = dict(cfg.adapter_options)
    K = chunk_tokens_from_ms(float(opts.get("chunk_ms", 1000)), model_cfg.encoder, "adapter_options.chunk_ms")

    def items(split, n):
        out = []
        for it in audio_items(cfg, split, n):
            question = it.prompt_text
            p = audio_parts(tok, question, opts.get("system", "You are a helpful assistant."))
            emb = audio_embeddings(model_cfg, params, it.waveform, chunk_tokens=K, name=it.id)
            target = tok.encode(it.target_text, add_special_tokens=False) or [0]
            ex = audio_example(p["prompt"], emb, K, p["end"], p["header"], target, p["audio_id"])
            out.append(EvalItem(it.id, ex, list(it.references)))
        return out

    test = items(cfg.split, cfg.num_examples)
    calib = items(cfg.calibration_split, cfg.calibration_examples) if cfg.calibration_split else None
    metric = cfg.metric or ("wer" if cfg.task == "librispeech" else "squad")
    return evaluate_heads(model_cfg.text, params["language_model"], test, list(cfg.heads), cfg.out_dir,
                          task=cfg.task, detokenize=lambda t: tok.decode(list(t), skip_special_tokens=True).strip(),
                          eos_ids=eos_ids_for(tok, model_cfg.text), word_starts=None,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, calibration=calib,
                          metric=metric, progress=cfg.progress, calibration_pool=cfg.calibration_pool,
                          calibration_eps=cfg.calibration_eps)
