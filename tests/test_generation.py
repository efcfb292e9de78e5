"""What `tritonkit generate` says about the timing of one streamed answer."""

from __future__ import annotations

import pytest

from tritonkit.generation import GenerationSummary


def summary(tokens, ttft_s, last_s, total_s=None):
    return GenerationSummary("text", tokens, 5, "length", ttft_s, total_s or last_s + 0.001, last_s)


def test_decode_rate_is_measured_from_the_first_token_to_the_last():
    s = summary(9, ttft_s=0.050, last_s=0.250)
    assert s.tokens_per_s == pytest.approx(8 / 0.200) and not s.burst
    assert s.line().startswith("time to first token 50 ms, 9 tokens in 0.25 s, 40.0 tokens/s decoding "
                               "(8 tokens in the 0.20 s from the first to the last)")


def test_tokens_that_arrive_together_are_called_a_burst_without_a_rate():
    s = summary(64, ttft_s=0.188, last_s=0.1897, total_s=0.19)  # the "37767.2 tokens/s"
    assert s.burst and s.tokens_per_s is None
    assert "64 tokens in 0.19 s, all in one burst 0.19 s after sending" in s.line()
    assert "tokens/s" not in s.line()


def test_one_token_has_no_rate():
    s = summary(1, ttft_s=0.05, last_s=0.05)
    assert not s.burst and s.tokens_per_s is None and "no decode rate (fewer than 2 tokens)" in s.line()
