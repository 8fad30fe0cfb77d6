"""The README's commands are real: every `proactive-jax ...` it names exists and its options parse, the config
keys it sets are keys, and the cheap ones produce what the README says they produce."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from proactive_jax.cli import COMMANDS, build_parser, startup, subparsers

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced_commands() -> list[str]:
    """``proactive-jax ...`` lines of the README's fenced shell blocks (comments dropped)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("proactive-jax "):
                out.append(line)
    return out


def inline_commands() -> list[str]:
    """``proactive-jax ...`` code spans of the README's text (joined across line breaks)."""
    spans = [" ".join(m.split()) for m in re.findall(r"`(proactive-jax [^`]+)`", README)]
    return [s for s in spans if not s.split()[1].endswith(":")]  # "proactive-jax eval: loading ...": output


def _placeholder(tok: str) -> bool:
    value = tok.split("=", 1)[1] if re.match(r"^[a-z_.]+=", tok) else tok
    return ("..." in tok or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?", value))
            or (tok.startswith("[") and "=" not in tok) or (tok.endswith("]") and "=" not in tok))


def _check(cmd: str) -> tuple[str, list[str], bool]:
    """``(command, arguments, runnable)``; raises AssertionError naming what does not exist or parse."""
    toks = shlex.split(cmd)[1:]
    names = toks[0].split("|")
    assert all(n in COMMANDS for n in names), f"{cmd}: no command {toks[0]!r}"
    subs = subparsers(build_parser())
    usage = any(_placeholder(t) for t in toks[1:]) or len(names) > 1
    for name in names:
        options = subs[name]._option_string_actions
        for t in toks[1:]:
            flag = t.strip("[]").split("=")[0]
            if flag.startswith("--"):
                assert flag in options, f"{cmd}: {name} has no option {flag}"
    if usage:
        return names[0], toks[1:], False
    argv, _, _ = startup.normalize_argv(toks, {n: c.style for n, c in COMMANDS.items()},
                                        lambda n: subs[n]._option_string_actions)
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"{cmd}: does not parse (exit {e.code})") from None
    return names[0], toks[1:], True


def test_the_readme_names_its_commands():
    fenced = fenced_commands()
    assert "proactive-jax demo --quick" in fenced and "proactive-jax demo --smoke" in fenced
    assert len(inline_commands()) >= 15


@pytest.mark.parametrize("cmd", sorted(set(fenced_commands() + inline_commands())))
def test_every_command_exists_and_parses(cmd):
    name, args, runnable = _check(cmd)
    if not runnable:
        return
    overrides = [a for a in args if re.match(r"^[a-z_][\w.]*=", a)]
    if name == "eval":  # its keys are the eval config's
        from proactive_jax.evaluation.evaluate import load_eval_config

        load_eval_config(None, overrides)
    if name == "demo":
        from proactive_jax.demo.text import load_demo_config

        load_demo_config(None, overrides, quick="--quick" in args, smoke="--smoke" in args)


def test_the_usage_check_catches_what_does_not_exist():
    with pytest.raises(AssertionError, match="no command"):
        _check("proactive-jax evaluate checkpoint=x")
    with pytest.raises(AssertionError, match="no option --fast"):
        _check("proactive-jax demo --fast")
    with pytest.raises(AssertionError, match="no option --speed"):
        _check("proactive-jax decode --checkpoint DIR --speed 2")


def test_smoke_command_produces_what_the_readme_says(smoke_demo):
    """The quick start's smoke command: the stages it prints, the chance line it quotes, the files the README's
    output layout lists for the demo."""
    out, stdout, seconds = smoke_demo
    bullet = next(line for line in README.split("\n- ") if line.startswith("The **demo**")).split("\n\n")[0]
    names = re.findall(r"`([^`]+)`", bullet.split(":", 1)[1])
    assert names, bullet
    for name in names:  # the smoke demo runs the lookup task
        assert (out / name.replace("<task>", "lookup")).exists(), name
    quoted = re.search(r"prints `(chance: [^`]+)`", README)
    assert quoted, "the quick start quotes the chance line"
    expected = " ".join(quoted.group(1).split(";")[0].split())
    assert expected in stdout, expected
    stages = re.search(r"`--smoke`\**\s+prints (\d+) numbered stages", README)
    assert stages and f"[{stages.group(1)}/{stages.group(1)}]" in stdout
