"""The fault probe's cases for inputs as users have them: audio files (rates, channels, formats, broken files),
live standard input (empty, binary, one huge line, Ctrl-C), prepare-audio (bad rows, --overwrite, a full disk,
the raw LibriSpeech tree), plan and probe mistakes, two runs on one directory, a full disk in the middle of
training, an eval killed and rerun. Used by ``eval/fault_probe.py``; every case runs in its own directory.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 3000 * t)
    return np.stack([x, 0.5 * x], axis=1)[:, :channels].astype(np.float32) if channels > 1 else x.astype(np.float32)


def write_audio_files(d: Path) -> None:
    """The audio a user has: WAV at 16/22.05/44.1/48 kHz, stereo, 24-bit with a plain header, FLAC, MP3 (when
    ffmpeg is installed), and broken files (text named .wav, empty, cut inside the header)."""
    import soundfile as sf

    d.mkdir(parents=True, exist_ok=True)
    sf.write(d / "16k.wav", _tone(1.2, 16000), 16000, subtype="PCM_16")
    sf.write(d / "22k.wav", _tone(1.2, 22050), 22050, subtype="PCM_16")
    sf.write(d / "44k-stereo.wav", _tone(1.2, 44100, 2), 44100, subtype="PCM_16")
    sf.write(d / "48k.wav", _tone(1.2, 48000), 48000, subtype="FLOAT")
    sf.write(d / "44k.flac", _tone(1.2, 44100, 2), 44100, subtype="PCM_16")
    pcm = (np.clip(_tone(1.2, 16000), -1, 1) * (2 ** 23 - 1)).astype(np.int32)
    raw = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in pcm)
    hdr = (b"RIFF" + (36 + len(raw)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
           + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + SR.to_bytes(4, "little")
           + (SR * 3).to_bytes(4, "little") + (3).to_bytes(2, "little") + (24).to_bytes(2, "little")
           + b"data" + len(raw).to_bytes(4, "little"))
    (d / "24bit-plain.wav").write_bytes(hdr + raw)
    (d / "text.wav").write_text("this is a text file, not audio\n")
    (d / "empty.wav").write_bytes(b"")
    (d / "cut.wav").write_bytes((d / "16k.wav").read_bytes()[:30])
    if shutil.which("ffmpeg"):
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(d / "44k-stereo.wav"), str(d / "44k.mp3")],
                       check=True)
    (d / "44k-stereo.s16le").write_bytes((np.clip(_tone(1.2, 44100), -1, 1) * 32767).astype("<i2").tobytes())


def make_audio_checkpoint(out: Path) -> Path:
    """A tiny random Qwen2-Audio checkpoint with a Qwen-style tokenizer (as the tests' fixture)."""
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from proactive_jax.audio import AudioModelConfig, EncoderConfig, init_params
    from proactive_jax.models.config import ModelConfig
    from proactive_jax.models.hf_export import save_pretrained
    from tests.tokenizers_util import qwen_style_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(str(qwen_style_tokenizer_dir("qwen2.5")))
    tok.add_special_tokens({"additional_special_tokens": ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]})
    tok.save_pretrained(out.parent / "audio-tok")
    text = ModelConfig(model_type="qwen2", vocab_size=len(tok) + 3, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16, qkv_bias=True,
                       qk_norm=False, tie_word_embeddings=True)
    enc = EncoderConfig(num_mel_bins=128, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=24,
                        max_source_positions=50)
    cfg = AudioModelConfig(text=text, encoder=enc, audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"))
    return save_pretrained(cfg, init_params(cfg, 0), out, tokenizer_dir=out.parent / "audio-tok")


def write_librispeech_tree(root: Path, audio: Path) -> None:
    """``LibriSpeech/dev-clean/<speaker>/<chapter>/*.flac`` + ``<speaker>-<chapter>.trans.txt``."""
    import soundfile as sf

    ch = root / "LibriSpeech" / "dev-clean" / "84" / "121123"
    ch.mkdir(parents=True, exist_ok=True)
    x, _ = sf.read(audio / "16k.wav", dtype="float32")
    lines = []
    for i, words in enumerate(("GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES")):
        sf.write(ch / f"84-121123-{i:04d}.flac", x, SR)
        lines.append(f"84-121123-{i:04d} {words}")
    (ch / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")


HOLD_LOCK = textwrap.dedent("""
    import pathlib, sys, time
    from proactive_jax.training.loop import run_dir_lock
    with run_dir_lock(pathlib.Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _manifest(d: Path, name: str, files) -> Path:
    m = d / f"{name}.jsonl"
    m.write_text("".join(json.dumps({"audio": str(f), "text": "a tone"}) + "\n" for f in files))
    return m


def _tree_equal(a: Path, b: dict) -> bool:
    return {p.name: p.read_bytes() for p in a.iterdir()} == b if a.is_dir() else False


def build_input_cases(Case, cli, work: Path, run: Path, audio_hf: Path, audio_dir: Path, train_argv, eval_argv,
                      steps_of) -> list:
    """The cases; ``Case`` and ``cli`` come from the probe (one runner for all)."""
    cases = []
    A = lambda *extra: cli("decode", "--checkpoint", str(audio_hf), "--head", "wait-k:k=1",  # noqa: E731
                           "--chunk-ms", "200", "--max-new-tokens", "3", *extra)

    # -- audio files into decode --audio / --live --audio -------------------------------------------------------
    for name in ("16k.wav", "22k.wav", "44k-stereo.wav", "48k.wav", "44k.flac", "24bit-plain.wav", "44k.mp3"):
        if (audio_dir / name).exists():
            cases.append(Case("audio", f"decode --audio {name}", A("--audio", str(audio_dir / name)), expect="ok"))
    for name in ("text.wav", "empty.wav", "cut.wav", "missing.wav"):
        cases.append(Case("audio", f"decode --audio {name}", A("--audio", str(audio_dir / name)),
                          check=lambda d, p, n=name: None if n in p.stderr else "the message does not name the file"))
    cases.append(Case("audio", "decode --live --audio 48k.wav", A("--live", "--audio", str(audio_dir / "48k.wav"),
                                                                  "--pace", "0"), expect="ok"))
    cases.append(Case("audio", "decode --live --audio - (44.1 kHz raw PCM, --sample-rate 44100)",
                      A("--live", "--audio", "-", "--sample-rate", "44100"), expect="ok",
                      stdin=(audio_dir / "44k-stereo.s16le").read_bytes()))
    cases.append(Case("audio", "decode --live --audio - --sample-rate 12", A("--live", "--audio", "-", "--sample-rate",
                                                                            "12"), stdin=b"\0\0" * 100))
    cases.append(Case("audio", "decode --audio on a text model", cli("decode", "--checkpoint", str(run), "--head",
                                                                     "batch", "--audio", str(audio_dir / "16k.wav"))))

    # -- live text on standard input ------------------------------------------------------------------------------
    L = lambda *extra: cli("decode", "--checkpoint", str(run), "--head", "wait-k:k=2", "--live",  # noqa: E731
                           "--max-new-tokens", "4", *extra)
    cases.append(Case("live", "--live < /dev/null", L(), stdin=b""))
    cases.append(Case("live", "--live, binary bytes on stdin", L(), expect="ok", stdin=bytes(range(256)) * 8))
    cases.append(Case("live", "--live, one 10 MB line", L(), expect="ok", stdin=b"word " * 2_000_000 + b"\n",
                      timeout=300))
    cases.append(Case("live", "--live, Ctrl-C while waiting for input", L(), expect="130", stdin=None,
                      signal_after=("INT", 25.0)))

    # -- prepare-audio ---------------------------------------------------------------------------------------------
    good = lambda d: _manifest(d, "good", [audio_dir / "16k.wav", audio_dir / "44k-stereo.wav"])  # noqa: E731
    bad = lambda d: _manifest(d, "bad", [audio_dir / "16k.wav", audio_dir / "text.wav"])  # noqa: E731

    def with_set(d):
        good(d), bad(d)
        subprocess.run([sys.executable, *cli("prepare-audio", str(d / "good.jsonl"), str(d / "set"))], check=True,
                       capture_output=True, cwd=str(ROOT))
        (d / "before.json").write_text(json.dumps(sorted(p.name for p in (d / "set").iterdir())))

    cases.append(Case("prepare-audio", "a text file named .wav in the manifest", cli("prepare-audio", "{d}/bad.jsonl",
                                                                                      "{d}/out"),
                      setup=bad, check=lambda d, p: "wrote a set" if (d / "out").exists() else None))
    cases.append(Case("prepare-audio", "--overwrite with a failing manifest keeps the old set",
                      cli("prepare-audio", "{d}/bad.jsonl", "{d}/set", "--overwrite"), setup=with_set,
                      check=lambda d, p: None if sorted(x.name for x in (d / "set").iterdir())
                      == json.loads((d / "before.json").read_text()) else "the old set changed"))
    cases.append(Case("prepare-audio", "the raw LibriSpeech tree (openslr:DIR)",
                      cli("prepare-audio", "openslr:{d}/ls/LibriSpeech", "{d}/out", "--split", "dev-clean"),
                      expect="ok", setup=lambda d: write_librispeech_tree(d / "ls", audio_dir),
                      check=lambda d, p: None if json.loads((d / "out" / "index.json").read_text())["rows"] == 2
                      else "wrong row count"))
    cases.append(Case("prepare-audio", "a full disk (tmpfs of 200 KB)",
                      cli("prepare-audio", "{d}/big.jsonl", "{d}/full/out"), setup=_full_disk_setup(audio_dir),
                      teardown=_umount, check=lambda d, p: "a partial set is left" if any(
                          x.name.startswith(".out.partial") or x.name == "out" for x in (d / "full").iterdir())
                      else None))

    # -- eval over the LibriSpeech tree ------------------------------------------------------------------------
    cases.append(Case("audio", "eval task=librispeech dataset.source=openslr",
                      cli("eval", f"checkpoint={audio_hf}", "task=librispeech", "dataset.source=openslr",
                          "dataset.path={d}/ls/LibriSpeech", "split=dev-clean", "calibration_split=null",
                          "heads=[batch]", "max_new_tokens=3", "adapter_options={chunk_ms: 200}", "progress=false",
                          "out_dir={d}/e"), expect="ok", setup=lambda d: write_librispeech_tree(d / "ls", audio_dir)))

    # -- plan and probe mistakes -------------------------------------------------------------------------------
    P = lambda *extra: cli("plan", str(ROOT / "configs" / "tiny-synthetic.yaml"), *extra)  # noqa: E731
    cases.append(Case("plan", "unknown topology", P("--topology", "v9z:2x2")))
    cases.append(Case("plan", "model.attention=splash (renamed)", P("model.attention=splash", "--topology", "v5e:2x2"),
                      check=lambda d, p: None if "pallas" in p.stderr else "the new name is not given"))
    cases.append(Case("plan", "unknown config key", P("modle.preset=tiny", "--topology", "v5e:2x2")))
    cases.append(Case("probe", "labels=oracle on a real task", cli("probe", "train", f"checkpoint={run}", "task=squad",
                                                                   "labels=oracle", "dataset={source: files, path: "
                                                                   f"{ROOT}/tests/fixtures/data/squad_v1.1_sample.jsonl}}",
                                                                   "split=train", "num_examples=2", "steps=2",
                                                                   "out={d}/probe.safetensors")))
    cases.append(Case("probe", "missing checkpoint", cli("probe", "train", "checkpoint={d}/none", "task=lookup")))
    cases.append(Case("eval", "seconds_per_unit=-1", eval_argv("seconds_per_unit=-1")))
    cases.append(Case("eval", "calibration on the evaluated split", eval_argv("split=test", "calibration_split=test")))

    # -- two runs on one directory, a full disk mid-training, an eval killed and rerun ---------------------------
    def busy(d):
        shutil.copytree(run, d / "r")
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(d / "r"), "120"], stdout=subprocess.PIPE,
                                  text=True, cwd=str(ROOT))
        holder.stdout.readline()
        (d / "holder.pid").write_text(str(holder.pid))

    cases.append(Case("concurrent", "a second train on a busy out_dir", train_argv("out_dir={d}/r"), setup=busy,
                      teardown=_kill_holder, check=lambda d, p: None if steps_of(d / "r") == [2, 4, 6] else "changed"))
    cases.append(Case("disk", "full disk mid-training (tmpfs of 600 KB)", train_argv("out_dir={d}/full/r", "steps=40",
                                                                                   "checkpoint.every=2"),
                      setup=_tmpfs("600k"), teardown=_umount, check=_restorable_steps))
    cases.append(Case("disk", "export onto a full disk (tmpfs of 24 KB)", cli("export", "--checkpoint", str(run), "--out",
                                                                          "{d}/full/hf"),
                      setup=_tmpfs("24k"), teardown=_umount,
                      check=lambda d, p: None if "/full/hf" in p.stderr or "/full/" in p.stderr
                      else "the error names no path"))
    cases.append(Case("eval", "SIGKILL during eval, then rerun", eval_argv("num_examples=24", "batch_size=2",
                                                                           "heads=[batch, 'wait-k:k=1|2|3']"),
                      expect="-9", signal_after=("KILL", 30.0), check=_rerun_completes(eval_argv)))
    return cases


def _tmpfs(size: str):
    def f(d):
        (d / "full").mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d / "full")], check=True)
    return f


def _full_disk_setup(audio_dir: Path):
    """8 rows of 1 s of white noise (incompressible: ArrayRecord compresses its records) for a 200 KB disk."""
    def f(d):
        import soundfile as sf

        _tmpfs("200k")(d)
        rng = np.random.default_rng(0)
        files = []
        for i in range(8):
            files.append(d / f"noise{i}.wav")
            sf.write(files[-1], (0.1 * rng.standard_normal(SR)).astype(np.float32), SR, subtype="PCM_16")
        _manifest(d, "big", files)
    return f


def _umount(d: Path) -> None:
    subprocess.run(["umount", str(d / "full")], capture_output=True)


def _kill_holder(d: Path) -> None:
    import os
    import signal

    try:
        os.kill(int((d / "holder.pid").read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def _restorable_steps(d: Path, p) -> str | None:
    """Every checkpoint step left on the full disk restores and verifies; the error said the disk is full."""
    from proactive_jax.training.checkpoint import restore_params

    ck = d / "full" / "r" / "checkpoints"
    steps = sorted(int(x.name) for x in ck.iterdir() if x.name.isdigit()) if ck.is_dir() else []
    for s in steps:
        try:
            restore_params(d / "full" / "r", s)
        except Exception as e:  # noqa: BLE001
            return f"step {s} of {steps} does not restore: {type(e).__name__}"
    if "No space left" not in p.stderr and "disk" not in p.stderr.lower():
        return "the error does not say the disk is full"
    return None


def _rerun_completes(eval_argv):
    def check(d: Path, p) -> str | None:
        import os

        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        argv = [a.replace("{d}", str(d)) for a in eval_argv("num_examples=24", "batch_size=2",
                                                          "heads=[batch, 'wait-k:k=1|2|3']")]
        q = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=str(ROOT),
                           timeout=600)
        if q.returncode != 0:
            return f"the rerun failed: {q.stderr.strip().splitlines()[-1:]}"
        recs = [json.loads(x) for x in (d / "e" / "records.jsonl").read_text().splitlines() if x.strip()]
        keys = [(r["setting"], r["id"]) for r in recs if r.get("kind") == "decode"]
        if len(keys) != len(set(keys)):
            return f"{len(keys) - len(set(keys))} duplicate records"
        if len(set(keys)) != 24 * 4:
            return f"{len(set(keys))} records, expected {24 * 4}"
        return None
    return check
