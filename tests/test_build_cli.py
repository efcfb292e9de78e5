"""`tritonkit build / models / gpus` as a user runs them: stdout, stderr, exit code, files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def cli(tritonkit_home, tmp_path):
    """Run `python -m tritonkit ARGS` (the console script's code path) in an empty directory."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ}

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "tritonkit", *map(str, args)], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr

    run.workdir = workdir
    return run


def test_build_tiny_llama_on_cpu_end_to_end(cli, tritonkit_home):
    code, out, err = cli("build", "tiny-llama", "--gpu", "cpu")
    assert code == 0, err
    target = cli.workdir / "model_repository" / "tiny-llama"
    assert f"wrote {target}" in out and "runtime env: VLLM_CPU_KVCACHE_SPACE=1" in out
    assert "Triton is installed" not in err  # vLLM's line about the Triton compiler (tritonkit.quiet)
    assert "KV tokens" in out and "524,288" in out
    args = json.loads((target / "1" / "model.json").read_text())
    assert args["model"] == str(tritonkit_home / "models" / "tiny-llama")
    assert (target / "config.pbtxt").exists() and (target / "build.json").exists()


def test_plan_prints_the_arithmetic_and_writes_nothing(cli):
    code, out, err = cli("build", "llama2-7b", "--gpu", "a10", "--plan")
    assert code == 0, err
    assert "llama2-7b on a10 (1 × NVIDIA A10G, AWS g5.4xlarge, $1.624/h)" in out
    for shown in ("13,476,831,232 B", "829 blocks × 16 tokens", "13,264", "4,096"):
        assert shown in out
    assert "--plan: nothing written" in err
    assert list(cli.workdir.iterdir()) == []


def test_adapters_through_the_cli(cli, tiny_model, tiny_adapters):
    code, out, err = cli("build", tiny_model, "--gpu", "cpu", "--adapter", f"a={tiny_adapters['a']}",
                         "--adapter", tiny_adapters["b"], "--name", "multi")
    assert code == 0, err
    assert "LoRA serve: a, b" in out and '"enable_lora": true' in out
    assert json.loads((cli.workdir / "model_repository" / "multi" / "1" / "multi_lora.json").read_text()) == {
        "a": str(tiny_adapters["a"].resolve()), "b": str(tiny_adapters["b"].resolve())}


def test_models_and_gpus_list_the_catalogs(cli):
    code, out, _ = cli("models")
    assert code == 0
    for name in ("llama2-7b", "llama2-13b", "redpajama-3b", "redpajama-7b", "llama3.1-8b", "mistral-7b",
                 "qwen2.5-7b", "tiny-llama", "meta-llama/Llama-2-7b-hf"):
        assert name in out
    code, out, _ = cli("gpus")
    assert code == 0
    for name in ("t4", "a10x4", "l4", "a100-40gb", "a100-80gb", "h100", "h200", "cpu", "g5.12xlarge", "1.624"):
        assert name in out


def _damaged_adapter(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


BAD_INPUTS = {
    "unknown model": (lambda t: ["llama2-7", "--gpu", "a10"], 2,
                      "error: unknown model 'llama2-7'", "did you mean llama2-7b"),
    "unknown gpu": (lambda t: ["llama2-7b", "--gpu", "a100"], 2,
                    "error: unknown GPU profile 'a100'", "a100-40gb"),
    "missing config.json": (lambda t: [t["empty"], "--gpu", "cpu"], 2, "has no config.json", ""),
    "corrupt config.json": (lambda t: [t["corrupt"], "--gpu", "cpu"], 2, "is not valid JSON", ""),
    "adapter missing": (lambda t: [t["model"], "--gpu", "cpu", "--adapter", "x=/nonexistent/adapter"], 2,
                        "adapter folder /nonexistent/adapter not found", ""),
    "adapter not PEFT": (lambda t: [t["model"], "--gpu", "cpu", "--adapter", t["empty"]], 2,
                         "is not a PEFT adapter: it has no adapter_config.json", ""),
    "adapter for another base": (lambda t: [t["model"], "--gpu", "cpu", "--adapter", t["foreign"]], 2,
                                 "was trained on meta-llama/Llama-2-7b-hf, not on tiny-llama",
                                 "pass the base it was trained on"),
    "rank too high": (lambda t: [t["model"], "--gpu", "cpu", "--adapter", t["b"], "--max-lora-rank", "8"], 2,
                      "adapter b has rank 16, above --max-lora-rank 8", ""),
    "does not fit": (lambda t: ["llama2-13b", "--gpu", "a10"], 3,
                     "error: llama2-13b in bfloat16 does not fit a10",
                     "  --gpu a10x4 (4 × NVIDIA A10G, AWS g5.12xlarge, $5.672/h, tp 2"),
    "invalid override": (lambda t: ["llama2-7b", "--gpu", "a10x4", "--tp", "3"], 2,
                         "--tp 3 does not divide llama2-7b's 32 attention heads and 32 KV heads",
                         "valid --tp values: 1, 2, 4, 8"),
    "output not writable": (lambda t: [t["model"], "--gpu", "cpu", "-o", t["file"] / "repo"], 2,
                            "is not writable", "is not a directory"),
    "name with path separators": (lambda t: [t["model"], "--gpu", "cpu", "--name", "a/b"], 2,
                                  "model name 'a/b' must not contain path separators", ""),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_nonzero_and_writes_nothing(case, cli, tiny_model, tiny_adapters, tmp_path,
                                                          tritonkit_home):
    things = {"model": tiny_model, "b": tiny_adapters["b"], "empty": tmp_path / "empty",
              "corrupt": tmp_path / "corrupt", "file": tmp_path / "a-file",
              "foreign": _damaged_adapter(tiny_adapters["a"], tmp_path / "foreign",
                                          base_model_name_or_path="meta-llama/Llama-2-7b-hf")}
    things["empty"].mkdir()
    things["corrupt"].mkdir()
    (things["corrupt"] / "config.json").write_text('{"model_type": "llama",')
    things["file"].write_text("")
    home_before = sorted(p.name for p in tritonkit_home.rglob("*"))
    make_args, code, message, hint = BAD_INPUTS[case]
    status, out, err = cli("build", *make_args(things))
    assert status == code, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], err
    if code == 3:  # the way out: one option a line, each with why
        assert lines[1] == "options:" and any(line.startswith(hint) for line in lines), err
        assert "      why: tp 2 is the smallest split that fits: 12.12 GiB of weights per 22.49 GiB" in err
    else:
        assert len(lines) == 1 and hint in lines[0], err
    assert out == ""
    assert list(cli.workdir.iterdir()) == []          # no ./model_repository, nothing else
    assert not (things["file"].parent / "repo").exists()
    assert sorted(p.name for p in tritonkit_home.rglob("*")) == home_before


def test_existing_model_needs_force(cli):
    existing = cli.workdir / "model_repository" / "tiny-llama"
    existing.mkdir(parents=True)
    code, out, err = cli("build", "tiny-llama", "--gpu", "cpu")
    assert code == 2 and err.strip() == f"error: {existing} already exists -- pass --force to replace it"
    assert list(existing.iterdir()) == []


# -- the command line as a whole ------------------------------------------------------------------

def test_help_lists_the_commands_in_workflow_order_in_full(cli):
    code, out, _ = cli("--help")
    assert code == 0
    commands = out.split("Commands:")[1].split("\n\n")[0]
    listed = [line.split()[0] for line in commands.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert listed == ["build", "serve", "generate", "perf", "compare", "plan-capacity", "status", "stop", "models",
                      "gpus", "image", "runtime", "demo"]
    assert "..." not in commands  # no description cut off
    assert "$TRITONKIT_HOME" in out and "[default: ~/.cache/tritonkit]" in out


def test_every_option_is_described_in_one_default_style():
    import click

    from tritonkit.cli import cli as group

    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                where = f"{name} {param.opts[0]}"
                assert param.help, f"{where} has no description"
                assert "(default" not in param.help, where
                # A default the help states itself reads like click's own: [default: ...].
                assert all(b.startswith("default: ") for b in re.findall(r"\[([^\]]*)\]", param.help)), where


@pytest.mark.parametrize("args, message", [
    (["build"], "error: missing argument 'MODEL' -- see `tritonkit build --help`"),
    (["build", "tiny-llama"], "error: missing option '--gpu' -- see `tritonkit build --help`"),
    (["build", "tiny-llama", "--gpu", "cpu", "--tp", "two"], "error: invalid value for '--tp': 'two' is not a valid integer"),
    (["deploy"], "error: no such command 'deploy'"),
])
def test_clicks_usage_errors_read_like_tritonkits(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and err.startswith(message), err


def test_models_and_gpus_as_json(cli):
    code, out, _ = cli("models", "--json")
    assert code == 0
    models = json.loads(out)
    assert models["llama2-7b"]["hf_id"] == "meta-llama/Llama-2-7b-hf" and models["tiny-llama"]["origin"] == "builtin"
    code, out, _ = cli("gpus", "--json")
    assert code == 0
    profiles = json.loads(out)
    assert profiles["a10"]["price_per_hour"] == 1.624 and profiles["cpu"]["kind"] == "cpu"


def test_stop_with_nothing_running_is_not_an_error(cli):
    code, out, err = cli("stop")
    assert code == 0 and out.strip() == "no tritonkit server is running; nothing to stop", err
