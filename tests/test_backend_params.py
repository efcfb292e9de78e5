"""Sampling parameters as Triton clients send them (strings, JSON text), typed for vLLM. No server."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tritonkit.backend.params import typed_sampling  # noqa: E402


def test_strings_become_the_field_types():
    typed = typed_sampling({"temperature": "0", "top_p": "1", "max_tokens": "16", "seed": "3", "ignore_eos": "true",
                            "skip_special_tokens": "false", "stop": "###", "stop_token_ids": "[2, 3]"})
    assert typed == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 16, "seed": 3, "ignore_eos": True,
                     "skip_special_tokens": False, "stop": "###", "stop_token_ids": [2, 3]}
    assert isinstance(typed["temperature"], float) and isinstance(typed["max_tokens"], int)


def test_typed_values_and_unknown_keys_pass_through():
    assert typed_sampling({"max_tokens": 4, "logprobs": 2, "colour": "red"}) == {"max_tokens": 4, "logprobs": 2,
                                                                                  "colour": "red"}


@pytest.mark.parametrize("given,message", [
    ({"max_tokens": "lots"}, "max_tokens: 'lots' is not an integer"),
    ({"temperature": "warm"}, "temperature: 'warm' is not a number"),
    ({"ignore_eos": "maybe"}, "ignore_eos: 'maybe' is not a boolean"),
    ({"stop_token_ids": "[2,"}, "stop_token_ids: '\\[2,' is not JSON"),
])
def test_bad_strings_name_the_parameter(given, message):
    with pytest.raises(ValueError, match=message):
        typed_sampling(given)


def test_the_result_builds_sampling_params():
    from vllm.sampling_params import SamplingParams

    params = SamplingParams(**typed_sampling({"temperature": "0.5", "max_tokens": "7", "n": "2", "seed": "1"}))
    assert (params.temperature, params.max_tokens, params.n, params.seed) == (0.5, 7, 2, 1)
