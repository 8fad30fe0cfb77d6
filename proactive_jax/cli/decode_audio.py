"""`proactive-jax decode --audio FILE.wav`: stream an audio file chunk by chunk through a Qwen2-Audio
checkpoint with a decision head and print the READ/WRITE trace (chunks and seconds).

The utterance is encoded once under the causal mask with ``conv_edge`` zero and the running log-mel clamp,
so chunk i's embeddings depend only on audio up to chunk i (method.md 7b); each READ feeds the next chunk.

`proactive-jax decode --live --audio SRC`: a live audio session (:mod:`.audio_session`) fed as the audio
arrives, writes printed as they happen. ``SRC`` ``-`` reads raw mono 16 kHz PCM from standard input
(``--pcm s16le``, the default: what ``arecord -f S16_LE -r 16000 -c 1 -t raw`` or ``ffmpeg ... -f s16le
-ar 16000 -ac 1 -`` write; or ``f32le``); a file (WAV, or what soundfile reads) is fed in pieces of
``--piece-ms`` at real-time pace (``--pace 0``: as fast as possible). The tokens equal ``decode --audio``'s
on the same audio.
"""

from __future__ import annotations

from proactive_jax.models.kinds import is_audio
import logging
import sys
import time


logger = logging.getLogger(__name__)


def run_audio_decode(args) -> int:
    from proactive_jax.data.render import audio_parts

    from proactive_jax.data.audio import AudioError, read_audio
    from proactive_jax.models.audio_config import chunk_tokens_from_ms
    from proactive_jax.training.loading import load_model_and_tokenizer
    from proactive_jax.data.render import eos_ids_for
    from proactive_jax.method.audio_stream import audio_embeddings, audio_example
    from proactive_jax.method.decode import stream_decode
    from proactive_jax.method.trace import format_events, interleave
    from proactive_jax.method.heads import parse_head

    try:
        parse_head(args.head)
        cfg, params, tok = load_model_and_tokenizer(args.checkpoint, getattr(args, "step", None), args.tokenizer)
        if not is_audio(cfg):
            raise ValueError(f"{args.checkpoint}: --audio needs a qwen2_audio checkpoint, got {cfg.model_type}")
        K = chunk_tokens_from_ms(args.chunk_ms, cfg.encoder, "--chunk-ms")
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


PCM_FORMATS = {"s16le": ("<i2", 32768.0), "f32le": ("<f4", 1.0)}


def pcm_pieces(stream, fmt: str, piece_samples: int):
    """Float32 pieces of raw mono PCM read from a binary stream as it arrives (``fmt``: s16le | f32le)."""
    import numpy as np

    dtype, scale = PCM_FORMATS[fmt]
    width = np.dtype(dtype).itemsize
    rest = b""
    while True:
        data = stream.read(piece_samples * width)
        if not data:
            break
        data = rest + data
        n = len(data) // width * width
        rest = data[n:]
        if n:
            yield np.frombuffer(data[:n], dtype).astype(np.float32) / scale
    if rest:
        logger.warning("raw PCM input ended in the middle of a sample (%d trailing bytes dropped)", len(rest))


def file_pieces(path, piece_samples: int, pace: float, sleep=time.sleep, clock=time.perf_counter):
    """Pieces of an audio file, each yielded when it would have been heard (``pace`` 1 = real time; 0 =
    at once)."""
    from proactive_jax.data.audio import read_audio

    wave, _ = read_audio(path)  # any rate and channel count: mixed to mono, resampled to 16 kHz
    t0 = clock()
    for start in range(0, wave.size, piece_samples):
        piece = wave[start:start + piece_samples]
        if pace > 0:
            sleep(max(0.0, t0 + (start + piece.size) / 16000 / pace - clock()))
        yield piece


def resampled_pieces(pieces, sampling_rate: int):
    """Pieces of mono PCM at ``sampling_rate`` resampled to 16 kHz as they arrive (soxr's streaming resampler, the
    same filter as :func:`proactive_jax.data.audio.resample`'s VHQ setting)."""
    import numpy as np

    from proactive_jax.data.audio import AudioError

    if sampling_rate < 1000:
        raise AudioError(f"--sample-rate={sampling_rate}: expected a sampling rate in Hz (e.g. 16000, 44100, 48000)")
    import soxr

    stream = soxr.ResampleStream(float(sampling_rate), 16000.0, 1, dtype="float32", quality="VHQ")
    for x in pieces:
        y = stream.resample_chunk(np.asarray(x, np.float32))
        if y.size:
            yield y
    y = stream.resample_chunk(np.zeros(0, np.float32), last=True)
    if y.size:
        yield y


def run_live_audio(args, stdin=None, stdout=None, sleep=time.sleep) -> int:
    """``decode --live --audio SRC``: audio pieces from ``SRC`` (``-``: raw PCM on stdin) into a live session."""
    from proactive_jax.data.render import audio_parts
    import numpy as np

    from proactive_jax.data.audio import AudioError
    from proactive_jax.models.audio_config import chunk_tokens_from_ms
    from proactive_jax.training.loading import load_model_and_tokenizer
    from proactive_jax.data.render import eos_ids_for
    from proactive_jax.method.heads import parse_head
    from proactive_jax.errors import SessionError
    from proactive_jax.method.session import StreamSession

    stdout = stdout or sys.stdout
    piece = int(round(args.piece_ms * 16))
    try:
        parse_head(args.head)
        if piece < 1:
            raise ValueError(f"--piece-ms={args.piece_ms}: expected at least 1/16 ms (one sample)")
        cfg, params, tok = load_model_and_tokenizer(args.checkpoint, getattr(args, "step", None), args.tokenizer)
        if not is_audio(cfg):
            raise ValueError(f"{args.checkpoint}: --audio needs a qwen2_audio checkpoint, got {cfg.model_type}")
        cfg = cfg.replace(chunk_tokens=chunk_tokens_from_ms(args.chunk_ms, cfg.encoder, "--chunk-ms"))
        parts = audio_parts(tok, args.prompt, args.system)
        session = StreamSession(cfg, params, args.head, prompt=parts["prompt"], end=parts["end"],
                                header=parts["header"], max_new_tokens=args.max_new_tokens,
                                eos_ids=eos_ids_for(tok, cfg.text), max_source_len=args.max_source_len)
        if args.audio == "-":
            pieces = pcm_pieces(stdin or sys.stdin.buffer, args.pcm, piece)
            rate = getattr(args, "sample_rate", 16000)
            if rate != 16000:
                pieces = resampled_pieces(pieces, rate)
        else:
            pieces = file_pieces(args.audio, piece, args.pace, sleep=sleep)
        shown = _Shown(tok, stdout)
        pushes = []
        for x in pieces:
            if session.done:
                break
            t0 = time.perf_counter()
            session.push_audio(x)
            pushes.append(time.perf_counter() - t0)
            shown.update(session.tokens)
        session.finish()
        shown.update(session.tokens)
    except (ValueError, FileNotFoundError, AudioError, SessionError) as e:
        print(f"\nproactive-jax decode: {e}", file=sys.stderr)
        return 2
    stdout.write("\n")
    K = cfg.chunk
    print(f"phi: {session.phi} (M = {session.units_pushed} chunks of {K * 40} ms; M+1 = the end marker was read); "
          f"{len(pushes)} pushes of {args.piece_ms:g} ms, median {1e3 * float(np.median(pushes)) if pushes else 0:.1f} "
          f"ms each", file=sys.stderr)
    return 0


class _Shown:
    """Prints the detokenized writes as they grow (only what is new)."""

    def __init__(self, tok, out):
        self.tok, self.out, self.text = tok, out, ""

    def update(self, tokens):
        text = self.tok.decode(list(tokens), skip_special_tokens=True)
        self.out.write(text[len(self.text):] if text.startswith(self.text) else "\n" + text)
        self.out.flush()
        self.text = text
