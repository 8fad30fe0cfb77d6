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
    p.add_argument("--text", default=None, help="the source text to stream (split into words); or use --live")
    p.add_argument("--live", action="store_true",
                   help="read the source from standard input as it arrives (a word per unit, or a line per unit "
                        "with --unit sentence) and print the writes as they happen; end of input = end of source")
    p.add_argument("--audio", default=None, help="a WAV (or, with soundfile, FLAC...) file to stream chunk by chunk "
                   "through a Qwen2-Audio checkpoint (instead of --text); with --live also '-': raw mono 16 kHz "
                   "PCM (--pcm) read from standard input as it arrives")
    p.add_argument("--chunk-ms", type=float, default=1000.0, help="audio chunk (unit) length in ms, a multiple of 40")
    p.add_argument("--sample-rate", type=int, default=16000,
                   help="--live --audio -: the sampling rate of the raw PCM on standard input (resampled to 16 kHz)")
    p.add_argument("--pcm", default="s16le", choices=("s16le", "f32le"),
                   help="--live --audio -: the raw PCM sample format on standard input (16 kHz mono)")
    p.add_argument("--piece-ms", type=float, default=100.0,
                   help="--live --audio: the audio read per push in ms (any length; chunks are buffered)")
    p.add_argument("--pace", type=float, default=1.0,
                   help="--live --audio FILE: feed the file at this multiple of real time (0: as fast as possible)")
    p.add_argument("--max-source-len", type=int, default=None,
                   help="--live: source capacity in tokens (prompt + units + end; default 1024)")
    p.add_argument("--long-form", action="store_true",
                   help="--live: a stream without an end on a bounded window: the model closes segments as it goes "
                        "(sentence end or end-of-turn) and keeps only the prompt and a recent context; a blank line "
                        "ends a turn (the model answers; the turn stays in the next turn's context)")
    p.add_argument("--window", type=int, default=None,
                   help="--live --long-form: source tokens per segment (prompt + kept context + units + end; "
                        "default 256; implies --long-form); a quarter of it is kept source, an eighth kept output")
    p.add_argument("--prompt", default="", help="task text shown up front (instruction, question)")
    p.add_argument("--unit", default="word", choices=("word", "token", "sentence"))
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--system", default=None, help="system message for the chat template")


def status_line(args: argparse.Namespace) -> str:
    return f"loading {args.checkpoint} ..."


def _model_and_tokenizer(args: argparse.Namespace):
    """``(config, params, tokenizer)`` for ``--checkpoint`` / ``--step`` / ``--tokenizer``; the head is checked first."""
    from proactive_jax.method.heads import parse_head
    from proactive_jax.training.loading import load_model_and_tokenizer

    parse_head(args.head)
    return load_model_and_tokenizer(args.checkpoint, args.step, args.tokenizer)


def run_decode_cli(args: argparse.Namespace) -> int:
    if args.text is not None and (args.live or args.audio is not None) or (args.audio == "-" and not args.live):
        print("proactive-jax decode: give exactly one of --text and --audio, or --live (with --audio SRC for "
              "live audio; SRC '-' = raw PCM on standard input)", file=sys.stderr)
        return 2
    if args.live and args.audio is not None:
        from proactive_jax.cli.decode_audio import run_live_audio

        return run_live_audio(args)
    if args.audio is not None:
        from proactive_jax.cli.decode_audio import run_audio_decode

        return run_audio_decode(args)
    if args.live:
        return run_live(args)
    if args.text is None:
        print("proactive-jax decode: give exactly one of --text and --audio (--text TEXT, or --live to read the "
              "source from standard input)", file=sys.stderr)
        return 2

    from proactive_jax.data import TextExample, render_example, split_words, template_parts, word_start_table
    from proactive_jax.method.decode import stream_decode
    from proactive_jax.method.trace import format_events, interleave
    from proactive_jax.data.render import eos_ids_for

    try:
        cfg, params, tok = _model_and_tokenizer(args)
        units = split_words(args.text)
        if not units:
            raise ValueError("--text is empty: nothing to stream")
        unknown = unknown_words(tok, [args.text, args.prompt or ""])
        if unknown:
            print(f"proactive-jax decode: {len(unknown)} word{'s' if len(unknown) > 1 else ''} not in the tokenizer's "
                  f"vocabulary, read as {tok.unk_token}: {', '.join(map(repr, unknown))}", file=sys.stderr)
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


def unknown_words(tok, texts) -> list[str]:
    """The whitespace words of ``texts`` (each once, in order) that the tokenizer maps to its unknown token."""
    unk = getattr(tok, "unk_token_id", None)
    if unk is None:
        return []
    words = dict.fromkeys(w for t in texts for w in t.split())
    return [w for w in words if w != tok.unk_token and unk in tok.encode(w, add_special_tokens=False)]


def warn_unknown(tok, unit: str, seen: set) -> None:
    """``decode --live``: one line for each word of ``unit`` outside the tokenizer's vocabulary, the first time."""
    new = [w for w in unknown_words(tok, [unit]) if w not in seen]
    seen.update(new)
    for w in new:
        print(f"\nproactive-jax decode: {w!r} is not in the tokenizer's vocabulary, read as {tok.unk_token} "
              f"(said once per word)", file=sys.stderr, flush=True)


def _live_units(stream, unit: str, turns: bool = False):
    """Source units from a text stream as they arrive: whitespace words, or whole lines (``sentence``); with
    ``turns``, None for a blank line (the end of a turn). Bytes that are not UTF-8 (which Python's standard input
    passes on as lone surrogates) become U+FFFD, with one warning."""
    warned = False
    for line in iter(stream.readline, ""):
        clean = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if clean != line and not warned:
            print("proactive-jax decode: standard input is not valid UTF-8; undecodable bytes are read as U+FFFD",
                  file=sys.stderr)
            warned = True
        line = clean
        if turns and not line.strip():
            yield None
        elif unit == "sentence":
            if line.strip():
                yield line.strip()
        else:
            yield from line.split()


def run_live(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    """``decode --live``: a :class:`.session.StreamSession` fed from standard input, writes printed at once."""
    import numpy as np

    from proactive_jax.errors import SessionError
    from proactive_jax.method.session import StreamSession

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        if args.unit == "token":
            raise ValueError("--live streams words (--unit word) or lines (--unit sentence), not tokens")
        options = dict(max_source_len=args.max_source_len)
        if args.long_form or args.window is not None:
            options = _long_form_options(args)
        cfg, params, tok = _model_and_tokenizer(args)
        session = StreamSession.from_tokenizer(cfg, params, args.head, tok, prompt_text=args.prompt,
                                               system=args.system, max_new_tokens=args.max_new_tokens, **options)
    except (ValueError, FileNotFoundError) as e:
        print(f"proactive-jax decode: {e}", file=sys.stderr)
        return 2
    print(f"ready: type the source ({args.unit}s; Ctrl-D ends it)", file=sys.stderr, flush=True)
    if "long_form" in options:
        return _run_long_form(session, stdin, stdout, args, tok)
    shown = ""

    def show():
        nonlocal shown
        text = tok.decode(session.tokens, skip_special_tokens=True)
        if text.startswith(shown):  # print only what is new (a token may change how earlier bytes decode)
            stdout.write(text[len(shown):])
        else:
            stdout.write("\n" + text)
        stdout.flush()
        shown = text

    unknown: set = set()
    for u in _live_units(stdin, args.unit):
        if session.done:
            break
        warn_unknown(tok, u, unknown)
        try:
            session.push_text(u)
        except SessionError as e:
            print(f"\nproactive-jax decode: {e}", file=sys.stderr)
            return 2
        show()
    if session.units_pushed == 0:
        print("proactive-jax decode: standard input ended before any word: nothing to stream", file=sys.stderr)
        return 2
    if not session.closed:
        session.finish()
    show()
    stdout.write("\n")
    secs = session.decision_seconds
    print(f"phi: {session.phi} (M = {session.units_pushed}; M+1 = the end marker was read); "
          f"{len(secs)} decisions, median {1e3 * float(np.median(secs)) if secs else 0:.1f} ms each",
          file=sys.stderr)
    return 0


def _long_form_options(args: argparse.Namespace) -> dict:
    from proactive_jax.method.longform import LongForm

    window = 256 if args.window is None else args.window
    if window < 64:
        raise ValueError(f"--window {window}: a long-form window needs at least 64 source tokens")
    if args.max_source_len is not None:
        raise ValueError("--max-source-len sizes a one-turn session; with --long-form the window is --window")
    return dict(long_form=LongForm(window=window, carry_source=window // 4, carry_target=window // 8, keep_segments=4),
                unit_capacity=min(16, window // 8) if args.unit == "word" else window // 8)


def _run_long_form(session, stdin, stdout, args: argparse.Namespace, tok) -> int:
    """``decode --live --long-form``: the writes are printed as they come; text is decoded from the last commit
    point only (a bounded amount per push, however long the stream)."""
    import numpy as np

    from proactive_jax.errors import SessionError

    mark, shown, tail = 0, "", ""  # tokens before ``mark`` are printed for good; ``tail``: the last printed char

    def show(commit: bool = False):
        nonlocal mark, shown, tail
        new = session.tokens_from(mark)
        text = tok.decode(new, skip_special_tokens=True)
        if not shown and text and tail and not tail.isspace() and not text[0].isspace():
            text = " " + text  # a decode that starts at a commit point has no leading space
        out = text[len(shown):] if text.startswith(shown) else "\n" + text
        stdout.write(out)
        stdout.flush()
        tail = (out or tail)[-1:] if out else tail
        shown = text
        if commit or len(new) >= 64:
            mark, shown = mark + len(new), ""

    in_turn, unknown = 0, set()  # units of the current turn; the unknown words said so far
    for u in _live_units(stdin, args.unit, turns=True):
        if u is not None:
            warn_unknown(tok, u, unknown)
        try:
            if u is None:  # a blank line ends the turn: the model answers; the turn stays in the context
                if in_turn:
                    session.end_turn()
                    show(commit=True)
                    stdout.write("\n")
                in_turn, tail = 0, ""
                continue
            session.push_text(u)
            in_turn += 1
        except SessionError as e:
            print(f"\nproactive-jax decode: {e}", file=sys.stderr)
            return 2
        show()
    if session.units_pushed == 0:
        print("proactive-jax decode: standard input ended before any word: nothing to stream", file=sys.stderr)
        return 2
    if in_turn:  # (after a blank line the last turn was answered already)
        session.finish()
    show(commit=True)
    stdout.write("\n")
    secs = session.decision_seconds
    print(f"long-form: {session.units_pushed} units, {mark} tokens written; {len(secs)} decisions, median "
          f"{1e3 * float(np.median(secs)) if secs else 0:.1f} ms each", file=sys.stderr)
    return 0
