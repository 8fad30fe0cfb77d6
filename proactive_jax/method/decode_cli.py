"""`proactive-jax decode`: stream one text through a checkpoint with a decision head and show the
interleaving of READs and WRITEs."""

from __future__ import annotations

import argparse
import sys


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="HF directory or training run directory")
    p.add_argument("--step", type=int, default=None, help="training-run step (default: latest)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    p.add_argument("--head", default="entropy:tau=0.3", help="decision head spec, e.g. wait-k:k=3")
    p.add_argument("--text", default=None, help="the source text to stream (split into words)")
    p.add_argument("--audio", default=None, help="a WAV (or, with soundfile, FLAC...) file to stream chunk by chunk "
                   "through a Qwen2-Audio checkpoint (instead of --text)")
    p.add_argument("--chunk-ms", type=float, default=1000.0, help="audio chunk (unit) length in ms, a multiple of 40")
    p.add_argument("--prompt", default="", help="task text shown up front (instruction, question)")
    p.add_argument("--unit", default="word", choices=("word", "token", "sentence"))
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--system", default=None, help="system message for the chat template")


def run_decode_cli(args: argparse.Namespace) -> int:
    if (args.text is None) == (getattr(args, "audio", None) is None):
        print("proactive-jax decode: give exactly one of --text and --audio", file=sys.stderr)
        return 2
    if args.audio is not None:
        from .audio_decode_cli import run_audio_decode

        return run_audio_decode(args)
    from transformers import AutoTokenizer

    from ..data import TextExample, render_example, split_words, template_parts, word_start_table
    from .decode import format_events, interleave, stream_decode
    from .heads import parse_head
    from ..models.loading import eos_ids_for, load_model

    try:
        parse_head(args.head)
        cfg, params, tok_dir = load_model(args.checkpoint, args.step)
        tok_dir = args.tokenizer or tok_dir
        if tok_dir is None:
            raise ValueError(f"no tokenizer found for {args.checkpoint}; pass --tokenizer DIR")
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        units = split_words(args.text)
        if not units:
            raise ValueError("--text is empty: nothing to stream")
        text_ex = TextExample(task="cli", id="cli-0", prompt_text=args.prompt, units=units, target_text="?")
        ex = render_example(tok, text_ex, template_parts(tok, system=args.system), unit=args.unit)
        res = stream_decode(cfg, params, [ex], args.head, args.max_new_tokens, eos_ids_for(tok, cfg),
                            word_starts=word_start_table(tok, cfg.vocab_size))[0]
    except (ValueError, FileNotFoundError) as e:
        print(f"proactive-jax decode: {e}", file=sys.stderr)
        return 2
    detok = lambda t: tok.decode(list(t), skip_special_tokens=False)  # noqa: E731
    print(format_events(interleave(ex, res, detok)))
    print(f"\noutput: {tok.decode(list(res.tokens), skip_special_tokens=True).strip()!r}")
    print(f"phi: {res.phi.tolist()} (M = {res.M}; M+1 = the end marker was read)")
    return 0
