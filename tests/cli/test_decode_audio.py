"""`proactive-jax decode --audio FILE.wav` on a tiny random Qwen2-Audio checkpoint and a shipped WAV fixture."""
from proactive_jax.cli import main
from tests.helpers import AUDIO_FIXTURES as FIX

def test_decode_audio_prints_chunk_trace(audio_checkpoint, capsys):
    rc = main(["decode", "--checkpoint", str(audio_checkpoint), "--audio", str(FIX / "tone_b.wav"), "--chunk-ms", "200",
               "--head", "wait-k:k=2", "--max-new-tokens", "3", "--prompt", "what did the cat do"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "READ    1 [audio chunk 1: 0.00-0.20 s]" in out
    assert "M = 6 chunks of 200 ms" in out  # 1.1 s: 25 + 3 tokens -> 6 chunks of 5 tokens
    assert "WRITE" in out


def test_decode_audio_errors(audio_checkpoint, capsys):
    assert main(["decode", "--checkpoint", str(audio_checkpoint), "--audio", str(FIX / "tone_a.wav"),
                 "--chunk-ms", "210"]) == 2
    assert "--chunk-ms=210.0: not a whole number of encoder tokens" in capsys.readouterr().err
    assert main(["decode", "--checkpoint", str(audio_checkpoint), "--audio", "nope.wav"]) == 2
    assert "nope.wav: audio file does not exist" in capsys.readouterr().err
    assert main(["decode", "--checkpoint", str(audio_checkpoint)]) == 2
    assert "exactly one of --text and --audio" in capsys.readouterr().err
