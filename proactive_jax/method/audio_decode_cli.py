"""`proactive-jax decode --audio FILE.wav`: stream an audio file chunk by chunk through a Qwen2-Audio
checkpoint with a decision head and print the READ/WRITE trace (chunks and seconds).

The utterance is encoded once under the causal mask with ``conv_edge`` zero and the running log-mel clamp,
so chunk i's embeddings depend only on audio up to chunk i (method.md 7b); each READ feeds the next chunk.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

AUDIO_SPECIALS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")


def audio_parts(tok, question: str = "", system: str | None = "You are a helpful assistant.") -> dict:
    """Token lists of the audio chat layout: prompt (system, user header, question, ``<|audio_bos|>``),
    end (``<|audio_eos|>`` + the end of the user turn), header (the assistant turn)."""
    missing = [t for t in AUDIO_SPECIALS if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        raise ValueError(f"tokenizer has no {missing} tokens (a Qwen2-Audio tokenizer is needed)")
    sys_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    q = f"{question.strip()}\n" if question.strip() else ""
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    return {"prompt": enc(f"{sys_turn}<|im_start|>user\n{q}<|audio_bos|>"), "end": enc("<|audio_eos|><|im_end|>\n"),
            "header": enc("<|im_start|>assistant\n"), "audio_id": tok.convert_tokens_to_ids("<|AUDIO|>")}


def run_audio_decode(args) -> int:
    from transformers import AutoTokenizer

    from ..data.audio import AudioError, read_audio
    from ..models.audio_config import chunk_tokens_from_ms
    from ..models.hf import load_pretrained
    from ..models.loading import eos_ids_for
    from .audio_stream import audio_embeddings, audio_example
    from .decode import format_events, interleave, stream_decode
    from .heads import parse_head

    try:
        parse_head(args.head)
        cfg, params = load_pretrained(args.checkpoint)
        if getattr(cfg, "model_type", None) != "qwen2_audio":
            raise ValueError(f"{args.checkpoint}: --audio needs a qwen2_audio checkpoint, got {cfg.model_type}")
        K = chunk_tokens_from_ms(args.chunk_ms, cfg.encoder, "--chunk-ms")
        tok = AutoTokenizer.from_pretrained(str(args.tokenizer or args.checkpoint))
        parts = audio_parts(tok, args.prompt, args.system)
        wave, sr = read_audio(args.audio)
        emb = audio_embeddings(cfg, params, wave, sampling_rate=sr, chunk_tokens=K, name=str(args.audio))
        ex = audio_example(parts["prompt"], emb, K, parts["end"], parts["header"], [0], parts["audio_id"])
        res = stream_decode(cfg.text, params["language_model"], [ex], args.head, args.max_new_tokens,
                            eos_ids_for(tok, cfg.text))[0]
    except (ValueError, FileNotFoundError, AudioError) as e:
        print(f"proactive-jax decode: {e}", file=sys.stderr)
        return 2
    detok = lambda t: tok.decode(list(t), skip_special_tokens=False)  # noqa: E731
    events = interleave(ex, res, detok)
    lines = []
    for e, line in zip(events, format_events(events).splitlines()):
        if e.kind == "READ" and e.n <= ex.M:
            line = f"READ  {e.n:>3} [audio chunk {e.n}: {(e.n - 1) * K * 0.04:.2f}-{min(e.n * K, emb.shape[0]) * 0.04:.2f} s]"
        lines.append(line)
    print("\n".join(lines))
    print(f"\noutput: {tok.decode(list(res.tokens), skip_special_tokens=True).strip()!r}")
    print(f"phi: {res.phi.tolist()} (M = {res.M} chunks of {K * 40} ms; M+1 = the end marker was read)")
    return 0
