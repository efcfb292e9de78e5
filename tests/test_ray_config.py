"""The Serve config writer (tritonkit.runtime.ray_config): pure, no Ray cluster."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from tritonkit.buildrecord import BuildRecord, GpuInfo, LoraInfo, ModelInfo
from tritonkit.errors import UsageError
from tritonkit.runtime import ray_config as rc

ENGINE = {"model": "/models/tiny", "dtype": "float32", "max_model_len": 1024, "max_num_seqs": 64,
          "tensor_parallel_size": 1, "disable_log_stats": False}


def build(name="tiny", kind="cpu", engine=None, env=None, adapters=None) -> BuildRecord:
    return BuildRecord(model_name=name, model=ModelInfo(name=name, source="/models/tiny"),
                       gpu=GpuInfo(profile=kind if kind == "cpu" else "a100-80g", kind=kind),
                       engine_args=dict(engine or ENGINE),
                       lora=LoraInfo(mode="serve", adapters=adapters, max_lora_rank=16) if adapters else LoraInfo(),
                       runtime_env=env or {})


def only_llm(config: dict) -> dict:
    [app] = config["applications"]
    [llm] = app["args"]["llm_configs"]
    return llm


def test_engine_args_pass_through_except_the_ones_ray_sets():
    config, notes = rc.serve_config([build()], rc.RayConfigOptions(app_name="x", http_port=9000))
    llm = only_llm(config)
    assert llm["model_loading_config"] == {"model_id": "tiny", "model_source": "/models/tiny"}
    assert llm["engine_kwargs"] == {k: v for k, v in ENGINE.items() if k != "model"}
    assert llm["experimental_configs"] == {"stream_batching_interval_ms": 0}
    assert config["http_options"] == {"host": "127.0.0.1", "port": 9000}
    assert config["applications"][0]["import_path"] == "ray.serve.llm:build_openai_app"
    assert config["applications"][0]["name"] == "x" and notes == []


def test_model_json_wins_over_the_recorded_engine_args():
    edited = {**ENGINE, "model": "/elsewhere", "served_model_name": "nope", "max_num_seqs": 8}
    llm = only_llm(rc.serve_config([build()], rc.RayConfigOptions(), {"tiny": edited})[0])
    assert llm["model_loading_config"]["model_source"] == "/elsewhere"
    assert llm["engine_kwargs"]["max_num_seqs"] == 8
    assert "served_model_name" not in llm["engine_kwargs"] and "model" not in llm["engine_kwargs"]


def test_the_executor_is_rays_to_choose():
    """Ray Serve LLM refuses any executor but its own on GPUs (a pinned one would fail the deploy)."""
    llm = only_llm(rc.serve_config([build(kind="gpu")], rc.RayConfigOptions(),
                                   {"tiny": {**ENGINE, "distributed_executor_backend": "uni"}})[0])
    assert "distributed_executor_backend" not in llm["engine_kwargs"]


def test_runtime_env_goes_to_env_vars_as_strings():
    llm = only_llm(rc.serve_config([build(env={"VLLM_CPU_KVCACHE_SPACE": 1})], rc.RayConfigOptions())[0])
    assert llm["runtime_env"] == {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}


def test_cpu_builds_get_small_reservations_and_a_free_ingress():
    config, _ = rc.serve_config([build()], rc.RayConfigOptions(replicas=2))
    llm = only_llm(config)
    assert llm["accelerator_config"] == {"kind": "cpu"}
    assert llm["placement_group_config"] == {"bundles": [{"CPU": rc.CPU_BUNDLE}]}
    assert llm["deployment_config"] == {"num_replicas": 2, "ray_actor_options": {"num_cpus": rc.CPU_REPLICA_ACTOR}}
    assert config["applications"][0]["args"]["ingress_deployment_config"] == {"ray_actor_options": {"num_cpus": 0}}


def test_gpu_builds_keep_rays_defaults():
    config, _ = rc.serve_config([build(kind="gpu")], rc.RayConfigOptions(replicas=3))
    llm = only_llm(config)
    assert "accelerator_config" not in llm and "placement_group_config" not in llm
    assert llm["deployment_config"] == {"num_replicas": 3}
    assert "ingress_deployment_config" not in config["applications"][0]["args"]


def test_autoscale_range_replaces_the_fixed_count():
    llm = only_llm(rc.serve_config([build(kind="gpu")], rc.RayConfigOptions(autoscale=(0, 4)))[0])
    assert llm["deployment_config"] == {"autoscaling_config": {
        "min_replicas": 0, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 32}}


@pytest.mark.parametrize("text, expected", [("1:4", (1, 4)), ("0:1", (0, 1)), ("3:3", (3, 3)), (None, None)])
def test_parse_autoscale(text, expected):
    assert rc.parse_autoscale(text) == expected


@pytest.mark.parametrize("text, match", [("4:1", "not a range"), ("x", "not MIN:MAX"), ("1:2:3", "not MIN:MAX"),
                                         ("0:0", "not a range"), ("-1:2", "not a range")])
def test_parse_autoscale_rejects(text, match):
    with pytest.raises(UsageError, match=match):
        rc.parse_autoscale(text)


def test_bad_replicas_and_no_builds_are_usage_errors():
    with pytest.raises(UsageError, match="at least 1"):
        rc.serve_config([build()], rc.RayConfigOptions(replicas=0))
    with pytest.raises(UsageError, match="no tritonkit build"):
        rc.serve_config([], rc.RayConfigOptions())


def test_local_adapters_are_not_served_and_say_why():
    config, notes = rc.serve_config([build(adapters={"b": "/x/b", "a": "/x/a"})], rc.RayConfigOptions())
    assert "lora_config" not in only_llm(config)
    [note] = notes
    assert (note.model, note.adapters, note.served) == ("tiny", ["a", "b"], False)
    assert "cloud storage" in note.reason


def test_adapters_in_cloud_storage_are_served():
    engine = {**ENGINE, "enable_lora": True, "max_loras": 2, "max_lora_rank": 16}
    config, [note] = rc.serve_config([build(engine=engine, adapters={"a": "/x/a", "b": "/x/b"})],
                                     rc.RayConfigOptions(lora_uri="s3://bucket/adapters/"))
    assert only_llm(config)["lora_config"] == {"dynamic_lora_loading_path": "s3://bucket/adapters",
                                               "max_num_adapters_per_replica": 2}
    assert note.served and "tiny:<adapter>" in note.reason
    with pytest.raises(UsageError, match="not cloud storage"):
        rc.serve_config([build()], rc.RayConfigOptions(lora_uri="/local/adapters"))


def test_several_builds_are_one_app_with_one_llm_config_each():
    config, _ = rc.serve_config([build("a"), build("b", kind="gpu")], rc.RayConfigOptions())
    [app] = config["applications"]
    assert [c["model_loading_config"]["model_id"] for c in app["args"]["llm_configs"]] == ["a", "b"]
    assert "ingress_deployment_config" not in app["args"]  # a GPU model: Ray's default ingress


def test_yaml_round_trips_with_a_header_for_cluster_users():
    config, _ = rc.serve_config([build()], rc.RayConfigOptions())
    text = rc.to_yaml(config, rc.cluster_header(config))
    assert text.startswith("# Ray Serve config written by tritonkit")
    assert "serve deploy" in text and "local folder" in text and "use 0.0.0.0 on a cluster" in text
    assert yaml.safe_load(text) == config


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray Serve not installed (pip install '.[ray]')")
@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_ray_accepts_the_config(kind):
    """Ray's own schema of `serve deploy` files, and its LLMConfig for each model: the CPU shape (CI)
    and the GPU one (the H100's compare), whichever Ray is installed (2.60 in CI, 2.58.1 on the GPU
    machine: run this file under both)."""
    from ray.serve.schema import ServeDeploySchema

    engine = {**ENGINE, "dtype": "bfloat16", "gpu_memory_utilization": 0.9, "max_num_batched_tokens": 2048}
    config, _ = rc.serve_config([build(kind=kind, engine=engine, env={"VLLM_CPU_KVCACHE_SPACE": "1"})],
                                rc.RayConfigOptions(autoscale=(1, 2)))
    ServeDeploySchema.model_validate(config)
    from ray.serve.llm import LLMConfig

    llm = LLMConfig.model_validate(only_llm(config))
    assert llm.engine_kwargs["max_num_batched_tokens"] == 2048  # pinned arguments reach Ray's engine as given
    assert llm.experimental_configs["stream_batching_interval_ms"] == 0


@pytest.mark.parametrize("vllm, ray", [("0.25.0", "2.58.1"), ("0.25.1+cpu", "2.58.1"), ("0.28.0", "2.58.1"),
                                       ("0.29.0", "2.60.0"), ("0.32.0", "2.60.0"), ("0.24.0", None),
                                       (None, None), ("dev", None)])
def test_the_ray_release_that_imports_each_vllm(vllm, ray):
    assert rc.ray_for_vllm(vllm) == ray


def test_the_header_names_the_ray_and_vllm_that_deployed_it():
    config, _ = rc.serve_config([build(kind="gpu")], rc.RayConfigOptions())
    header = rc.cluster_header(config, {"ray": "2.58.1", "vllm": "0.25.0"})
    assert "ray[serve]==2.58.1, vLLM 0.25.0," in header
    assert "ray[serve]==2.60.0, vLLM 0.32.0," in rc.cluster_header(config, {"vllm": "0.32.0"})  # Ray not installed here
    installed = rc.installed_versions()
    if "ray" in installed:
        assert f"ray[serve]=={installed['ray']}," in rc.cluster_header(config)


def test_a_deploy_that_cannot_import_vllm_names_the_ray_to_install(monkeypatch):
    from tritonkit.runtime import ray as ray_runtime

    failure = ("ImportError: vLLM is installed but failed to import. ... Original error: "
               "No module named 'vllm.entrypoints.serve.engine.protocol'")
    monkeypatch.setattr(rc, "installed_versions", lambda: {"ray": "2.60.0", "vllm": "0.25.0"})
    assert ray_runtime.deploy_hint(failure, "/tmp/x", local=True).endswith("pip install 'ray[serve]==2.58.1'")
    assert "tmp/x" in ray_runtime.deploy_hint(failure, "/tmp/x", local=False)  # a cluster's nodes: not ours to tell
    assert "tmp/x" in ray_runtime.deploy_hint("ValueError: max_model_len too large", "/tmp/x", local=True)
    monkeypatch.setattr(rc, "installed_versions", lambda: {"ray": "2.58.1", "vllm": "0.25.0"})
    assert "tmp/x" in ray_runtime.deploy_hint(failure, "/tmp/x", local=True)  # already the right Ray: another cause


# -- serve's Ray options, refused before anything starts ------------------------------------------

def _serve(*args, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITONKIT_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "tritonkit", "serve", "--runtime", "ray", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _repo(tmp_path):
    """A repository that holds one build record (no weights: nothing here may load a model)."""
    from tritonkit import buildrecord

    model = tmp_path / "repo" / "tiny"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('backend: "vllm"\n')
    (model / "1" / "model.json").write_text('{"model": "/nowhere", "max_model_len": 64}')
    buildrecord.save(model, build())
    return model.parent


def test_serve_rejects_a_bad_autoscale_range(tmp_path):
    p = _serve("-r", str(_repo(tmp_path)), "--autoscale", "4:1", tmp_path=tmp_path)
    assert p.returncode == 2 and "--autoscale 4:1 is not a range" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray Serve not installed (pip install '.[ray]')")
def test_serve_onto_a_cluster_that_does_not_answer(tmp_path):
    from tritonkit.runtime.spec import free_port

    p = _serve("-r", str(_repo(tmp_path)), "--address", f"http://127.0.0.1:{free_port()}", "--stream-batching-ms", "50",
               tmp_path=tmp_path)
    assert p.returncode == 4 and "no Ray cluster answers at http://127.0.0.1:" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "home" / "servers" / "tritonkit" / "server.json").exists()
    written = (tmp_path / "home" / "servers" / "tritonkit" / "serve_config.yaml").read_text()  # before deploying
    assert "stream_batching_interval_ms: 50" in written


def test_serve_rejects_a_negative_stream_batching_interval(tmp_path):
    p = _serve("-r", str(_repo(tmp_path)), "--stream-batching-ms", "-1", tmp_path=tmp_path)
    assert p.returncode == 2 and "--stream-batching-ms" in p.stderr and "Traceback" not in p.stderr


def test_the_local_head_deploys_model_json_pinned_as_triton_resolves_it(tiny_model, tmp_path, monkeypatch):
    """No Ray started: the config RayServer would deploy, from a real build's model.json."""
    import json
    import subprocess
    import sys

    from tritonkit import serving
    from tritonkit.runtime.spec import ServerSpec

    monkeypatch.setenv("TRITONKIT_HOME", str(tmp_path / "home"))
    repo = tmp_path / "repo"
    subprocess.run([sys.executable, "-m", "tritonkit", "build", str(tiny_model), "--gpu", "cpu", "--name", "tiny",
                    "-o", str(repo)], check=True, capture_output=True, timeout=300)
    model_json = json.loads((repo / "tiny" / "1" / "model.json").read_text())
    server = serving.make_server(ServerSpec(repository=repo, name="pins"), "ray")
    llm = only_llm(server._write_config())
    pinning = json.loads((tmp_path / "home" / "servers" / "pins" / "pinning.json").read_text())["tiny"]
    assert pinning["residual"] == {}  # Ray's engine resolves as Triton's does
    expected = {k: v for k, v in pinning["pinned"].items() if k not in rc.RAY_OWNED_ARGS}
    assert llm["engine_kwargs"] == expected
    assert {k: v for k, v in model_json.items() if k not in rc.RAY_OWNED_ARGS}.items() <= expected.items()
    assert llm["model_loading_config"] == {"model_id": "tiny", "model_source": model_json["model"]}
