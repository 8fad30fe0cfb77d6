"""The training loop: CLI run, checkpoints/resume, another mesh, multi-host, NaN guard, bad inputs, export.

Compile time dominates on CPU, so every in-process training run uses ONE configuration (``TINY`` with
``N`` steps): ``training.step.build_train_step`` is cached per static spec, so all of them share one compilation.
The SIGTERM run and the two multi-host processes start as subprocesses when the module starts and are
collected by the tests that need them.
"""
import json
import shutil
import socket
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.cli import export as TE, train as TC
from proactive_jax.training import batches as TB, data as TD, loop as T, mesh as TM, state as TSt, step as TS
from proactive_jax.training.checkpoint import CheckpointError, CheckpointStore, restore_params
from proactive_jax.training.run_config import load_run_config
from tests.subprocs import Procs, cpu_env
from tests.training.util import CONFIG, N, TINY, max_diff as _max_diff

SIGTERM_WORKER = textwrap.dedent("""
    import json, os, signal, sys
    from proactive_jax.training.run_config import load_run_config
    from proactive_jax.training.loop import train
    cfg = load_run_config(sys.argv[1], json.loads(sys.argv[2]))
    kill_at = int(sys.argv[3])
    def hook(step, params):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
    res = train(cfg, eval_hook=hook)
    print("RESULT " + json.dumps({"step": res.step, "stopped": res.stopped}), flush=True)
""")

MULTIHOST_WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from proactive_jax.training.run_config import load_run_config
    from proactive_jax.training.loop import train
    pid, port = int(sys.argv[3]), int(sys.argv[4])
    over = json.loads(sys.argv[2]) + [f"distributed.coordinator_address=127.0.0.1:{port}",
        "distributed.num_processes=2", f"distributed.process_id={pid}", "distributed.initialization_timeout=60"]
    cfg = load_run_config(sys.argv[1], over)
    def hook(step, params):
        if step == 2 and jax.process_index() == 0:   # only process 0 is signalled
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)  # tiny steps: let the preemption notice reach the coordination service
    r1 = train(cfg, eval_hook=hook)
    r2 = train(cfg)   # resumes from the checkpoint both processes saved
    leaves = jax.tree.leaves(r2.params)
    full = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in leaves]
    shard_specs = sorted({str(x.sharding.spec) for x in leaves})
    print("RESULT " + json.dumps({"pid": pid, "processes": jax.process_count(), "devices": jax.device_count(),
          "first": [r1.step, r1.stopped], "second": [r2.step, r2.stopped],
          "checksum": float(sum(np.abs(f).sum() for f in full)), "specs": shard_specs}), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Background(Procs):
    """The SIGTERM run and the two multi-host processes, started when the module starts."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        (tmp / "sigterm.py").write_text(SIGTERM_WORKER)
        (tmp / "multihost.py").write_text(MULTIHOST_WORKER)
        over = TINY + [f"out_dir={tmp / 'resumed'}", f"eval_every={N // 2}"]
        self.start("sigterm", [str(tmp / "sigterm.py"), str(CONFIG), json.dumps(over), str(N // 2)], cpu_env(8))
        port = _free_port()
        mh = TINY + [f"out_dir={tmp / 'multihost'}", "steps=6", "eval_every=2", "mesh.data=2", "mesh.fsdp=2"]
        for pid in (0, 1):
            self.start(f"mh{pid}", [str(tmp / "multihost.py"), str(CONFIG), json.dumps(mh), str(pid), str(port)],
                       cpu_env(2, fast_compile=True))

    def result(self, name, timeout=240) -> dict:
        rc, _ = self.wait(name, timeout)
        text = self.log(name)
        lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
        assert rc == 0 and lines, f"{name} failed (rc={rc}):\n{text[-4000:]}"
        return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module", autouse=True)
def background(tmp_path_factory):
    bg = Background(tmp_path_factory.mktemp("bg"))
    yield bg
    bg.stop()


def _cfg(out_dir, *extra):
    return load_run_config(CONFIG, TINY + [f"out_dir={out_dir}", *extra])


def _spec_of(cfg):
    model = TSt.resolve_model_config(cfg.model)
    return TS.StepSpec(model, cfg.objective, cfg.optim, cfg.steps, cfg.data.accum_steps, cfg.packed, cfg.seed,
                      TM.make_mesh(cfg.mesh), cfg.mesh.param_sharding)


def _losses(run_dir) -> list:
    recs = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["mslm"], r["kl"]) for r in recs if r["kind"] == "train"]


# ---------------------------------------------------------------------------------------------
# The loop: CLI run, resume after SIGTERM, other mesh, multi-host, NaN, bad inputs, export
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """``proactive-jax train configs/tiny-synthetic.yaml ...`` for N steps, in process."""
    out = tmp_path_factory.mktemp("straight")
    rc = TC.train_main([str(CONFIG), *TINY, f"out_dir={out}"])
    assert rc == 0
    return out


def test_cli_train_lowers_loss_and_exports(straight, tmp_path):
    losses = [x[1] for x in _losses(straight)]
    assert len(losses) == N and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    assert (straight / "run_config.yaml").is_file() and (straight / "run_meta.json").is_file()
    assert CheckpointStore(straight / "checkpoints", read_only=True).all_steps() == [N]
    # export -> a HF directory that hf.load_pretrained reads back, tokenizer included
    from proactive_jax.models.hf import keep_on_host, load_pretrained

    assert TE.export_main(["--checkpoint", str(straight), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    cfg, params = load_pretrained(tmp_path / "hf", place=keep_on_host)
    _, ref, _, step = restore_params(straight)
    assert step == N and cfg.num_hidden_layers == 1 and _max_diff(params, ref) == 0.0
    assert TE.export_main(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    # the three ways to start: from the HF export, from the checkpoint, from given params
    p_sh = TS.state_shardings(_spec_of(_cfg("x")))[0]["params"]
    for src in ([f"model.hf_dir={tmp_path / 'hf'}", "model.init=hf"],
                ["model.init=checkpoint", f"model.init_checkpoint={straight}"]):
        cfg = _cfg(tmp_path / "start", *src)
        params, source = TSt.initial_params(cfg, TSt.resolve_model_config(cfg.model), p_sh, None)
        assert source.startswith(("hf:", "checkpoint:")) and _max_diff(jax.device_get(params), ref) == 0.0
    assert TC.train_main([str(CONFIG), *TINY, f"out_dir={tmp_path / 'zero'}", "steps=0"]) == 2  # trains nothing
    assert not (tmp_path / "zero").exists()
    start = TM.place(ref, TS.state_shardings(_spec_of(_cfg("x")))[0]["params"])
    given = T.train(_cfg(tmp_path / "given", "checkpoint.save_final=false"), init_params=start)
    assert given.step == N and given.history[0]["loss"] < _losses(straight)[0][1] - 1.0  # started trained
    assert _max_diff(jax.device_get(start), ref) == 0.0  # not consumed (the train state is donated)


def test_resume_after_sigterm_is_exact(straight, background):
    res = background.result("sigterm")
    assert res == {"step": N // 2, "stopped": "signal"}
    resumed = Path(background.tmp) / "resumed"
    assert CheckpointStore(resumed / "checkpoints", read_only=True).all_steps() == [N // 2]
    out = T.train(_cfg(resumed))  # same command again: resumes from step N/2
    assert out.step == N and out.stopped == "done"
    assert [h["step"] for h in out.history] == list(range(N // 2 + 1, N + 1))
    _, ref, _, _ = restore_params(straight)
    assert _max_diff(jax.device_get(out.params), ref) <= 1e-6
    assert _losses(resumed) == _losses(straight)  # every step logged once, identical values


def test_restore_onto_another_mesh(background):
    background.result("sigterm")
    ckpt = Path(background.tmp) / "resumed" / "checkpoints"
    cfg = _cfg("unused", "mesh.data=2", "mesh.fsdp=4")
    sh, ab = TS.state_shardings(_spec_of(cfg))  # FSDP shardings of the (2,4) mesh; no compilation
    _, on_host, _, _ = restore_params(ckpt, N // 2)
    store = CheckpointStore(ckpt, read_only=True)
    tgt = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
    params, train, meta = store.restore(N // 2, jax.tree.map(tgt, ab["params"], sh["params"]),
                                        jax.tree.map(tgt, {"step": ab["step"], "opt_state": ab["opt_state"]},
                                                     {"step": sh["step"], "opt_state": sh["opt_state"]}))
    store.close()
    assert int(train["step"]) == N // 2 and meta["step"] == N // 2 and meta["mesh"] == {"data": 8, "fsdp": 1}
    emb = params["embed_tokens"]["embedding"]
    assert emb.sharding == sh["params"]["embed_tokens"]["embedding"] and "fsdp" in str(emb.sharding.spec)
    assert _max_diff(jax.device_get(params), on_host) == 0.0


def test_two_processes_train_and_checkpoint_together(background):
    r0, r1 = background.result("mh0"), background.result("mh1")
    # SIGTERM reached process 0 only (at step 2); JAX's preemption sync point stops both at one step
    stop = r0["first"][0]
    for r in (r0, r1):
        assert r["processes"] == 2 and r["devices"] == 4
        assert r["first"] == [stop, "signal"] and stop in (2, 3, 4), r
        assert r["second"] == [6, "done"]
    assert r0["checksum"] == r1["checksum"] and np.isfinite(r0["checksum"])
    assert any("fsdp" in s for s in r0["specs"])
    run = Path(background.tmp) / "multihost"
    assert CheckpointStore(run / "checkpoints", read_only=True).all_steps() == [stop, 6]
    steps = [s for s, *_ in _losses(run)]
    assert steps == [1, 2, 3, 4, 5, 6]  # only process 0 writes metrics, each step once


def test_nan_guard_and_stop(straight, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "nan", "checkpoint.every=2")
    spec = _spec_of(cfg)
    sh, _ = TS.state_shardings(spec)
    step_fn = TS.build_train_step(spec)  # the cached step of every run in this module
    _, good, _, _ = restore_params(straight)
    bad = jax.tree.map(np.array, good)
    bad["norm"]["weight"][0] = np.nan
    data = TD.build_data(cfg, spec.model, n_devices=8)
    batch = TM.global_batch(TB.device_batch(data.train.batch_at(0)), TM.batch_sharding(spec.mesh), 1)
    params = TM.place(bad, sh["params"])
    opt = jax.jit(TS.make_optimizer(cfg.optim, N).init, out_shardings=sh["opt_state"])(params)
    state = {"step": jax.device_put(jnp.int32(5), sh["step"]), "params": params, "opt_state": opt}
    new, metrics = step_fn(state, batch)
    assert not bool(metrics["finite"]) and int(new["step"]) == 5
    assert np.array_equal(np.asarray(new["params"]["layers"]["mlp"]["up_proj"]["kernel"]),
                          bad["layers"]["mlp"]["up_proj"]["kernel"])  # the update was skipped

    real = T._fetch

    def fake(m):
        rec = real(m)
        if rec["loss"] == losses[2]:  # the third step "diverges"
            rec["finite"] = False
        return rec

    losses = [x[1] for x in _losses(straight)]
    monkeypatch.setattr(T, "_fetch", fake)
    with pytest.raises(T.TrainingDiverged, match=r"step 3: non-finite loss.*Last good checkpoint: .*checkpoints/2"):
        T.train(cfg)
    assert CheckpointStore(tmp_path / "nan" / "checkpoints", read_only=True).all_steps() == [2]
    _, p2, _, _ = restore_params(tmp_path / "nan", 2)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(p2))


def test_bad_inputs_give_clear_errors_and_keep_good_checkpoints(straight, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.hf_dir=/no/such/model: directory does not exist"):
        T.train(_cfg(tmp_path / "a", "model.hf_dir=/no/such/model", "model.preset=null"))
    run = tmp_path / "copy"
    shutil.copytree(straight, run)
    _, before, _, _ = restore_params(run)
    # a partial save (orbax temp dir) is ignored; a corrupt newer step is an error naming it
    (run / "checkpoints" / f"{N + 2}.orbax-checkpoint-tmp-99" / "params").mkdir(parents=True)
    assert restore_params(run)[3] == N
    bad = run / "checkpoints" / str(N + 4)
    shutil.copytree(run / "checkpoints" / str(N), bad)
    for f in (bad / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    corrupt = rf"checkpoints/{N + 4}: cannot restore step {N + 4}.*other steps: \[{N}\]"
    with pytest.raises(CheckpointError, match=corrupt):
        T.train(_cfg(run, f"steps={N + 6}"))
    (bad / "_CHECKPOINT_METADATA").unlink()
    with pytest.raises(CheckpointError, match="partial checkpoint"):
        restore_params(run, N + 4)
    with pytest.raises(CheckpointError, match="checkpoint.resume=never"):
        T.train(_cfg(run, "checkpoint.resume=never"))
    with pytest.raises(CheckpointError, match="no checkpoint for step 3"):
        restore_params(run, 3)
    with pytest.raises(CheckpointError, match="does not exist"):
        restore_params(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="model differs"):
        T.train(_cfg(run, "checkpoint.restore_step=12", "model.config.hidden_size=48"))
    _, after, _, _ = restore_params(run, N)
    assert _max_diff(before, after) == 0.0  # the good checkpoint is untouched
