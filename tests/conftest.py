"""Shared test setup: 8 fake CPU devices (set before JAX is imported) and the session-wide fixtures (tiny model
configs, a tiny Qwen2-Audio checkpoint). Helper functions live in ``tests/helpers.py``."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PROACTIVE_JAX_CACHE", "off")  # no compilation cache in the tests (nor in $HOME)

import pytest  # noqa: E402

from tests.helpers import tiny_qwen2, tiny_qwen3  # noqa: E402


@pytest.fixture(scope="session")
def qwen3_cfg():
    return tiny_qwen3()


@pytest.fixture(scope="session")
def qwen2_cfg():
    return tiny_qwen2()


@pytest.fixture(scope="session")
def audio_checkpoint(tmp_path_factory):
    """A tiny random Qwen2-Audio checkpoint (HF directory with a Qwen-style tokenizer), 1 s encoder windows."""
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


@pytest.fixture(scope="module", autouse=True)
def _drop_compiled_programs_between_modules():
    """Each test module starts with JAX's caches empty: whole-suite runs crashed inside XLA's CPU compiler
    (segfault / abort while compiling, at the same test twice) once hundreds of executables were live; the same
    module passes alone. Modules still share compiled programs among their own tests."""
    import jax

    jax.clear_caches()
    yield


@pytest.fixture(scope="session")
def smoke_demo(tmp_path_factory):
    """``proactive-jax demo --smoke`` run once as a user runs it (a subprocess, its own compilation cache so its
    stages share compiled programs): ``(out_dir, stdout, seconds)``; shared by the demo and README tests."""
    import subprocess
    import sys
    import time

    from tests.subprocs import ROOT, cpu_env

    tmp = tmp_path_factory.mktemp("smoke_demo")
    out = tmp / "demo_out"
    env = cpu_env(1, PROACTIVE_JAX_CACHE=str(tmp / "jax_cache"))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "proactive_jax", "demo", "--smoke", "--out", str(out)], cwd=str(ROOT),
                         env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res.stdout, time.perf_counter() - t0
