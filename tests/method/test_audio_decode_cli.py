"""`proactive-jax decode --audio FILE.wav` on a tiny random Qwen2-Audio checkpoint and a shipped WAV fixture."""
from pathlib import Path

import pytest

from proactive_jax.cli import main

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import AutoTokenizer

    from proactive_jax.audio import AudioModelConfig, EncoderConfig, init_params
    from proactive_jax.models.config import ModelConfig
    from proactive_jax.models.hf_export import save_pretrained
    from tests.tokenizers_util import qwen_style_tokenizer_dir

    root = tmp_path_factory.mktemp("audio_cli")
    tok = AutoTokenizer.from_pretrained(str(qwen_style_tokenizer_dir("qwen2.5")))
    tok.add_special_tokens({"additional_special_tokens": ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]})
    tok.save_pretrained(root / "tok")
    text = ModelConfig(model_type="qwen2", vocab_size=len(tok) + 3, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16, qkv_bias=True,
                       qk_norm=False, tie_word_embeddings=True)
    enc = EncoderConfig(num_mel_bins=128, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=24,
                        max_source_positions=50)  # 1 s windows
    cfg = AudioModelConfig(text=text, encoder=enc, audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"))
    return save_pretrained(cfg, init_params(cfg, 0), root / "hf", tokenizer_dir=root / "tok")


def test_decode_audio_prints_chunk_trace(checkpoint, capsys):
    rc = main(["decode", "--checkpoint", str(checkpoint), "--audio", str(FIX / "tone_b.wav"), "--chunk-ms", "200",
               "--head", "wait-k:k=2", "--max-new-tokens", "3", "--prompt", "what did the cat do"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "READ    1 [audio chunk 1: 0.00-0.20 s]" in out
    assert "M = 6 chunks of 200 ms" in out  # 1.1 s: 25 + 3 tokens -> 6 chunks of 5 tokens
    assert "WRITE" in out


def test_decode_audio_errors(checkpoint, capsys):
    assert main(["decode", "--checkpoint", str(checkpoint), "--audio", str(FIX / "tone_a.wav"),
                 "--chunk-ms", "210"]) == 2
    assert "--chunk-ms=210.0: not a whole number of encoder tokens" in capsys.readouterr().err
    assert main(["decode", "--checkpoint", str(checkpoint), "--audio", "nope.wav"]) == 2
    assert "nope.wav: audio file does not exist" in capsys.readouterr().err
    assert main(["decode", "--checkpoint", str(checkpoint)]) == 2
    assert "exactly one of --text and --audio" in capsys.readouterr().err
