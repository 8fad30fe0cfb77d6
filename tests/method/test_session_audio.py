"""Live audio sessions (method/audio_session.py): waveform pieces or chunk embeddings pushed one by one ==
stream_decode on the whole AudioStreamExample; the incremental features and encoding == the offline ones."""
import numpy as np
import pytest

from proactive_jax import SessionBatch, StreamSession
from proactive_jax.data.audio import log_mel_windows
from proactive_jax.method import session_programs as progs
from proactive_jax.method.audio_session import AudioRows, LiveAudio
from proactive_jax.method.decode import stream_decode
from proactive_jax.errors import SessionError
from tests.helpers import AUDIO_FIXTURES as FIX
from tests.method.util import audio_setup, compiles

MAX_NEW = 8
CAPS = dict(max_source_len=64, prompt_capacity=4, header_capacity=2)  # one compiled program per batch size
PIECES = (1234, 2000, 3333)  # samples per push, per row: not multiples of a chunk (3200 samples)


@pytest.fixture(scope="module")
def setup():
    s = audio_setup()
    first = stream_decode(s["cfg"].text, s["lm"], s["exs"], "batch", MAX_NEW, eos_ids=[])
    s["eos"] = [int(first[1].tokens[2])]  # an id the model emits: stopping at eos is exercised
    return s


def _tau(s, base):
    """A tau midway between two observed unforced scores (mixes READs and WRITEs)."""
    res = stream_decode(s["cfg"].text, s["lm"], s["exs"], base + ",tau=0.5", MAX_NEW, eos_ids=s["eos"])
    pool = np.unique(np.concatenate([r.scores[~r.forced] for r in res]))
    i = len(pool) // 2
    return f"{base},tau={round(float(pool[i - 1] + pool[i]) / 2, 5)}"


def _pieces(wave, size):
    return [wave[k:k + size] for k in range(0, wave.size, size)]


def run_waveforms(s, head, batch=None, **options):
    """Every example's waveform pushed in pieces of PIECES[i] samples (all rows together), each row finished
    after its last piece."""
    sb = batch or SessionBatch(s["cfg"], s["params"], head, prompts=[e.prompt for e in s["exs"]],
                               ends=[e.end for e in s["exs"]], headers=[e.header for e in s["exs"]],
                               max_new_tokens=MAX_NEW, eos_ids=s["eos"], **CAPS, **options)
    pieces = [_pieces(w, PIECES[i]) for i, w in enumerate(s["waves"])]
    for k in range(max(map(len, pieces))):
        sb.push([p[k] if k < len(p) else None for p in pieces])
        ending = [i for i, p in enumerate(pieces) if len(p) == k + 1]
        if ending:
            sb.finish(ending)
    return sb


def assert_same(live, ref, head, scores=True):
    np.testing.assert_array_equal(live.tokens, ref.tokens, err_msg=head)
    np.testing.assert_array_equal(live.phi, ref.phi, err_msg=head)
    np.testing.assert_array_equal(live.writes, ref.writes, err_msg=head)
    np.testing.assert_array_equal(live.reads, ref.reads, err_msg=head)
    np.testing.assert_array_equal(live.forced, ref.forced, err_msg=head)
    assert live.M == ref.M and live.finished == ref.finished
    if scores:
        np.testing.assert_allclose(live.scores, ref.scores, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# Features and encoding: incremental == offline
# ---------------------------------------------------------------------------------------------

def test_live_features_equal_offline_running_clamp(setup):
    """Chunks made from arbitrary pieces: their log-mel frames == log_mel_windows(clamp='running') frame for
    frame, each chunk made as soon as its samples (+ the 40-sample STFT look-ahead) were heard."""
    cfg, wave = setup["cfg"], setup["waves"][2]  # 1.7 s: three 0.8 s windows, the last one partial
    enc = cfg.encoder
    feats, fam = log_mel_windows(wave, 16000, enc.num_mel_bins, clamp="running", window_frames=enc.num_frames)
    live = LiveAudio(cfg.chunk, enc.num_frames, enc.num_mel_bins)
    chunks, heard = [], 0
    for piece in _pieces(wave, 777):
        got = live.add(piece)
        heard += piece.size
        assert len(chunks) + len(got) == live.ready_after(heard)  # exactly the chunks whose audio is heard
        for c in got:  # a chunk's samples, and the look-ahead, were heard when it was made
            assert 3200 * (len(chunks) + 1) + 40 <= heard or (len(chunks) + 1) % 4 == 0
            chunks.append(c)
    chunks += live.flush()
    tokens = [c[1] for c in chunks]
    assert sum(tokens) == live.final_tokens(wave.size) == setup["exs"][2].unit_embeds.shape[0]
    assert tokens[:-1] == [cfg.chunk] * (len(tokens) - 1) and [c[2] for c in chunks].count(True) == 3
    per_window = enc.num_frames // (4 * cfg.chunk)
    for n, (mel, _, _) in enumerate(chunks):
        w, c = divmod(n, per_window)
        frames = slice(4 * cfg.chunk * c, 4 * cfg.chunk * (c + 1))
        np.testing.assert_allclose(mel, feats[w][:, frames].T, atol=1e-6, rtol=0, err_msg=f"chunk {n}")


def test_incremental_encoding_equals_whole_utterance(setup):
    """Three rows at different positions / windows, encoded together chunk by chunk (the session's encoder)
    == audio_embeddings of each whole utterance (causal, conv edge zero, running clamp)."""
    cfg, params = setup["cfg"], setup["params"]
    rows = AudioRows(cfg, params, 3)
    pieces = [_pieces(w, PIECES[i]) for i, w in enumerate(setup["waves"])]
    got = [[] for _ in range(3)]
    for k in range(max(map(len, pieces))):
        for i, p in enumerate(pieces):
            if k < len(p):
                rows.take(i, "wave", p[k], final=k == len(p) - 1)
        while (nxt := rows.next_units(set())) is not None:
            ulen, emb = nxt
            for i in np.flatnonzero(ulen):
                got[i].append(np.asarray(emb[i, :ulen[i]]))
    for i, ex in enumerate(setup["exs"]):
        np.testing.assert_allclose(np.concatenate(got[i]), ex.unit_embeds, atol=2e-5, rtol=0, err_msg=f"row {i}")
        assert len(got[i]) == ex.M


# ---------------------------------------------------------------------------------------------
# Decoding: session == stream_decode on the whole example
# ---------------------------------------------------------------------------------------------

HEADS = ["batch", "wait-k:k=2", "entropy:decide_at=token", "attention:layers=-1:,min_read=2"]


@pytest.mark.parametrize("head", HEADS)
def test_audio_session_equals_stream_decode(setup, head):
    s = setup
    if head.startswith(("entropy", "attention")):
        head = _tau(s, head)
    ref = stream_decode(s["cfg"].text, s["lm"], s["exs"], head, MAX_NEW, eos_ids=s["eos"])
    # waveform pieces, three rows in one batch (finishing at different pushes)
    sb = run_waveforms(s, head)
    for i, r in enumerate(ref):
        assert_same(sb.result(i), r, head, scores=not head.startswith(("batch", "wait-k")))
    if head != "batch":
        assert any(len(set(r.phi.tolist())) >= 2 for r in ref), "trivial traces"
    if head.startswith("wait-k"):  # chunk embeddings, one StreamSession per example; and a step per dispatch
        for ex, r in zip(s["exs"], ref):
            one = StreamSession(s["cfg"], s["params"], head, prompt=ex.prompt, end=ex.end, header=ex.header,
                                max_new_tokens=MAX_NEW, eos_ids=s["eos"], **CAPS)
            starts = np.cumsum([0] + [len(u) for u in ex.units])
            for a, b in zip(starts[:-1], starts[1:]):
                one.push(ex.unit_embeds[a:b])
            one.finish()
            assert_same(one.result(), r, head, scores=False)
        stepwise = run_waveforms(s, head, fused=False)
        for i, r in enumerate(ref):
            assert_same(stepwise.result(i), r, head, scores=False)


def test_release_and_join_reuse_a_row_without_recompiling(setup):
    """A server's slot reuse: row 0's session ends, a new one joins in its slot (caches, decisions, audio
    buffer and encoder state reset) while row 2 keeps streaming; the joined session == a fresh one."""
    s = setup
    head = "wait-k:k=2"
    ref = stream_decode(s["cfg"].text, s["lm"], s["exs"], head, MAX_NEW, eos_ids=s["eos"])
    sb = run_waveforms(s, head)  # every row has streamed a whole example: everything is compiled
    a, c = s["exs"][0], s["exs"][2]
    order = [2, 0, 1]  # row r now streams example order[r]; rows 0 and 1 leave and rejoin, row 2 first restarts

    def reuse():
        traces = progs.TRACE_COUNT
        sb.release(1)
        assert sb.done[1] and sb.closed[1]
        for r in (0, 1, 2):
            e = s["exs"][order[r]]
            sb.join(r, prompt=e.prompt, end=e.end, header=e.header)
        assert sb.units_pushed == [0, 0, 0] and sb.tokens == [[], [], []]
        pieces = [_pieces(s["waves"][order[r]], PIECES[r]) for r in range(3)]
        for k in range(max(map(len, pieces))):
            sb.push([p[k] if k < len(p) else None for p in pieces])
            ending = [r for r, p in enumerate(pieces) if len(p) == k + 1]
            if ending:
                sb.finish(ending)
        assert progs.TRACE_COUNT == traces

    assert compiles(reuse) == []
    for r in range(3):
        assert_same(sb.result(r), ref[order[r]], head, scores=False)
    with pytest.raises(SessionError, match="holds a live session"):
        sb2 = SessionBatch(s["cfg"], s["params"], head, prompts=[a.prompt], ends=[a.end], headers=[a.header],
                           max_new_tokens=MAX_NEW, eos_ids=[], **CAPS)
        sb2.join(0, prompt=c.prompt, end=c.end, header=c.header)
    with pytest.raises(SessionError, match="over this batch's capacity of 4"):
        sb.join(0, prompt=[5] * 5, end=a.end, header=a.header)
    with pytest.raises(SessionError, match="row 3 does not exist"):
        sb.release(3)


# ---------------------------------------------------------------------------------------------
# Bad input: one line each, nothing changes
# ---------------------------------------------------------------------------------------------

def test_bad_audio_input_is_refused_and_the_session_stays_usable(setup):
    s = setup
    ex, wave = s["exs"][1], s["waves"][1]
    make = lambda head="wait-k:k=2": StreamSession(s["cfg"], s["params"], head, prompt=ex.prompt,  # noqa: E731
                                                   end=ex.end, header=ex.header, max_new_tokens=MAX_NEW,
                                                   eos_ids=s["eos"], **CAPS)
    one = make()
    one.push_audio(wave[:5000])
    state = (one.tokens, one.phi, one.units_pushed)
    D = s["cfg"].text.hidden_size
    cases = [
        (lambda: one.push_audio(wave[5000:6000], sampling_rate=8000), "sampling rate 8000 Hz, expected 16000"),
        (lambda: one.push(np.stack([wave[:100], wave[:100]])), "stereo"),
        (lambda: one.push(np.full(10, np.nan, np.float32)), "NaN"),
        (lambda: one.push([7, 8]), "got token ids .a text unit., but this is an audio session"),
        (lambda: one.push(np.zeros((5, D), np.float32)), "after waveform pushes"),
        (lambda: one.push(np.zeros(10, np.int64)), "int64 values"),
    ]
    for op, msg in cases:
        with pytest.raises(SessionError, match=msg):
            op()
        assert (one.tokens, one.phi, one.units_pushed) == state  # nothing changed
    assert one.push_audio(wave[5000:5000]) == []  # an empty piece adds nothing
    for piece in _pieces(wave[5000:], 4000):
        one.push(piece)
    one.finish()
    ref = stream_decode(s["cfg"].text, s["lm"], s["exs"], "wait-k:k=2", MAX_NEW, eos_ids=s["eos"])[1]
    assert one.tokens == ref.tokens.tolist() and one.phi == ref.phi.tolist()
    for op in (lambda: one.push_audio(wave[:100]), one.finish):
        with pytest.raises(SessionError, match="closed"):
            op()
    emb = make()
    for bad, msg in [(np.zeros((6, D), np.float32), "6 tokens, expected 5"), (np.zeros((4, D - 1)), "stereo")]:
        with pytest.raises(SessionError, match=msg):
            emb.push(bad)
    emb.push(ex.unit_embeds[:3])  # a shorter chunk: the end of the audio
    with pytest.raises(SessionError, match="only finish"):
        emb.push(ex.unit_embeds[3:8])
    # capacity: 3 prompt + 2 end + chunks of 5 in max_source_len=64: 11 chunks fit, a 12th would not
    full = make("batch")  # (a row that stopped writing takes any amount: it only counts its source)
    for _ in range(11):
        full.push(ex.unit_embeds[:5])
    with pytest.raises(SessionError, match="max_source_len=64"):
        full.push(ex.unit_embeds[:5])
    assert full.units_pushed == 11 and full.finish() is not None
    heard = make("batch")  # waveform: 2 windows + 0.6 s = 55 tokens fit; 0.2 s more (60 + 5 > 64) would not
    heard.push_audio(np.zeros(2 * 12800 + 9600, np.float32))
    with pytest.raises(SessionError, match="reach 65 tokens.*max_source_len=64"):
        heard.push_audio(np.zeros(3200, np.float32))
    assert heard.units_pushed == 10  # the 11th chunk waits for its 40-sample look-ahead
    # a text session refuses audio
    text_cfg = s["cfg"].text
    txt = StreamSession(text_cfg, s["lm"], "wait-k:k=2", prompt=[5], end=[7], header=[8], max_new_tokens=2, eos_ids=[])
    for bad in (wave[:10], [0.5, 0.25]):
        with pytest.raises(SessionError, match="expected a list of token ids.*Qwen2-Audio"):
            txt.push(bad)
    with pytest.raises(SessionError, match="push_audio: this is a text session"):
        txt.push_audio(wave[:10])


# ---------------------------------------------------------------------------------------------
# `proactive-jax decode --live --audio`
# ---------------------------------------------------------------------------------------------

def _cli_args(ckpt, *extra):
    import argparse

    from proactive_jax.cli.decode import add_decode_args

    p = argparse.ArgumentParser()
    add_decode_args(p)
    return p.parse_args(["--checkpoint", str(ckpt), "--head", "wait-k:k=2", "--chunk-ms", "200",
                         "--max-new-tokens", "6", *extra])


class PcmFeed:
    """A binary stdin handing out at most ``size`` bytes per read; logs how much had been printed by then."""

    def __init__(self, data: bytes, size: int, out):
        self.data, self.size, self.out, self.printed_at_read = data, size, out, []

    def read(self, n):
        self.printed_at_read.append(len(self.out.getvalue()))
        got, self.data = self.data[:min(n, self.size)], self.data[min(n, self.size):]
        return got


def test_decode_live_audio_equals_offline_decode(audio_checkpoint, capsys):
    """A WAV file fed in real time (pace 0 here) and the same audio as raw s16le PCM on stdin print, as
    they arrive, the tokens `decode --audio` finds offline; M and phi agree."""
    import io
    import re

    from proactive_jax.cli import main
    from proactive_jax.data.audio import read_audio
    from proactive_jax.cli.decode_audio import run_live_audio

    wav = FIX / "tone_b.wav"
    common = ["--head", "wait-k:k=2", "--chunk-ms", "200", "--max-new-tokens", "6"]
    assert main(["decode", "--checkpoint", str(audio_checkpoint), "--audio", str(wav), *common]) == 0
    off = capsys.readouterr().out
    output = re.search(r"output: (.*)\n", off).group(1)
    phi = re.search(r"phi: (\[[^\]]*\])", off).group(1)
    assert main(["decode", "--checkpoint", str(audio_checkpoint), "--live", "--audio", str(wav), "--pace", "0",
                 "--piece-ms", "130", *common]) == 0
    got = capsys.readouterr()
    assert repr(got.out.strip()) == output and f"phi: {phi} (M = 6 chunks of 200 ms" in got.err
    wave, _ = read_audio(wav)
    pcm = np.round(wave * 32768).astype("<i2").tobytes()
    out = io.StringIO()
    stdin = PcmFeed(pcm, 3000, out)  # pieces as a pipe delivers them (not whole samples, not whole chunks)
    assert run_live_audio(_cli_args(audio_checkpoint, "--live", "--audio", "-", "--piece-ms", "80"), stdin=stdin,
                          stdout=out) == 0
    assert repr(out.getvalue().strip()) == output and f"phi: {phi}" in capsys.readouterr().err
    # wait-k:k=2 writes once 2 chunks (400 ms = 12800 bytes) are in: before the input ended
    assert 0 < stdin.printed_at_read[len(pcm) // 3000 - 1]


def test_decode_live_audio_bad_input(audio_checkpoint, capsys):
    import io

    from proactive_jax.cli import main
    from proactive_jax.cli.decode_audio import run_live_audio

    assert main(["decode", "--checkpoint", str(audio_checkpoint), "--audio", "-"]) == 2
    assert "SRC '-' = raw PCM on standard input" in capsys.readouterr().err
    assert run_live_audio(_cli_args(audio_checkpoint, "--live", "--audio", "-", "--max-source-len", "40"),
                          stdin=io.BytesIO(b"\x01\x02" * 32000), stdout=io.StringIO()) == 2
    assert "max_source_len=40" in capsys.readouterr().err
    assert run_live_audio(_cli_args(audio_checkpoint, "--live", "--audio", "nope.wav"), stdout=io.StringIO()) == 2
    assert "nope.wav: audio file does not exist" in capsys.readouterr().err
