"""`tritonkit compare`: delivery methods side by side on one build.

Unit tests (no server): the table, ratios to the baseline, the seed rows, resume and re-report,
capacity arithmetic and the Ray Serve config of a plan. The engine-argument pinning and the slow
test that serves each method in turn are in test_compare_serving.py.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from tritonkit import buildrecord
from tritonkit.compare import capacity, methods, pinning, results, seed, table
from tritonkit.compare import run as run_mod
from tritonkit.errors import UsageError

TRITONKIT = [sys.executable, "-m", "tritonkit"]


def step(kind: str, value: float, rps: float, p90: float, failed: int = 0, client_limited: bool = False,
         ttft: float = 0.02) -> dict:
    lat = {"e2e": {"p50": p90 * 0.9, "p90": p90, "p99": p90 * 1.2}, "ttft": {"p50": ttft, "p90": ttft * 2},
           "itl": {}, "tpot": {}}
    return {"kind": kind, "label": f"{value:g} {'req/s' if kind == 'rate' else 'users'}", "value": value,
            "ok": 100, "failed": failed, "requests_per_s": rps, "output_tokens_per_s": rps * 6,
            "mean_input_tokens": 100.0, "mean_output_tokens": 6.0, "latency_s": lat,
            "client_limited": client_limited}


def method_run(method: str, n: int, rate_steps: list[dict], conc_steps: list[dict] = (), status="ok",
               ready_s=30.0) -> results.MethodRun:
    sweeps = {"rate": {"status": "ok", "steps": rate_steps}}
    if conc_steps:
        sweeps["concurrency"] = {"status": "ok", "steps": list(conc_steps)}
    return results.MethodRun(method, n, status, ready_s=ready_s, sweeps=sweeps)


def make_setup(**over) -> results.Setup:
    base = dict(model="llama2-7b", repository="/nowhere", methods=["triton-local", "vllm"], baseline="triton-local",
                repeat=1, preset="classification", rates="10,20,40,80", concurrency=None, slo="e2e:p90<=1s",
                window_s=3, max_step_s=12, warmup_s=2, duration_s=None, price_per_hour=1.624,
                price_source="GPU profile a10", gpu_profile="a10", random_weights=True,
                engine_args={"model": "/m", "max_num_seqs": 256},
                pinning={"pinned": {"model": "/m", "max_num_seqs": 256, "max_num_batched_tokens": 2048},
                         "pins": {"max_num_batched_tokens": {"triton": 2048, "openai": 8192, "ray": 8192}},
                         "residual": {}})
    base.update(over)
    return results.Setup(**base)


TRITON = [step("rate", 10, 10.0, 0.05), step("rate", 20, 20.0, 0.06), step("rate", 40, 40.0, 0.08),
          step("rate", 80, 78.0, 1.5)]
VLLM = [step("rate", 10, 10.0, 0.04), step("rate", 20, 20.0, 0.05), step("rate", 40, 39.0, 0.9, client_limited=True),
        step("rate", 80, 60.0, 2.0)]


# ---------------------------------------------------------------- methods

def test_methods_parse_in_order_with_alias():
    assert [m.name for m in methods.parse("vllm, triton ,ray")] == ["vllm", "triton-local", "ray"]
    with pytest.raises(UsageError, match="unknown delivery method 'tgi'"):
        methods.parse("vllm,tgi")
    with pytest.raises(UsageError, match="named twice"):
        methods.parse("vllm,vllm")
    with pytest.raises(UsageError, match="not among the methods"):
        methods.baseline("ray", methods.parse("vllm"))
    assert methods.baseline(None, methods.parse("vllm,triton-local")).name == "vllm"
    m = methods.METHODS["triton-docker"]
    assert m.url("h", 1, 2) == "h:2" and methods.METHODS["vllm"].url("h", 1, 2) == "http://h:1"


# ---------------------------------------------------------------- table

def test_headline_takes_the_highest_step_meeting_the_slo():
    h = table.headline(method_run("triton-local", 1, TRITON), table.bounds_of("e2e:p90<=1s"), 1.624)
    assert h.max_rps == 40.0 and h.best_step == "rate 40 req/s" and not h.lower_bound
    assert h.p90_e2e_at_rate == {10.0: 0.05, 20.0: 0.06, 40.0: 0.08}
    assert h.cost_per_1k_at_best == pytest.approx(1.624 / (40.0 * 3600 * 106) * 1000)
    # A failed request disqualifies a step; a stricter SLO moves the maximum down.
    failing = [*TRITON[:2], {**TRITON[2], "failed": 1}]
    assert table.headline(method_run("t", 1, failing), table.bounds_of(None), None).max_rps == 20.0
    assert table.headline(method_run("t", 1, TRITON), table.bounds_of("e2e:p90<=55ms"), None).max_rps == 10.0


def test_table_ratios_seed_rows_and_client_limited_steps():
    setup = make_setup()
    runs = {"triton-local": [method_run("triton-local", 1, TRITON)], "vllm": [method_run("vllm", 1, VLLM)]}
    sums = [table.summarize(m, runs[m], setup) for m in setup.methods]
    text = table.report(setup, sums)
    lines = text.splitlines()
    assert lines[0].split("|")[1:-1][-1].strip() == "vllm / triton-local"
    row = next(line for line in lines if line.startswith("| max req/s at e2e p90 <= 1 s"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1:] == ["40.0", "39.0", "0.97"]
    p90 = [c.strip() for c in next(line for line in lines if line.startswith("| p90 e2e at 10 req/s")).split("|")[1:-1]]
    assert p90[1:] == ["0.050", "0.040", "0.80"]
    # The seed published llama_7b on an A10G at 10 req/s for both servers: its row stands beneath.
    published = lines[lines.index(next(line for line in lines if line.startswith("| p90 e2e at 10 req/s"))) + 1]
    assert "seed, published" in published and "0.742" in published and "0.997" in published
    assert "| client-limited steps" in text and "vllm: client-limited" in text and "run 1: rate 40 req/s" in text
    assert "pinned, as vLLM defaults them by entry point: max_num_batched_tokens" in text
    assert "seed rows: llama_7b on A10G" in text
    assert "NOT given the pinned" not in text


def test_a_method_started_without_the_pins_is_named():
    setup = make_setup(methods=["triton-local", "vllm", "ray"])
    runs = {"triton-local": [method_run("triton-local", 1, TRITON)],  # model.json: Triton resolves the pins itself
            "vllm": [method_run("vllm", 1, VLLM)], "ray": [method_run("ray", 1, VLLM)]}
    runs["triton-local"][0].engine_args = {"model": "/m", "max_num_seqs": 256}
    runs["vllm"][0].engine_args = setup.pinning["pinned"]
    runs["ray"][0].engine_args = {"max_num_seqs": 256}  # what a runtime reading model.json deploys
    assert table.unpinned(setup, runs) == {"ray": ["max_num_batched_tokens"]}
    sums = [table.summarize(m, runs[m], setup) for m in setup.methods]
    assert "ray: its engine was NOT given the pinned max_num_batched_tokens" in table.report(setup, sums, runs)


def test_what_ray_sets_itself_is_reported_not_pinned():
    """On a GPU Ray Serve LLM runs the engine's worker in a Ray actor whatever it is given: said, once."""
    path = "parallel_config.distributed_executor_backend"
    pin = {**make_setup().pinning, "by_design": {path: {"triton": "uni", "openai": "uni", "ray": "ray"}}}
    runs = {m: [method_run(m, 1, TRITON)] for m in ("triton-local", "vllm", "ray")}
    setup = make_setup(methods=["triton-local", "vllm", "ray"], pinning=pin)
    report = table.report(setup, [table.summarize(m, runs[m], setup) for m in setup.methods], runs)
    assert "ray: Ray Serve LLM sets distributed_executor_backend=ray itself" in report and "triton uni" in report
    without_ray = make_setup(pinning=pin)
    assert "Ray Serve LLM sets" not in table.report(without_ray, [table.summarize("vllm", runs["vllm"], without_ray)])
    lines = pinning.Pinning.from_json({"engine_args": {}, "pinned": {}, "by_design": pin["by_design"]}).describe()
    assert any(line.startswith(f"  by design, not pinnable: {path}: triton 'uni'") for line in lines)
    assert pinning.Pinning.from_json({"engine_args": {}, "pinned": {}}).by_design == {}  # an older cache entry


def test_lower_bounds_give_no_max_ratio_and_other_gpus_no_seed_rows():
    setup = make_setup(gpu_profile="h100")
    never_missed = [method_run("triton-local", 1, TRITON[:3]), method_run("vllm", 1, VLLM[:2])]
    sums = [table.summarize(r.method, [r], setup) for r in never_missed]
    text = table.report(setup, sums)
    row = next(line for line in text.splitlines() if line.startswith("| max req/s"))
    assert ">= 40.0" in row and ">= 20.0" in row and "n/a (lower bound)" in row
    assert "seed, published" not in text and "no numbers on GPU profile h100" in text


def test_repeated_runs_are_averaged_and_their_spread_checked():
    setup = make_setup(repeat=2)
    slower = [replace_rps(s, 0.8) for s in TRITON]
    s = table.summarize("triton-local", [method_run("triton-local", 1, TRITON),
                                         method_run("triton-local", 2, slower)], setup)
    assert s.mean.max_rps == pytest.approx(36.0) and s.spread == pytest.approx(8 / 36) and s.agree is False
    assert "more than 10%" in "\n".join(table.notes(setup, [s]))
    close = table.summarize("vllm", [method_run("vllm", 1, VLLM), method_run("vllm", 2, VLLM),
                                     method_run("vllm", 3, [], status="failed")], setup)
    assert close.spread == 0 and close.agree is True and close.failed_runs == ["run 3: failed: "]


def replace_rps(s: dict, factor: float) -> dict:
    return {**s, "requests_per_s": s["requests_per_s"] * factor}


def test_seed_rows_match_model_and_gpu():
    assert {r.server for r in seed.rows_for("llama2-7b", "a10")} == {"tgi", "vllm", "triton_vllm"}
    assert [r.p90_s for r in seed.rows_for("llama2-7b", "a100-40gb") if r.server == "vllm"] == [0.283]
    assert seed.rows_for("llama2-7b", "h100") == [] and seed.rows_for("tiny-llama", "a10") == []


# ---------------------------------------------------------------- capacity

def test_replicas_and_monthly_cost(tmp_path):
    assert capacity.replicas_for(2000, 400) == 5
    assert capacity.replicas_for(2000, 399) == 6
    assert capacity.replicas_for(2000, 400, headroom=0.2) == 7  # 2000 / 320 = 6.25
    assert capacity.replicas_for(10, 400) == 1
    with pytest.raises(UsageError, match="--headroom"):
        capacity.replicas_for(10, 1, headroom=1.0)
    with pytest.raises(UsageError, match="--target-rps must be positive"):
        capacity.plan([tmp_path], 0, None)
    setup = make_setup(repeat=2)
    results.save_setup(tmp_path, setup)
    for r in (method_run("triton-local", 1, TRITON), method_run("triton-local", 2, [replace_rps(s, 0.9) for s in TRITON]),
              method_run("vllm", 1, VLLM[:2])):
        results.save_run(tmp_path, r)
    rows = capacity.plan([tmp_path], 2000, None)
    t, v = rows
    assert t.replica_rps == pytest.approx(36.0) and t.replicas == 56 and not t.lower_bound  # the slower run counts
    assert t.monthly_usd == pytest.approx(56 * 1.624 * 730)
    assert v.lower_bound and v.replicas == 100  # at most: the sweep never reached vLLM's limit
    text = capacity.render(rows, 2000, "e2e:p90<=1s", 0.0)
    assert "<= 100" in text and ">= 20.0" in text and f"{56 * 1.624 * 730:,.0f}" in text
    # A stricter SLO is recomputed from the stored step percentiles.
    assert capacity.plan([tmp_path], 2000, "e2e:p90<=55ms")[0].replica_rps == pytest.approx(9.0)


@pytest.fixture
def ray_config():
    return pytest.importorskip("tritonkit.runtime.ray_config", reason="the Ray runtime (branch ray) has not landed")


def test_capacity_writes_a_ray_serve_config(ray_config, tmp_path, tiny_model):
    repo = tmp_path / "repo"
    subprocess.run([*TRITONKIT, "build", str(tiny_model), "--gpu", "cpu", "--name", "tiny", "-o", str(repo)],
                   check=True, capture_output=True, timeout=300)
    out = tmp_path / "out"
    results.save_setup(out, make_setup(model="tiny", repository=str(repo), methods=["vllm"], gpu_profile="cpu",
                                       pinning={"pinned": {**buildrecord.engine_args(repo / "tiny"),
                                                           "max_num_batched_tokens": 2048}}))
    results.save_run(out, method_run("vllm", 1, TRITON))
    rows = capacity.plan([out], 100, None)
    files, notes = capacity.write_serve_configs(rows, out)
    assert notes == [] and [f.name for f in files] == ["serve-config-cpu.yaml"]
    import yaml

    config = yaml.safe_load(files[0].read_text())
    llm = config["applications"][0]["args"]["llm_configs"][0]
    assert llm["deployment_config"]["num_replicas"] == 3  # 100 / 40
    assert llm["engine_kwargs"]["max_num_batched_tokens"] == 2048  # the pinned arguments
    assert ray_config.IMPORT_PATH == config["applications"][0]["import_path"]


# ---------------------------------------------------------------- results, resume, re-report

@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """A repository with one build.json (nothing servable), and no vLLM: pinning is stubbed."""
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    buildrecord.save(repo / "m", buildrecord.BuildRecord(
        model_name="m", model=buildrecord.ModelInfo(name="llama2-7b", source="/m"),
        gpu=buildrecord.GpuInfo(profile="a10", price_per_hour=1.624, instance="g5"), engine_args={"model": "/m"}))
    monkeypatch.setattr(pinning, "resolve", lambda args, env=None: pinning.Pinning(args, {**args, "x": 1}))
    started = []

    def fake_measure(method, n, setup, build, opts, out, say):
        started.append((method.name, n))
        run = method_run(method.name, n, TRITON if method.name == "triton-local" else VLLM)
        results.save_run(out, run)
        return run

    monkeypatch.setattr(run_mod, "measure", fake_measure)
    return repo, started


def test_resume_runs_only_what_is_missing_and_report_only_starts_nothing(fake_build, tmp_path):
    repo, started = fake_build
    out = tmp_path / "out"
    opts = run_mod.CompareOptions(repository=str(repo), methods="triton-local,vllm", rates="10,20,40,80", out=str(out),
                                  repeat=2)
    outcome = run_mod.run(opts, say=lambda m: None)
    assert started == [("triton-local", 1), ("vllm", 1), ("triton-local", 2), ("vllm", 2)]
    assert (out / "compare.md").is_file() and (out / "compare.png").stat().st_size > 0
    assert outcome.setup.pinning["pinned"] == {"model": "/m", "x": 1} and outcome.setup.gpu_profile == "a10"
    with pytest.raises(UsageError, match="already holds a comparison"):
        run_mod.run(opts, say=lambda m: None)
    # A failed run is redone on --resume; completed ones are kept.
    results.save_run(out, method_run("vllm", 2, [], status="failed"))
    started.clear()
    run_mod.run(replace(opts, resume=True), say=lambda m: None)
    assert started == [("vllm", 2)]
    with pytest.raises(UsageError, match="has rates='10,20,40,80'"):
        run_mod.run(replace(opts, resume=True, rates="1,2"), say=lambda m: None)
    started.clear()
    again = run_mod.run(replace(opts, report_only=True), say=lambda m: None)
    assert started == [] and again.report == outcome.report
    with pytest.raises(UsageError, match="holds no comparison"):
        run_mod.run(replace(opts, report_only=True, out=str(tmp_path / "empty")), say=lambda m: None)


def test_time_budget_starts_only_runs_that_fit_and_resume_does_the_rest(fake_build, tmp_path, monkeypatch):
    """A bounded call (the GPU machine's 540 s) ends between method runs, never half-way through one."""
    repo, started = fake_build
    now = [0.0]
    monkeypatch.setattr(run_mod, "_clock", lambda: now[0])
    fake = run_mod.measure

    def measure_100s(method, n, setup, build, opts, out, say):
        now[0] += 100.0
        run = fake(method, n, setup, build, opts, out, say)
        run.elapsed_s = 100.0
        results.save_run(out, run)
        return run

    monkeypatch.setattr(run_mod, "measure", measure_100s)
    said = []
    opts = run_mod.CompareOptions(repository=str(repo), methods="triton-local,vllm", rates="10", out=str(tmp_path / "o"),
                                  repeat=2, time_budget_s=330)
    run_mod.run(opts, say=said.append)
    # 0 s: first run (nothing known); 100 s: 230 left >= 120; 200 s: 130 left >= 120; 300 s: 30 left
    assert started == [("triton-local", 1), ("vllm", 1), ("triton-local", 2)]
    assert any("vllm run 2 and what follows are left for --resume" in m for m in said)
    assert (tmp_path / "o" / "compare.md").is_file()
    started.clear()
    run_mod.run(replace(opts, resume=True, time_budget_s=110), say=said.append)  # earlier runs took 100 s: 110 < 120
    assert started == []
    run_mod.run(replace(opts, resume=True, time_budget_s=120), say=said.append)
    assert started == [("vllm", 2)]


def test_bad_options_fail_before_anything_starts(fake_build, tmp_path):
    repo, started = fake_build
    opts = run_mod.CompareOptions(repository=str(repo), out=str(tmp_path / "o"))
    with pytest.raises(UsageError, match="--baseline 'ray'"):
        run_mod.run(replace(opts, baseline="ray"), say=lambda m: None)
    with pytest.raises(UsageError, match="cannot read SLO"):
        run_mod.run(replace(opts, slo="p90 < 1"), say=lambda m: None)
    with pytest.raises(UsageError, match="--repeat"):
        run_mod.run(replace(opts, repeat=0), say=lambda m: None)
    assert started == []
