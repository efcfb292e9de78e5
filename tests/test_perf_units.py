"""The pure parts of tritonkit perf: schedules, records, statistics, SLOs, cost, workload, reports."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest

from tritonkit.client import Chunk
from tritonkit.errors import UsageError
from tritonkit.paths import shipped
from tritonkit.perf import cost, report, server_metrics, slo, stability, summary
from tritonkit.perf.aggregate import Aggregator
from tritonkit.perf.records import RequestRecord
from tritonkit.perf.runner import RunResult
from tritonkit.perf.schedules import Load, offsets, parse_values, sweep
from tritonkit.perf.stats import HdrSeries, summarize
from tritonkit.perf.workload import Workload, corpus_prompts, load_prompt_file, parse_output_length

SEED_CSV = Path(__file__).parent / "data" / "seed-a10-cost.csv"  # the seed study's A10 rows


# -- schedules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,duration", [(10, 2), (7, 3), (0.5, 5), (33.3, 1.5), (1000, 0.25)])
def test_constant_rate_sends_rate_times_duration(rate, duration):
    sent = list(offsets(Load("rate", rate), duration))
    assert abs(len(sent) - rate * duration) <= 1
    assert len(sent) == math.ceil(rate * duration - 1e-9)
    assert all(b - a == pytest.approx(1 / rate) for a, b in zip(sent, sent[1:]))


def test_poisson_is_seeded_and_has_the_mean_rate():
    a = list(offsets(Load("poisson", 50), 200, seed=3))
    assert a == list(offsets(Load("poisson", 50), 200, seed=3))
    assert len(a) / 200 == pytest.approx(50, rel=0.03)
    gaps = [y - x for x, y in zip(a, a[1:])]
    assert max(gaps) > 3 * (1 / 50)  # exponential gaps, not constant


def test_count_limits_the_schedule():
    assert len(list(offsets(Load("rate", 5), count=7))) == 7


def test_sweeps_parse_lists_and_ranges():
    assert parse_values("1,2,4") == [1, 2, 4]
    assert parse_values("2:10:4") == [2, 6, 10]
    assert parse_values("0.5:1.5:0.5") == [0.5, 1.0, 1.5]
    assert [l.label for l in sweep("concurrency", "1:3")] == ["1 users", "2 users", "3 users"]


@pytest.mark.parametrize("kind,value,message", [
    ("rate", -1, "rate must be a positive number"), ("rate", 0, "rate must be a positive number"),
    ("concurrency", 1.5, "concurrency must be a whole number"), ("poisson", float("nan"), "rate must be a positive"),
    ("burst", 1, "unknown load kind 'burst'")])
def test_bad_loads_are_usage_errors(kind, value, message):
    with pytest.raises(UsageError, match=message):
        Load(kind, value)


@pytest.mark.parametrize("text,message", [("", "holds no values"), ("a,b", "cannot read 'a,b'"), ("5:1", "bad range"),
                                          ("1:5:0", "bad range"), ("1:2:3:4", "cannot read '1:2:3:4'")])
def test_bad_sweeps_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_values(text)


# -- records and statistics -------------------------------------------------------------------------

def _record(intended=100.0, sent=100.002, first=100.05, gap=0.02, k=5, index=0, error=None):
    r = RequestRecord(index, intended, max_tokens=k, prompt_tokens=10)
    r.sent = sent
    for i in range(k):
        r.observe(Chunk(f"t{i} ", 1, "length" if i == k - 1 else None, 10, first + i * gap, final=i == k - 1))
    if error:
        r.fail(error, "boom", r.done or first)
    return r


def test_record_metrics_are_timed_from_the_intended_send():
    r = _record()
    assert r.ttft == pytest.approx(0.05)
    assert r.e2e == pytest.approx(0.05 + 4 * 0.02)
    assert r.itl == pytest.approx([0.02] * 4)
    assert r.tpot == pytest.approx(0.02)
    assert r.send_lag == pytest.approx(0.002)
    assert (r.output_tokens, r.input_tokens, r.finish_reason, r.ok) == (5, 10, "length", True)


def test_empty_final_chunk_ends_the_request_without_an_itl_gap():
    r = RequestRecord(0, 0.0, max_tokens=2)
    r.observe(Chunk("a", 1, None, None, 0.1))
    r.observe(Chunk("b", 1, "length", None, 0.2))
    r.observe(Chunk("", None, None, None, 0.25, final=True))
    assert r.itl == pytest.approx([0.1]) and r.e2e == pytest.approx(0.25) and r.output_tokens == 2


def test_nearest_rank_percentiles():
    s = summarize(range(1, 101))
    assert (s.p50, s.p90, s.p95, s.p99, s.max, s.mean) == (50, 90, 95, 99, 100, 50.5)
    s = summarize([3.0])
    assert s.p50 == s.p99 == s.max == 3.0
    assert summarize([]).count == 0


def test_hdr_summary_is_within_a_tenth_of_a_percent_of_exact():
    rng = random.Random(1)
    values = [rng.lognormvariate(-3, 1) for _ in range(20000)]
    exact, h = summarize(values), HdrSeries()
    h.extend(values)
    approx = h.summary()
    for stat in ("p50", "p90", "p95", "p99", "max"):
        assert approx.get(stat) == pytest.approx(exact.get(stat), rel=2e-3, abs=2e-6)
    assert approx.mean == pytest.approx(exact.mean)


def test_aggregate_counts_add_up_and_failures_are_kept():
    bounds = slo.parse("e2e:p90<=150ms")
    agg = Aggregator(bounds)
    good = [_record(intended=i, sent=i, first=i + 0.05, index=i) for i in range(8)]
    slow = _record(intended=9, sent=9, first=9.5, index=9)  # e2e 0.58 s: not good
    failed = _record(intended=10, sent=10, first=10.05, index=10, error="server_error")
    timeout = RequestRecord(11, 11.0)
    timeout.sent = 11.0
    timeout.fail("timeout", "late", 12.0)
    for r in [*good, slow, failed, timeout]:
        agg.add(r)
    res = agg.result("x", "rate", 1, 0.0, 12.0)
    assert res.sent == 11 and res.ok == 9 and res.failed == 2 == sum(res.errors.values())
    assert res.ok + res.failed == res.sent
    assert res.errors == {"server_error": 1, "timeout": 1}
    assert res.summaries["e2e"].count == 9  # successful requests only
    assert res.good == 8  # failures are never good
    assert res.output_tokens == 45 and res.output_mismatch == 0
    assert res.rps == pytest.approx(9 / 12.0)


def test_soak_aggregation_keeps_constant_memory():
    agg = Aggregator([], exact=False, keep=50)
    for i in range(3000):
        agg.add(_record(intended=i, sent=i, first=i + 0.05, index=i))
    res = agg.result("soak", "rate", 1, 0, 3000)
    assert len(res.samples) == 50 and res.ok == 3000
    assert res.summaries["ttft"].p50 == pytest.approx(0.05, rel=1e-3)


# -- SLOs and stability -------------------------------------------------------------------------------

def test_slo_parsing_and_checks():
    b = slo.parse("e2e:p90<=1s, ttft:p99<=500ms,itl:max<=0.1")
    assert [(x.metric, x.stat, x.limit_s) for x in b] == [("e2e", "p90", 1.0), ("ttft", "p99", 0.5), ("itl", "max", 0.1)]
    assert slo.request_good(b, _record()) is True
    assert slo.request_good(slo.parse("ttft:p50<=10ms"), _record()) is False


@pytest.mark.parametrize("text,message", [("e2e<1", "cannot read SLO"), ("latency:p90<=1", "unknown SLO metric 'latency'"),
                                          ("e2e:p42<=1", "unknown SLO statistic 'p42'"), ("e2e:p90<=-1", "cannot read SLO"),
                                          ("e2e:p90<=x", "cannot read SLO")])
def test_bad_slos_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        slo.parse(text)


def test_stability_needs_three_windows_within_ten_percent():
    w = lambda tp, lat: stability.Window(0, 1, 10, tp, lat)
    assert not stability.stable([w(10, 1), w(10, 1)])
    assert stability.stable([w(1, 9), w(10, 1.0), w(10.5, 1.05), w(9.8, 0.98)])
    assert not stability.stable([w(10, 1.0), w(10, 1.2), w(10, 1.0)])  # latency still moving


# -- cost -----------------------------------------------------------------------------------------------

def test_seed_formula_reproduces_the_seed_cost_column():
    """The seed priced A10 rows at $1.624/h with the configured rate and assumed token counts."""
    with SEED_CSV.open() as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#")) if r["gpu"] == "a10"]
    assert len(rows) == 11
    for r in rows:
        got = cost.seed_cost_per_1k(1.624, float(r["target_rps"]), float(r["input_tokens"]), float(r["output_tokens"]))
        assert got == pytest.approx(float(r["cost_usd_per_1k_tokens"]), rel=1e-6), r


def test_cost_uses_measured_numbers_and_prices_the_api_job():
    prices = cost.parse_prices(json.loads(shipped("tritonkit/data/api_prices.json").read_text()))
    assert {"seed", "current"} <= {p.set for p in prices}
    c = cost.cost(1.624, "test", rps=9.5, in_tokens=100, out_tokens=6, api_prices=prices, at="10 req/s")
    assert c.per_1k_tokens == pytest.approx(1.624 / (9.5 * 3600 * 106) * 1000)
    assert c.per_1m_requests == pytest.approx(1.624 / (9.5 * 3600) * 1e6)
    gpt35 = next(a for a in c.api if a["name"] == "gpt-3.5-turbo-0125")
    assert gpt35["per_1m_requests"] == pytest.approx(100 * 0.5 + 6 * 1.5)  # 1M x (100 x $0.5 + 6 x $1.5) / 1M


# -- workload -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from tritonkit.tinymodel import train_tokenizer

    return train_tokenizer()


@pytest.mark.parametrize("n_tokens", [1, 7, 100, 256])
def test_corpus_prompts_have_exact_token_counts_and_differ(tokenizer, n_tokens):
    prompts = corpus_prompts(tokenizer, 200, n_tokens, seed=2)
    assert all(len(tokenizer(p)["input_ids"]) == n == n_tokens for p, n in prompts)
    if n_tokens >= 100:  # short slices of a repetitive corpus may repeat
        assert len({p for p, _ in prompts}) == 200
        assert len({tokenizer(p)["input_ids"][0] for p, _ in prompts}) > 20  # they differ from the first token


def test_output_lengths():
    rng = random.Random(0)
    assert parse_output_length("6").sample(rng) == 6
    u = [parse_output_length("uniform:4:8").sample(rng) for _ in range(500)]
    assert min(u) == 4 and max(u) == 8
    assert min(parse_output_length("normal:5:10").sample(rng) for _ in range(500)) >= 1
    for bad in ("0", "uniform:8:4", "gauss:1:2", "-3"):
        with pytest.raises(UsageError, match="output (tokens|length)"):
            parse_output_length(bad)


def test_prompt_files(tmp_path, tokenizer):
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "hello there", "max_tokens": 3}\n\n{"prompt": "general kenobi"}\n')
    prompts, mt = load_prompt_file(j, tokenizer)
    assert [p for p, _ in prompts] == ["hello there", "general kenobi"] and mt == [3, None]
    wl = Workload(prompts, parse_output_length("5"), mt, {"ignore_eos": True})
    assert wl.request(0)[2] == {"ignore_eos": True, "max_tokens": 3}
    assert wl.request(1)[2]["max_tokens"] == 5
    c = tmp_path / "p.csv"
    c.write_text("prompt,max_tokens\nfirst one,2\nsecond,\n")
    assert load_prompt_file(c)[1] == [2, None]
    for text in ("", "\n\n", '{"other": 1}\n'):
        (tmp_path / "e.jsonl").write_text(text)
        with pytest.raises(UsageError, match="holds no prompts"):
            load_prompt_file(tmp_path / "e.jsonl")
    with pytest.raises(UsageError, match="missing.jsonl not found"):
        load_prompt_file(tmp_path / "missing.jsonl")


# -- server metrics and reports ---------------------------------------------------------------------------------

def test_server_metrics_diff():
    before = server_metrics.parse('vllm:e2e_request_latency_seconds_sum{m="a"} 1\nvllm:e2e_request_latency_seconds_count{m="a"} 2\n'
                                  'nv_inference_count{m="a"} 5\nnv_inference_pending_request_count{m="a"} 0\nunrelated 1\n')
    after = server_metrics.parse('vllm:e2e_request_latency_seconds_sum{m="a"} 4\nvllm:e2e_request_latency_seconds_count{m="a"} 8\n'
                                 'vllm:e2e_request_latency_seconds_bucket{m="a",le="1"} 8\n'
                                 'nv_inference_count{m="a"} 11\nnv_inference_pending_request_count{m="a"} 2\n')
    d = server_metrics.diff(before, after)
    assert d["delta"]['nv_inference_count{m="a"}'] == 6
    assert d["delta"]['nv_inference_pending_request_count{m="a"}'] == 2  # a gauge: its value after
    assert d["histogram_means"]['vllm:e2e_request_latency_seconds{m="a"}'] == pytest.approx(0.5)
    assert server_metrics.diff(None, after) == {}


def test_family_total_sums_label_sets_of_that_family_only():
    m = server_metrics.parse('vllm:e2e_request_latency_seconds_count{m="a"} 2\nvllm:e2e_request_latency_seconds_count{m="b"} 3\n'
                             'vllm:e2e_request_latency_seconds_count_extra 7\nvllm:e2e_request_latency_seconds_sum{m="a"} 1\n')
    assert server_metrics.family_total(m, "vllm:e2e_request_latency_seconds_count") == 5
    assert server_metrics.family_total(m, "nope") == 0


def test_scrape_settled_waits_for_late_counters(monkeypatch):
    # The server counts the last request's tokens a moment after its final response.
    pages = iter(['vllm:generation_tokens_total{model="m"} %d\nnv_inference_pending_request_count{model="m"} %d\n'
                  % (n, n) for n in (500, 503, 504, 504, 504)])
    seen = []
    monkeypatch.setattr(server_metrics, "scrape", lambda url, model=None: seen.append(url) or server_metrics.parse(next(pages)))
    settled = server_metrics.scrape_settled("http://metrics", pause_s=0.0)
    assert settled['vllm:generation_tokens_total{model="m"}'] == 504 and len(seen) == 4
    assert server_metrics.scrape_settled(None) is None

def test_reports_are_written(tmp_path):
    bounds = slo.parse("e2e:p90<=1s")
    steps = []
    for n, rate in enumerate((5, 10)):
        agg = Aggregator(bounds)
        for i in range(20):
            agg.add(_record(intended=i / rate, sent=i / rate, first=i / rate + 0.05, index=i))
        steps.append(agg.result(f"{rate} req/s", "rate", rate, 0.0, 20 / rate))
    result = RunResult(steps, "ok", t0=0.0, started_at=1.7e9)
    prices = [cost.ApiPrice("api", 1.0, 2.0, "current", "test", "2026")]
    doc = summary.build(result, {"model": "m", "protocol": "grpc"}, bounds, {"price_per_hour": 2.0, "source": "t"}, prices)
    assert doc["best_step"] == "10 req/s" and doc["cost"]["per_1m_requests"] > 0
    files = report.write(tmp_path, doc, result, bounds)
    for name in ("json", "csv", "requests_csv", "md", "html", "png_latency", "png_ttft"):
        assert files[name].stat().st_size > 0, name
    assert files["png_latency"].read_bytes()[:4] == b"\x89PNG"
    html = files["html"].read_text()
    assert html.count("data:image/png;base64,") == 2 and "<img" in html and "src='report" not in html
    data = json.loads(files["json"].read_text())
    assert len(data["steps"][0]["samples"]) == 20
    assert "nearest-rank" in data["percentile_method"]


def test_client_verdict_names_its_cause():
    from types import SimpleNamespace as NS

    from tritonkit.perf import verdict
    from tritonkit.perf.schedules import Load

    def step(lag_p99, rps=100.0, e2e=0.5, metrics=None, sent=1000, send_rate=100.0):
        return NS(start=0.0, end=10.0, sent=sent, ok=sent, rps=rps, send_rate=send_rate, server_metrics=metrics or {},
                  summaries={"send_lag": NS(p99=lag_p99), "e2e": NS(mean=e2e)}, client_limited=False, client_note="")

    def use(cpu, wait, machine):
        return verdict.ClientUsage(1, cpu, wait, cpu, wait, machine, 2)

    s = step(0.0005)
    verdict.judge(s, Load("rate", 100), use(1.0, 0.0, 0.3))
    assert not s.client_limited and s.client_note.startswith("schedule kept")
    s = step(0.050)
    verdict.judge(s, Load("rate", 100), use(9.5, 0.0, 0.6))
    assert s.client_limited and "the generator's own CPU" in s.client_note and "95%" in s.client_note
    s = step(0.050)
    verdict.judge(s, Load("rate", 100), use(2.0, 3.0, 0.99))
    assert "CPU starvation: the machine is saturated (99% of 2 cores" in s.client_note
    s = step(0.050)
    verdict.judge(s, Load("rate", 100), use(1.0, 0.1, 0.4))
    assert "event-loop stall" in s.client_note and "p99 send lag 50.0 ms" in s.client_note
    # Closed loop: Little's law on vLLM's own latency (256 users configured, ~126 inside). vLLM's latency
    # leaves out its own server's front end (HTTP handling, SSE writes), so with the client on
    # schedule it is reported, not judged (an H100 step was wrongly flagged by it, 2026-11-27).
    vllm = {"histogram_means": {'vllm:e2e_request_latency_seconds{model_name="m"}': 0.38}}
    s = step(0.001, rps=331.0, e2e=0.78, metrics=vllm)
    verdict.judge(s, Load("concurrency", 256), use(0.5, 0.0, 0.5))
    assert not s.client_limited and s.client_note.startswith("schedule kept"), s.client_note
    assert "126 of 256 users inside vLLM" in s.client_note and "the server's front end or the client" in s.client_note
    s = step(0.050, rps=331.0, e2e=0.78, metrics=vllm)  # a client that is late too: flagged by its lateness
    verdict.judge(s, Load("concurrency", 256), use(9.5, 0.1, 0.5))
    assert s.client_limited and "the generator's own CPU" in s.client_note and "126 of 256" in s.client_note
    s = step(0.001, rps=331.0, e2e=0.78, metrics={"histogram_means": {}})
    verdict.judge(s, Load("concurrency", 256), use(5.5, 0.1, 0.5))
    assert not s.client_limited  # no server latency to judge by: no verdict from Little's law
    # Behind Triton, vLLM's latency leaves out Triton's path: reported, not judged.
    triton = {**vllm, "delta": {'nv_inference_request_success{model="m"}': 4965.0}}
    s = step(0.001, rps=331.0, e2e=0.78, metrics=triton)
    verdict.judge(s, Load("concurrency", 256), use(5.5, 0.1, 0.5))
    assert not s.client_limited and "126 of 256 users inside vLLM" in s.client_note, s.client_note
    assert "Triton's path or the client" in s.client_note


def test_verdict_judges_repeated_lateness_not_one_hiccup():
    from types import SimpleNamespace as NS

    from tritonkit.perf import verdict
    from tritonkit.perf.loopwatch import LoopLag
    from tritonkit.perf.records import RequestRecord
    from tritonkit.perf.schedules import Load
    from tritonkit.perf.stats import EXACT

    def step(late_lags, n=60):
        recs = [RequestRecord(i, intended=float(i), sent=float(i) + 0.0002) for i in range(n)]
        for r, lag in zip(recs, late_lags):
            r.sent = r.intended + lag
        return NS(start=0.0, end=3.0, sent=n, ok=n, rps=20.0, send_rate=20.0, server_metrics={}, samples=recs,
                  percentile_method=EXACT, summaries={"send_lag": NS(p99=max(late_lags, default=0.0002)),
                                                      "e2e": NS(mean=0.1)},
                  client_limited=False, client_note="")

    def use(loop=None):
        return verdict.ClientUsage(1, 0.3, 0.0, 0.3, 0.0, 0.4, 2, loop=loop)

    s = step([0.013])  # one request 13 ms late in 60: a hiccup on a shared machine
    verdict.judge(s, Load("rate", 20), use())
    assert not s.client_limited and "1 request(s) sent over 5 ms late" in s.client_note, s.client_note
    s = step([0.013, 0.02, 0.03])
    verdict.judge(s, Load("rate", 20), use())
    assert s.client_limited and "(3 sent late)" in s.client_note, s.client_note
    # The event loop itself woke late, often: an event-loop stall, named with its numbers.
    s = step([])
    verdict.judge(s, Load("concurrency", 4), use(LoopLag(wakes=300, late=40, max_s=0.03, stalled_s=0.9)))
    assert s.client_limited and "event loop woke over 5 ms late 40 of 300 times (worst 30.0 ms" in s.client_note
    assert "Cause: an event-loop stall" in s.client_note, s.client_note
    s = step([])
    verdict.judge(s, Load("concurrency", 4), use(LoopLag(wakes=300, late=2, max_s=0.03, stalled_s=0.05)))
    assert not s.client_limited, s.client_note
    s = step([])  # late now and then, away 0.3 % of the step: reported, not judged
    verdict.judge(s, Load("concurrency", 4), use(LoopLag(wakes=283, late=3, max_s=0.0097, stalled_s=0.0087)))
    assert not s.client_limited and "late 3 of 283 times" in s.client_note and "not judged" in s.client_note
    s = step([0.013, 0.02, 0.03])  # judged by send lag; the cause names the loop's numbers, once
    verdict.judge(s, Load("concurrency", 4), use(LoopLag(wakes=283, late=3, max_s=0.0097, stalled_s=0.0087)))
    assert s.client_limited and s.client_note.count("late 3 of 283 times") == 1, s.client_note


def test_loop_watch_sees_a_blocked_loop():
    import asyncio
    import time

    from tritonkit.perf.loopwatch import LoopWatch

    async def go(block_s):
        watch = LoopWatch()
        for _ in range(5):
            await asyncio.sleep(0.02)
            time.sleep(block_s)  # a blocking call inside the loop
        return watch.stop()

    quiet, blocked = asyncio.run(go(0.0)), asyncio.run(go(0.03))
    assert quiet.wakes >= 5 and blocked.late >= 4 and blocked.max_s >= 0.02, (quiet, blocked)
    assert blocked.stalled_s > 0.05 and quiet.stalled_s < blocked.stalled_s


def test_grpc_request_bytes_are_built_once_per_prompt_and_carry_each_id():
    from tritonclient.grpc import service_pb2

    from tritonkit.client.grpc_streams import _id_field
    from tritonkit.client.triton_grpc import TritonGrpcClient

    client = TritonGrpcClient("127.0.0.1:1", "m")
    body = client._build("hello", {"max_tokens": 3}, "adapter")
    for rid in ("7", "x" * 300):  # a one-byte and a two-byte length prefix
        req = service_pb2.ModelInferRequest.FromString(body + _id_field(rid))
        assert req.id == rid and req.model_name == "m"
        assert req.raw_input_contents[0][4:] == b"hello"
        assert json.loads(req.raw_input_contents[1][4:]) == {"max_tokens": 3, "lora_name": "adapter"}
        assert req.parameters["triton_enable_empty_final_response"].bool_param
