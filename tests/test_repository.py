"""The model repository: layout, validated files, build.json (the typed record), atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from tritonkit import buildrecord, lora, repository
from tritonkit.errors import TritonkitError, UsageError

BUILD_KEYS = {"tritonkit_version", "created_at", "model_name", "model", "gpu", "plan", "engine_args",
              "lora", "runtime_env", "inputs"}


def build(model, repo, **kwargs):
    return repository.write(repository.prepare(str(model), "cpu", repository=repo, **kwargs))


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_plain_build_layout_and_files(tiny_model, tritonkit_home, tmp_path):
    repo = tmp_path / "repo"
    target = build(tiny_model, repo)
    assert target == repo / "tiny-llama"
    assert listing(repo) == ["tiny-llama", "tiny-llama/1", "tiny-llama/1/model.json",
                             "tiny-llama/build.json", "tiny-llama/config.pbtxt"]
    config = (target / "config.pbtxt").read_text()
    repository.validate_config_pbtxt(config)
    assert 'backend: "vllm"' in config and "kind: KIND_MODEL" in config
    args = json.loads((target / "1" / "model.json").read_text())
    assert args["model"] == str(tiny_model.resolve())
    assert args["disable_log_stats"] is False               # a JSON boolean, metrics on
    assert (args["dtype"], args["max_model_len"], args["tensor_parallel_size"]) == ("float32", 1024, 1)
    assert "gpu_memory_utilization" not in args             # the CPU backend uses VLLM_CPU_KVCACHE_SPACE
    record = json.loads((target / "build.json").read_text())
    assert set(record) == BUILD_KEYS
    assert record["engine_args"] == args
    small = os.cpu_count() <= repository.SMALL_CPU_COUNT
    unpinned = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if small else {}
    assert record["runtime_env"] == {"VLLM_CPU_KVCACHE_SPACE": "1", **unpinned}
    assert args.get("distributed_executor_backend") == ("uni" if small else None)  # the worker in the engine core
    assert record["model"]["random_weights"] is True and record["model"]["source"] == str(tiny_model.resolve())
    assert record["gpu"]["profile"] == "cpu" and record["gpu"]["price_per_hour"] == 0.2016
    assert record["plan"]["kv_tokens"] == 524_288 and record["lora"]["mode"] == "none"
    assert list(record["inputs"]) == [str(tiny_model.resolve() / "config.json")]


def test_model_json_keys_are_vllm_engine_arguments(tiny_model, tritonkit_home, tmp_path):
    target = build(tiny_model, tmp_path / "repo")
    known = repository.vllm_engine_arg_names()
    assert known is not None, "vllm is installed in this environment"
    assert set(json.loads((target / "1" / "model.json").read_text())) <= known


def test_serve_mode_writes_multi_lora_json(tiny_model, tiny_adapters, tritonkit_home, tmp_path):
    target = build(tiny_model, tmp_path / "repo", name="tiny-multi",
                   adapters=(f"a={tiny_adapters['a']}", f"b={tiny_adapters['b']}"))
    assert json.loads((target / "1" / "multi_lora.json").read_text()) == {
        "a": str(tiny_adapters["a"].resolve()), "b": str(tiny_adapters["b"].resolve())}
    args = json.loads((target / "1" / "model.json").read_text())
    assert (args["enable_lora"], args["max_lora_rank"], args["max_loras"]) == (True, 16, 2)
    record = buildrecord.load(tmp_path / "repo").to_json()
    assert record["lora"] == {"mode": "serve", "max_lora_rank": 16,
                              "adapters": {"a": str(tiny_adapters["a"].resolve()),
                                           "b": str(tiny_adapters["b"].resolve())}}
    assert str(tiny_adapters["b"].resolve() / "adapter_model.safetensors") in record["inputs"]
    assert record["plan"]["lora_bytes"] > 0


def test_merge_mode_points_model_json_at_the_merged_weights(tiny_model, tiny_adapters, tritonkit_home, tmp_path):
    target = build(tiny_model, tmp_path / "repo", adapters=(str(tiny_adapters["a"]),))
    merged = target / "1" / "merged"
    assert json.loads((target / "1" / "model.json").read_text())["model"] == str(merged)
    assert merged.is_absolute() and (merged / "model.safetensors").exists()
    assert (merged / "tokenizer.json").exists() and (merged / "config.json").exists()
    assert not (target / "1" / "multi_lora.json").exists()
    assert buildrecord.load(tmp_path / "repo", "tiny-llama").lora.mode == "merge"


def test_builtin_model_is_built_on_demand(tritonkit_home, tmp_path):
    import shutil

    shutil.rmtree(tritonkit_home / "models" / "tiny-llama")
    target = repository.write(repository.prepare("tiny-llama", "cpu", repository=tmp_path / "repo"))
    source = tritonkit_home / "models" / "tiny-llama"
    assert (source / "config.json").exists()
    assert json.loads((target / "1" / "model.json").read_text())["model"] == str(source)


def test_existing_model_is_replaced_only_with_force(tiny_model, tritonkit_home, tmp_path):
    repo = tmp_path / "repo"
    build(tiny_model, repo)
    first = (repo / "tiny-llama" / "build.json").read_text()
    with pytest.raises(UsageError, match="already exists"):
        build(tiny_model, repo)
    build(tiny_model, repo, force=True, choices=dataclasses.replace(
        repository.planner.Choices(), max_num_seqs=8))
    assert (repo / "tiny-llama" / "build.json").read_text() != first
    assert listing(repo)[0:2] == ["tiny-llama", "tiny-llama/1"] and not list(repo.glob(".tritonkit-*"))


def test_a_failed_write_leaves_nothing(tiny_model, tiny_adapters, tritonkit_home, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    repo = out / "repo"
    spec = repository.prepare(str(tiny_model), "cpu", repository=repo, adapters=(str(tiny_adapters["a"]),))

    def broken_merge(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(lora, "merge", broken_merge)
    with pytest.raises(RuntimeError, match="disk full"):
        repository.write(spec)
    assert listing(out) == []  # no repository, no staging directory


def test_name_rules(tiny_model, tritonkit_home, tmp_path):
    for bad, message in (("a/b", "must not contain path separators"), ("..", "may only use"),
                         ("my model", "may only use")):
        with pytest.raises(UsageError, match=message):
            repository.prepare(str(tiny_model), "cpu", name=bad, repository=tmp_path / "repo")
    assert repository.prepare(str(tiny_model), "cpu", name="ok_1.2-x", repository=tmp_path / "r").name == "ok_1.2-x"


def test_output_path_under_a_file_is_not_writable(tiny_model, tritonkit_home, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is not writable: .*file is not a directory"):
        repository.prepare(str(tiny_model), "cpu", repository=tmp_path / "file" / "repo")


@pytest.mark.parametrize("text, message", [
    ('backend: "python"\ninstance_group [{ kind: KIND_MODEL }]\n'
     'parameters: { key: "REPORT_CUSTOM_METRICS" value: { string_value: "true" } }', 'not "vllm"'),
    ('backend: "vllm"\ninstance_group [{ kind: KIND_GPU }]\n'
     'parameters: { key: "REPORT_CUSTOM_METRICS" value: { string_value: "true" } }', "KIND_MODEL"),
    ('backend: "vllm"\ninstance_group [{ kind: KIND_MODEL }]', "REPORT_CUSTOM_METRICS"),
    ('backend: "vllm"\nmax_batch_size: 8\ninstance_group [{ kind: KIND_MODEL }]\n'
     'parameters: { key: "REPORT_CUSTOM_METRICS" value: { string_value: "true" } }', "auto-complete"),
    ('backend: vllm', "does not parse"),
])
def test_config_pbtxt_validation_rejects(text, message):
    with pytest.raises(TritonkitError, match=message):
        repository.validate_config_pbtxt(text)


@pytest.mark.parametrize("args, message", [
    ({"model": "m", "disable_log_stats": "false"}, "disable_log_stats: 'false' is not of type 'boolean'"),
    ({"model": "m", "disable_log_stats": False, "max_lora_rank": 12}, "max_lora_rank"),
    ({"disable_log_stats": False}, "'model' is a required property"),
    ({"model": "m", "disable_log_stats": False, "max_batch_tokens": 8}, "does not accept: max_batch_tokens"),
])
def test_model_json_validation_rejects(args, message):
    with pytest.raises(TritonkitError, match=message):
        repository.validate_model_json(args)


def test_load_build_needs_one_model_or_a_name(tiny_model, tritonkit_home, tmp_path):
    repo = tmp_path / "repo"
    with pytest.raises(UsageError, match="not found"):
        buildrecord.load(repo)
    repo.mkdir()
    with pytest.raises(UsageError, match="holds no tritonkit build"):
        buildrecord.load(repo)
    build(tiny_model, repo, name="one")
    assert buildrecord.load(repo).model_name == "one"
    build(tiny_model, repo, name="two")
    with pytest.raises(UsageError, match=r"holds several models \(one, two\)"):
        buildrecord.load(repo)
    assert buildrecord.load(repo, "two").model_name == "two"
    with pytest.raises(UsageError, match="no tritonkit build of model 'three'"):
        buildrecord.load(repo, "three")


@pytest.mark.parametrize("adapters", [(), ("a", "b")])
def test_vllm_accepts_the_engine_arguments(tiny_model, tiny_adapters, tritonkit_home, tmp_path, monkeypatch,
                                           adapters):
    """vLLM turns model.json into its engine config (no engine is started), with build.json's env."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    target = build(tiny_model, tmp_path / "repo", adapters=tuple(f"{n}={tiny_adapters[n]}" for n in adapters))
    record = buildrecord.load(tmp_path / "repo")
    for key, value in record.runtime_env.items():
        monkeypatch.setenv(key, value)
    config = AsyncEngineArgs(**json.loads((target / "1" / "model.json").read_text())).create_engine_config()
    plan = record.plan
    assert config.model_config.max_model_len == plan["max_model_len"]
    assert config.scheduler_config.max_num_seqs == plan["max_num_seqs"]
    # The planner's activation estimate assumes vLLM's default step for an engine behind a server.
    assert config.scheduler_config.max_num_batched_tokens == plan["step_tokens"]
    assert config.cache_config.kv_cache_memory_bytes == plan["kv_cache_bytes"]
    if adapters:
        assert (config.lora_config.max_lora_rank, config.lora_config.max_loras) == (16, 2)
