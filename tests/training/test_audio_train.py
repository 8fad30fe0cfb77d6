"""Speech in the real trainer: ``proactive-jax train`` on a tiny random Qwen2-Audio and synthetic tone-words.

One compiled configuration (``TINY_AUDIO``, 8 fake CPU devices as a data=4 x fsdp=2 mesh, frozen encoder) serves
the CLI run, the loss check and the exact resume (``training.step.build_train_step`` is cached per spec).
"""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.cli import main
from proactive_jax.method.audio_objective import audio_loss_fn
from proactive_jax.models.audio import init_params
from proactive_jax.training import audio_batches as AB, audio_examples as AE, batches as TB, data as TD, mesh as TM, state as TSt, step as TS
from proactive_jax.training.checkpoint import restore_params
from proactive_jax.training.run_config import load_run_config
from tests.training.util import ROOT, max_diff

CONFIG = ROOT / "configs" / "tiny-speech.yaml"
N = 6
TINY_AUDIO = [
    "model.config={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2, "
    "num_key_value_heads: 1, head_dim: 16}",
    "model.audio_config={encoder_layers: 1, d_model: 32, encoder_attention_heads: 2, encoder_ffn_dim: 48, "
    "max_source_positions: 100, num_mel_bins: 16}",  # a 2 s window: 200 frames, 50 tokens, chunks of 5
    "audio.encoder=frozen", "audio.max_seconds=2.0", "audio.n_train=24", "audio.n_valid=0",
    "data.buckets=[[56, 8]]", "data.global_batch_size=8", "objective.kl_topk=8", "optim.lr=3e-3",
    "optim.warmup_steps=1", f"steps={N}", "checkpoint.every=3", "eval_every=0", "progress=false",
    "tensorboard=false", "mesh.data=4", "mesh.fsdp=2",
]



@pytest.fixture(scope="module", autouse=True)
def _fresh_compilation_caches():
    """Drop the executables earlier modules compiled: a whole-suite run once segfaulted inside XLA's CPU
    compiler in this module's first checkpoint save (it passes alone); fewer live executables, less risk."""
    jax.clear_caches()
    yield

def _losses(run_dir) -> list:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "train"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("audio-straight")
    assert main(["train", str(CONFIG), *TINY_AUDIO, f"out_dir={out}"]) == 0
    return out


def test_cli_trains_with_the_encoder_inside_and_keeps_it_frozen(straight):
    losses = _losses(straight)
    assert len(losses) == N and all(np.isfinite(losses)) and np.mean(losses[-2:]) < losses[0] - 0.2, losses
    cfg, params, meta, step = restore_params(straight)
    assert step == N and cfg.model_type == "qwen2_audio" and cfg.chunk == 5 and cfg.encoder.num_frames == 200
    init = init_params(cfg, 0)  # model.init=random, seed 0: the numpy init the run started from
    for part in ("audio_tower", "multi_modal_projector"):  # frozen: bit-identical after N steps
        for a, b in zip(jax.tree.leaves(init[part]), jax.tree.leaves(params[part])):
            np.testing.assert_array_equal(a, np.asarray(b))
    assert max_diff(init["language_model"], params["language_model"]) > 1e-4  # the decoder trained


def test_trainer_loss_equals_the_audio_objective(straight):
    """Step 1's logged loss == ``audio_loss_fn`` on the pipeline's step-0 batch with the initial params, unsharded."""
    run = load_run_config(CONFIG, TINY_AUDIO + ["out_dir=unused"])
    acfg = TSt.resolve_model_config(run.model, run.audio)
    batch = TB.device_batch(TD.build_data(run, acfg).train.batch_at(0))
    assert batch["features"].shape == (8, 16, 200) and batch["audio_tokens"].max() <= 50
    batch["row_id"] = np.arange(8, dtype=np.int32)
    params = jax.tree.map(jnp.asarray, init_params(acfg, 0))
    key = jax.random.fold_in(jax.random.PRNGKey(run.seed), 0)
    loss, _ = jax.jit(audio_loss_fn, static_argnums=(0, 1, 5))(acfg, run.objective, params, batch, key, "frozen")
    np.testing.assert_allclose(_losses(straight)[0], float(loss), rtol=2e-5)


def test_resume_is_bitwise_exact_and_export_writes_qwen2_audio(straight, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints", resumed / "checkpoints")
    assert main(["train", str(CONFIG), *TINY_AUDIO, f"out_dir={resumed}", "checkpoint.restore_step=3"]) == 0
    _, ref, _, _ = restore_params(straight)
    _, got, _, step = restore_params(resumed)
    assert step == N and max_diff(ref, got) == 0.0
    assert _losses(resumed) == _losses(straight)[3:]
    from proactive_jax.models.hf import keep_on_host, load_pretrained

    assert main(["export", "--checkpoint", str(straight), "--out", str(tmp_path / "hf")]) == 0
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "qwen2_audio" and hf["audio_config"]["num_mel_bins"] == 16
    cfg, params = load_pretrained(tmp_path / "hf", place=keep_on_host)
    assert cfg.encoder.max_source_positions == 100 and max_diff(params, ref) == 0.0


def test_frozen_encoder_has_no_optimizer_state_and_train_mode_has():
    run = load_run_config(CONFIG, TINY_AUDIO + ["out_dir=unused"])
    acfg = TSt.resolve_model_config(run.model, run.audio)
    mesh = TM.make_mesh(run.mesh)

    def opt_paths(r):
        _, abstract = TS.state_shardings(TS.make_spec(r, acfg, mesh, N))
        return {TM.path_keys(p)[:1] for p, _ in jax.tree_util.tree_flatten_with_path(abstract["opt_state"])[0]}

    frozen_paths = {p for p in opt_paths(run) if p}
    trained = load_run_config(CONFIG, TINY_AUDIO + ["out_dir=unused", "audio.encoder=train"])
    train_paths = {p for p in opt_paths(trained) if p}
    assert ("audio_tower",) not in frozen_paths and ("language_model",) in frozen_paths
    assert {("audio_tower",), ("multi_modal_projector",), ("language_model",)} <= train_paths


@pytest.mark.parametrize("override,named", [
    ("audio.encodr=frozen", "audio.encodr: unknown key (did you mean 'encoder'?)"),
    ("audio.encoder_mask=sideways", "audio: encoder_mask"),
    ("audio.chunk_ms=30", "chunk_ms=30"),
    ("audio.chunk_ms=120", "audio.chunk_ms=120: the chunk in tokens=3: must divide"),  # 3 tokens do not divide the 100 of a window
    ("model.audio_config={d_modl: 8}", "model.audio_config.d_modl: unknown key"),
    ("audio.max_seconds=45", "max_seconds=45"),
    ("model.preset=tiny", "needs a qwen2_audio model"),
])
def test_bad_audio_config_is_one_line(override, named, capsys, tmp_path):
    assert main(["train", str(CONFIG), *TINY_AUDIO, f"out_dir={tmp_path}", "model.config={}",
                 "model.audio_config={}", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    if "unknown key" in named or override.startswith(("audio.encoder_mask", "audio.max_seconds")):
        assert str(CONFIG) in err  # schema errors name the file too


def test_streamed_batches_resume_and_plan_shapes():
    """The plug point of a streaming loader resumes by position; the planner's abstract batch has the collate's
    shapes and dtypes."""
    from proactive_jax.data.synthetic_audio import make_speech_task
    from proactive_jax.training.plan import abstract_batch

    run = load_run_config(CONFIG, TINY_AUDIO + ["out_dir=unused"])
    acfg = TSt.resolve_model_config(run.model, run.audio)
    exs = AE.synthetic_speech_examples(make_speech_task("speech-transcribe", 10, 3, "train", 2.0), acfg)
    collate = AE.AudioCollate(acfg, "running")
    sb = AB.StreamedBatches(lambda pos: iter(exs[pos:]), (56, 8), global_batch_size=4, collate=collate,
                            steps_per_epoch=3)
    full = list(sb.batches_from(0))
    assert len(full) == 3 and full[2]["valid"].tolist() == [True, True, False, False]
    for k, v in sb.batch_at(1).items():
        np.testing.assert_array_equal(v, full[1][k])
    ref = collate(exs[:8], (56, 8))
    ab = abstract_batch(run, (56, 8), 8, None, acfg)
    assert {k: (v.shape, v.dtype) for k, v in ab.items()} == {k: (v.shape, v.dtype) for k, v in ref.items()}
