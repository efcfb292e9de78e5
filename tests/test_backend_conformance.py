"""tritonkit's local vllm backend against the official backend's contract, driven the way the
official backend's own tests and clients drive it (tritonclient gRPC streaming, request
parameters, exact error messages, the metrics port, health, multi-LoRA).

One real Triton 2.51 (explicit model control, as the official health check needs) serves two
tiny-Llama models for the whole module (plain is loaded when first needed):
  tiny  -- LoRA adapters a and b, REPORT_CUSTOM_METRICS on
  plain -- no LoRA, ENABLE_VLLM_HEALTH_CHECK on, REPORT_CUSTOM_METRICS on but disable_log_stats
           true in model.json (so, as with the official backend, no vLLM metrics)
The health test kills plain's engine, so it runs last.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")

from tritonkit import buildrecord, serving  # noqa: E402
from tritonkit.runtime.health import wait_ready  # noqa: E402
from tritonkit.runtime.install import ensure_triton  # noqa: E402
from tritonkit.runtime.local import install_vllm_backend, server_command, server_env, stop_group  # noqa: E402
from tritonkit.runtime.spec import ServerSpec, free_port  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the first test starts the server (minutes here)

PROMPT = "In this example,"
BASE_SAMPLING = {"temperature": "0", "top_p": "1", "max_tokens": "6", "ignore_eos": "true"}


def build(base: Path, name: str, out: Path, *extra: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "tritonkit", "build", str(base), "--gpu", "cpu", "--name", name,
                           "-o", str(out), *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out / name


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_model, tiny_adapters):
    root = tmp_path_factory.mktemp("conformance")
    repo = root / "repo"
    build(tiny_model, "tiny", repo, "--lora-mode", "serve",
          "--adapter", f"a={tiny_adapters['a']}", "--adapter", f"b={tiny_adapters['b']}")
    plain = build(tiny_model, "plain", root / "other")
    model_json = plain / "1" / "model.json"
    model_json.write_text(json.dumps({**json.loads(model_json.read_text()), "disable_log_stats": True}))
    with open(plain / "config.pbtxt", "a") as f:
        f.write('\nparameters: {\n  key: "ENABLE_VLLM_HEALTH_CHECK"\n  value: { string_value: "true" }\n}\n')
    shutil.copytree(plain, repo / "plain")
    return repo


def start_server(repository: Path, models: list[str], extra_env: dict[str, str]):
    """Yield a Triton server on `repository` (explicit model control, `models` loaded); stop it after."""
    env = {**serving.runtime_env(buildrecord.load_all(repository, models)), **extra_env}
    spec = ServerSpec(repository=repository, name=f"backend-test-{os.getpid()}", http_port=free_port(),
                      grpc_port=free_port(), metrics_port=free_port(), env=env)
    install = ensure_triton()
    install_vllm_backend(install)
    log_path = repository.parent / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            server_command(spec, install) + ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)],
            env=server_env(spec, install), cwd=install.stub_site, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(spec.http_url, models, 900, lambda: proc.poll() is None,
                   lambda: log_path.read_text(errors="replace")[-3000:])
        yield {"grpc": spec.grpc_url, "http": spec.http_url, "metrics": spec.metrics_url, "log": log_path,
               "repository": repository}
    finally:
        stop_group(proc.pid, 30, proc)


@pytest.fixture(scope="module")
def server(repository):
    health_fail_file = repository.parent / "engine-health-fails"
    yield from start_server(repository, ["tiny"], {"TRITONKIT_ENGINE_HEALTH_FAIL_FILE": str(health_fail_file)})


@pytest.fixture(scope="module")
def plain(server):
    """The second model, loaded when a test first needs it (two engines loading at once are slow here)."""
    with grpcclient.InferenceServerClient(server["grpc"]) as client:
        client.load_model("plain")
        assert client.is_model_ready("plain")
    return "plain"


# --- a client as the official backend's tests write it ----------------------------------------

def inputs_for(prompt=PROMPT, stream=True, sampling=None, exclude_input_in_output=None, **flags):
    inputs = [grpcclient.InferInput("text_input", [1], "BYTES")]
    inputs[-1].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    inputs.append(grpcclient.InferInput("stream", [1], "BOOL"))
    inputs[-1].set_data_from_numpy(np.array([stream], dtype=bool))
    if sampling is not None:
        inputs.append(grpcclient.InferInput("sampling_parameters", [1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([json.dumps(sampling).encode()], dtype=np.object_))
    for name, value in [("exclude_input_in_output", exclude_input_in_output), *flags.items()]:
        if value is not None:
            inputs.append(grpcclient.InferInput(name, [1], "BOOL"))
            inputs[-1].set_data_from_numpy(np.array([value], dtype=bool))
    return inputs


def infer(server, inputs, model="tiny", parameters=None):
    """[(result, error)] of one request, as tritonclient's stream callback hands them over."""
    responses = []
    with grpcclient.InferenceServerClient(server["grpc"]) as client:
        client.start_stream(lambda result, error: responses.append((result, error)))
        client.async_stream_infer(model, inputs=inputs, parameters=parameters)
        client.stop_stream()  # waits for the final response
    assert responses
    return responses


def results(responses):
    for result, error in responses:
        assert error is None, error
    return [result for result, _ in responses]


def text_of(result) -> str:
    return result.as_numpy("text_output")[0].decode()


def only_error(responses) -> str:
    assert len(responses) == 1
    result, error = responses[0]
    assert error is not None
    return error.message()


# --- every combination of the additional outputs --------------------------------------------

FLAG = [None, True, False]
COMBINATIONS = list(itertools.product([True, False], FLAG, FLAG, [None, 0, 2], FLAG, FLAG))


@pytest.mark.parametrize("stream,finish_reason,cumulative_logprob,logprobs,num_input,num_output", COMBINATIONS)
def test_additional_outputs(server, stream, finish_reason, cumulative_logprob, logprobs, num_input, num_output):
    sampling = dict(BASE_SAMPLING) if logprobs is None else {**BASE_SAMPLING, "logprobs": logprobs}
    inputs = inputs_for(stream=stream, sampling=sampling, return_finish_reason=finish_reason,
                        return_cumulative_logprob=cumulative_logprob, return_logprobs=True,
                        return_num_input_tokens=num_input, return_num_output_tokens=num_output)
    responses = results(infer(server, inputs, parameters=sampling))
    if not stream:
        assert len(responses) == 1
    assert "".join(text_of(r) for r in responses).strip()

    previous_cumulative = 0.0
    for i, result in enumerate(responses):
        reason = result.as_numpy("finish_reason")
        if finish_reason:
            assert reason[0].decode() == ("length" if i == len(responses) - 1 else "None")
        else:
            assert reason is None
        cumulative = result.as_numpy("cumulative_logprob")
        if cumulative_logprob:
            value = float(cumulative[0])
            assert value != previous_cumulative  # NaN (no logprobs asked) differs from everything
            previous_cumulative = value
            assert np.isnan(value) == (logprobs is None)
        else:
            assert cumulative is None
        n_in = result.as_numpy("num_input_tokens")
        if num_input:
            assert 0 < int(n_in[0]) <= len(PROMPT)
        else:
            assert n_in is None
        n_out = result.as_numpy("num_output_tokens")
        if num_output:
            assert int(n_out[0]) > 0
        else:
            assert n_out is None
        check_logprobs(result, stream, logprobs, n_out if num_output else None)


def check_logprobs(result, stream, requested, n_out):
    parsed = json.loads(result.as_numpy("logprobs")[0].decode())
    if requested is None:
        assert parsed is None
        return
    assert isinstance(parsed, list) and len(parsed) >= 1
    if n_out is not None:
        assert len(parsed) == int(n_out[0])
    text = ""
    for position in parsed:
        assert 1 <= len(position) <= requested + 1
        ranked_first = [entry for entry in position.values() if entry["rank"] == 1]
        assert len(ranked_first) == 1
        for token_id, entry in position.items():
            assert token_id.isdigit() and set(entry) == {"logprob", "rank", "decoded_token"}
            assert isinstance(entry["logprob"], float) and isinstance(entry["decoded_token"], str)
        text += ranked_first[0]["decoded_token"]
    assert (text if stream else PROMPT + text) == text_of(result)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("return_logprobs", [None, False])
def test_no_logprobs_output_unless_asked(server, stream, return_logprobs):
    inputs = inputs_for(stream=stream, sampling={**BASE_SAMPLING, "logprobs": 2}, return_logprobs=return_logprobs)
    for result in results(infer(server, inputs)):
        assert result.as_numpy("logprobs") is None


def test_cumulative_logprob_is_the_sum_of_the_sampled_logprobs(server):
    inputs = inputs_for(stream=True, sampling={**BASE_SAMPLING, "logprobs": 1}, return_logprobs=True,
                        return_cumulative_logprob=True)
    total = 0.0
    for result in results(infer(server, inputs)):
        for position in json.loads(result.as_numpy("logprobs")[0].decode()):
            total += next(e["logprob"] for e in position.values() if e["rank"] == 1)
        assert float(result.as_numpy("cumulative_logprob")[0]) == pytest.approx(total, rel=1e-4)


# --- prompt in the output, streaming refusal --------------------------------------------------

def test_streaming_with_the_prompt_in_the_output_is_refused(server):
    message = only_error(infer(server, inputs_for(stream=True, sampling=BASE_SAMPLING, exclude_input_in_output=False)))
    assert message == "Error generating stream: When streaming, `exclude_input_in_output` = False is not allowed."


def test_prompt_in_the_output(server):
    def full_text(stream, exclude):
        responses = results(infer(server, inputs_for(stream=stream, sampling=BASE_SAMPLING,
                                                     exclude_input_in_output=exclude)))
        if not stream:
            assert len(responses) == 1
        return "".join(text_of(r) for r in responses)

    generated = full_text(False, True)
    assert generated and not generated.startswith(PROMPT)
    assert full_text(False, None) == full_text(False, False) == PROMPT + generated  # greedy: same text
    assert full_text(True, None) == full_text(True, True) == generated


# --- sampling parameters --------------------------------------------------------------------

def output_tokens(responses) -> int:
    return sum(int(r.as_numpy("num_output_tokens").sum()) for r in results(responses))


def test_sampling_parameters_as_request_parameters(server):
    given = {"temperature": "0", "max_tokens": 3, "ignore_eos": "true"}
    as_parameters = infer(server, inputs_for(return_num_output_tokens=True), parameters=given)
    assert output_tokens(as_parameters) == 3
    as_tensor = infer(server, inputs_for(sampling=given, return_num_output_tokens=True))
    assert "".join(map(text_of, results(as_parameters))) == "".join(map(text_of, results(as_tensor)))


def test_the_tensor_wins_over_request_parameters(server):
    responses = infer(server, inputs_for(sampling={"max_tokens": 2, "ignore_eos": True}, return_num_output_tokens=True),
                      parameters={"max_tokens": 5, "no_such_parameter": "x"})
    assert output_tokens(responses) == 2


def test_n_sequences_come_back_side_by_side(server):
    sampling = {"max_tokens": 4, "ignore_eos": True, "n": 2, "temperature": 1.0, "seed": 3}
    (result,) = results(infer(server, inputs_for(stream=False, sampling=sampling, exclude_input_in_output=True,
                                                 return_num_output_tokens=True, return_finish_reason=True)))
    assert result.as_numpy("text_output").shape == (2,)
    assert result.as_numpy("num_output_tokens").tolist() == [4, 4]
    assert [r.decode() for r in result.as_numpy("finish_reason")] == ["length", "length"]


@pytest.mark.parametrize("sampling,expected", [
    ({"max_tokens": "many"}, r"^Error generating stream: .*max_tokens.*'many'"),
    ({"max_tokens": 4, "temperature": -1}, r"^Error generating stream: .*temperature"),
    ({"max_tokens": 4, "no_such_parameter": 1}, r"^Error generating stream: .*no_such_parameter"),
])
def test_bad_sampling_parameters_are_a_request_error(server, sampling, expected):
    assert re.search(expected, only_error(infer(server, inputs_for(sampling=sampling))))
    assert output_tokens(infer(server, inputs_for(sampling=BASE_SAMPLING, return_num_output_tokens=True))) == 6


# --- multi-LoRA ------------------------------------------------------------------------------

def test_lora_errors_match_the_official_backend(server, plain):
    unknown = only_error(infer(server, inputs_for(sampling={**BASE_SAMPLING, "lora_name": "nope"})))
    assert unknown == "LoRA nope is not supported, we currently support ['a', 'b']"
    disabled = only_error(infer(server, inputs_for(sampling={**BASE_SAMPLING, "lora_name": "a"}), model="plain"))
    assert disabled == "LoRA feature is not enabled."
    with_adapter = results(infer(server, inputs_for(sampling={**BASE_SAMPLING, "lora_name": "a"})))
    assert "".join(map(text_of, with_adapter))


# --- metrics ---------------------------------------------------------------------------------

def scrape(server) -> dict[str, float]:
    """vLLM metric samples by name and labels, e.g. 'vllm:prompt_tokens_total{model="tiny",version="1"}'."""
    text = urllib.request.urlopen(server["metrics"], timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("vllm:")}


def test_vllm_metrics_with_model_and_version_labels(server, plain):
    # The engine counts a request's last tokens just after its final response: the test before's
    # request can still add one (seen: 19 generated tokens counted for 18). Start once they settle.
    before = scrape(server)
    for _ in range(20):  # until two scrapes 0.1 s apart agree (buckets included, unlike server_metrics)
        time.sleep(0.1)
        before, previous = scrape(server), before
        if before == previous:
            break
    prompts = ["The most dangerous animal is", "The capital of France is", "The future of AI is"]
    prompt_tokens = 0
    for prompt in prompts:
        inputs = inputs_for(prompt=prompt, sampling=BASE_SAMPLING, return_num_input_tokens=True)
        prompt_tokens += int(results(infer(server, inputs))[0].as_numpy("num_input_tokens")[0])
    # vLLM's stats for a request come after its final response (as in the official backend): wait
    # for the last request's histograms instead of racing them.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(server)
        done = after.get('vllm:e2e_request_latency_seconds_count{model="tiny",version="1"}', 0.0)
        if done - before.get('vllm:e2e_request_latency_seconds_count{model="tiny",version="1"}', 0.0) >= len(prompts) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    def grew(name, labels='{model="tiny",version="1"}'):
        return after[name + labels] - before.get(name + labels, 0.0)

    assert grew("vllm:prompt_tokens_total") == prompt_tokens
    assert grew("vllm:generation_tokens_total") == 6 * len(prompts)
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                      "vllm:request_prompt_tokens", "vllm:request_generation_tokens", "vllm:request_params_n"):
        assert grew(histogram + "_count") == len(prompts), histogram
        assert grew(histogram + "_bucket", '{model="tiny",version="1",le="+Inf"}') == len(prompts), histogram
    assert grew("vllm:request_generation_tokens_sum") == 6 * len(prompts)
    assert grew("vllm:request_prompt_tokens_sum") == prompt_tokens
    assert grew("vllm:time_per_output_token_seconds_count") == 5 * len(prompts)
    assert grew("vllm:time_to_first_token_seconds_sum") > 0
    assert after['vllm:e2e_request_latency_seconds_bucket{model="tiny",version="1",le="60"}'] >= len(prompts)
    # every token ran in some engine step: one request at a time, so a prefill step and 5 decode steps each
    assert grew("vllm:iteration_tokens_total_sum") == prompt_tokens + 6 * len(prompts)
    assert grew("vllm:iteration_tokens_total_count") == 6 * len(prompts)
    # each prompt was looked up in the prefix cache once (what a hit covers depends on earlier tests)
    assert grew("vllm:prefix_cache_queries_total") == prompt_tokens
    assert 0 <= grew("vllm:prefix_cache_hits_total") <= prompt_tokens
    # plain asks for metrics in config.pbtxt but disables vLLM's stats in model.json: none, as officially
    assert not [name for name in after if 'model="plain"' in name]


# --- health (last: it kills plain's engine) ------------------------------------------------------

def engine_pid(server, model: str) -> int:
    """The engine of `model` in this test's server (its model.json is in the server's repository:
    other servers on the machine, a soak's say, serve models of the same name)."""
    model_json = f"{server['repository']}/{model}/".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tritonkit.backend.engine" in cmdline and any(arg.startswith(model_json) for arg in cmdline):
            return int(pid)
    raise AssertionError(f"no engine process for {model}")


def model_ready(server, model) -> tuple[bool, bool]:
    with grpcclient.InferenceServerClient(server["grpc"]) as client:
        states = [m.state for m in client.get_model_repository_index().models if m.name == model]
        return client.is_model_ready(model), states == ["READY"]


def test_unhealthy_engine_makes_the_model_unavailable(server, plain, repository):
    """As the official backend's L0_check_health_vllm (which mocks vLLM's check_health to fail),
    then, unlike it, back: tritonkit restarts the engine and loads the model again."""
    assert model_ready(server, "plain") == (True, True)
    assert results(infer(server, inputs_for(sampling=BASE_SAMPLING), model="plain"))
    fail_file = repository.parent / "engine-health-fails"
    fail_file.touch()
    try:
        assert only_error(infer(server, inputs_for(sampling=BASE_SAMPLING), model="plain")) == \
            "Model is unavailable due to unhealthy vLLM engine"
        deadline = time.monotonic() + 30
        while model_ready(server, "plain") != (False, False) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert model_ready(server, "plain") == (False, False)
        assert "unknown model" in only_error(infer(server, inputs_for(sampling=BASE_SAMPLING), model="plain"))
    finally:
        fail_file.unlink()
    # the other model is untouched
    assert model_ready(server, "tiny") == (True, True)
    assert output_tokens(infer(server, inputs_for(sampling=BASE_SAMPLING, return_num_output_tokens=True))) == 6
    deadline = time.monotonic() + 400
    while model_ready(server, "plain") != (True, True) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert model_ready(server, "plain") == (True, True)
    assert results(infer(server, inputs_for(sampling=BASE_SAMPLING), model="plain"))
