"""An hour at a steady rate on the tiny model: does memory stay flat, is every request accounted
for, and does serving survive an engine kill? (A benchmark, not a CI test.)

It builds the tiny model, starts a local server, runs `tritonkit perf --soak` against it in a
subprocess, and every --sample-every seconds records the resident memory (RSS) of the client
(perf) and of the server's processes by role: Triton, the Python backend stub, tritonkit's engine
process, and vLLM's EngineCore/Worker. Halfway through it kills the engine with SIGKILL. At the
end it prints the memory curve, requests sent/ok/errors (by kind) and the not-ready intervals, and
checks: memory flat within 10 % after warm-up (before the kill, and after a fresh warm-up after
it), 0 requests lost (every request perf sent is in its results file, ok or as a counted error),
every error explained by the kill (in flight then, or refused while the model reloaded), every
request in flight at the kill failed, and the model was reported not ready, then ready again with
every later request ok.

    PYTHONPATH=. .venv/bin/python perf/soak.py [--duration 3600] [--rate 2] [--sample-every 60]
        [--warmup 600] [--kill-engine-at 0.5] [--out perf-results/soak]

Everything is written as it happens (memory.jsonl here, requests.jsonl by perf), so a killed soak
leaves valid partial results, and `--judge --out DIR` judges such files again without a run; the
verdict goes to soak.json. Exit 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tritonkit.perf import journal  # noqa: E402
from tritonkit.runtime.local import group_members  # noqa: E402
from tritonkit.runtime.spec import free_port  # noqa: E402

ROLES = ("client", "triton", "stub", "engine", "vllm")
FLAT = 0.10
PAGE = os.sysconf("SC_PAGE_SIZE")


def role_of(cmdline: str) -> str | None:
    if "tritonserver" in cmdline.split(" ", 1)[0]:
        return "triton"
    if "triton_python_backend_stub" in cmdline:
        return "stub"
    if "tritonkit.backend.engine" in cmdline:
        return "engine"
    if cmdline.startswith("VLLM::") or "multiprocessing.resource_tracker" in cmdline:
        return "vllm"
    return None


def _read(pid: int) -> tuple[str, int] | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return cmd, rss_pages * PAGE


def server_pids(server_pgid: int) -> set[int]:
    """The server's process group (orphans stay in it) and every descendant of the server, also
    those in groups of their own (a supervised engine gets its own group, to be killed whole)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(d))
    found, todo, seen = set(group_members(server_pgid)), [server_pgid], set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            found.update(parents.get(pid, []))
            todo.extend(parents.get(pid, []))
    return found


def sample_rss(client_pid: int | None, server_pgid: int) -> dict[str, float]:
    """MiB by role (0 where no process of that role runs)."""
    mib = {r: 0.0 for r in ROLES}
    if client_pid is not None and (got := _read(client_pid)):
        mib["client"] = got[1] / 2**20
    for pid in server_pids(server_pgid):
        got = _read(pid)
        role = role_of(got[0]) if got else None
        if role:
            mib[role] += got[1] / 2**20
    return {k: round(v, 1) for k, v in mib.items()}


def engine_pids(server_pgid: int) -> list[int]:
    return [p for p in server_pids(server_pgid) if (got := _read(p)) and role_of(got[0]) == "engine"]


def flatness(samples: list[dict], warmup_s: float, kill_t: float | None) -> dict[str, dict]:
    """Per role: min/max MiB after warm-up and the spread (max/min - 1), the worst of two segments
    when the engine was killed: before the kill, and after a fresh warm-up following it (the
    engine's processes are new, or gone, after a kill)."""
    segments = [(warmup_s, float("inf"))] if kill_t is None else [(warmup_s, kill_t), (kill_t + warmup_s, float("inf"))]
    out = {}
    for role in (*ROLES, "server"):
        worst = None
        for lo_t, hi_t in segments:
            values = [s["server"] if role == "server" else s["mib"][role] for s in samples if lo_t <= s["t"] < hi_t]
            values = [v for v in values if v > 0]
            if not values:
                continue
            lo, hi = min(values), max(values)
            seg = {"samples": len(values), "min": lo, "max": hi, "spread": round(hi / lo - 1, 4)}
            if worst is None or seg["spread"] > worst["spread"]:
                worst = seg
        out[role] = ({**worst, "flat": worst["spread"] <= FLAT} if worst else
                     {"samples": 0, "min": None, "max": None, "spread": None, "flat": None})
    return out


def not_ready_spans(events: list[dict], end_s: float | None) -> list[dict]:
    """The not-ready intervals from the journal's readiness changes (kill-proof: no end line needed);
    seconds from perf's start, an interval still open at the last event is marked ongoing."""
    changes = [e for e in events if e["type"] == "readiness"]
    spans: list[dict] = []
    for c in changes:
        if not c["ready"] and (not spans or spans[-1]["end_s"] is not None):
            spans.append({"start_s": c["t"], "end_s": None, "detail": c["detail"]})
        elif not c["ready"]:
            spans[-1]["detail"] += f"; then {c['detail']}"
        elif spans and spans[-1]["end_s"] is None:
            spans[-1]["end_s"] = c["t"]
    for s in spans:
        s["ongoing"] = s["end_s"] is None
        if s["ongoing"]:
            s["end_s"] = end_s if end_s is not None else s["start_s"]
        s["duration_s"] = round(s["end_s"] - s["start_s"], 3)
    return spans


def account(events: list[dict], kill_offset_s: float | None, margin_s: float = 1.0) -> dict:
    """Requests in perf's results file: ok, errors by kind, lost = sent - recorded; and what the
    errors were, around an engine kill at kill_offset_s (seconds from perf's start):
    - in flight at the kill: sent before it, not finished then -- these must all fail, and no more;
    - refused during the outage: sent after the kill, until the model is ready again (the first
      not-ready interval after the kill, `margin_s` of probe slack either side) -- the model is
      unloaded and reloading, Triton refuses them at once; they are counted, not hidden;
    - unexplained: every other error. 0 means every error came from the kill."""
    requests = [e for e in events if e["type"] == "request"]
    end = next((e for e in events if e["type"] == "end"), None)
    last_s = max((r["done_s"] or r["sent_s"] or 0 for r in requests), default=None)
    spans = not_ready_spans(events, last_s)
    errors: dict[str, int] = {}
    for r in requests:
        if r["error_kind"]:
            errors[r["error_kind"]] = errors.get(r["error_kind"], 0) + 1
    in_flight = failed_in_flight = refused = unexplained = None
    outage = None
    if kill_offset_s is not None:
        outage = next((s for s in spans if s["end_s"] >= kill_offset_s), None)
        healed_s = (outage["end_s"] + margin_s) if outage and not outage["ongoing"] else float("inf")
        if outage and outage["start_s"] > kill_offset_s + 30:
            outage, healed_s = None, kill_offset_s  # not-ready long after the kill: not its outage
        flying = [r for r in requests if r["sent_s"] is not None and r["sent_s"] <= kill_offset_s
                  and (r["done_s"] is None or r["done_s"] >= kill_offset_s)]
        in_flight, failed_in_flight = len(flying), sum(1 for r in flying if r["error_kind"])
        refused = sum(1 for r in requests if r["error_kind"] and r["sent_s"] is not None
                      and kill_offset_s < r["sent_s"] <= healed_s)
        unexplained = sum(errors.values()) - failed_in_flight - refused
    else:
        unexplained = sum(errors.values())
    sent = end["counts"]["sent"] if end else None
    after = [r for r in requests if outage and not outage["ongoing"] and (r["sent_s"] or 0) > outage["end_s"] + margin_s]
    return {"recorded": len(requests), "ok": sum(1 for r in requests if not r["error_kind"]),
            "errors": sum(errors.values()), "errors_by_kind": errors, "sent": sent,
            "lost": None if sent is None else sent - len(requests), "complete": end is not None,
            "in_flight_at_kill": in_flight, "failed_in_flight_at_kill": failed_in_flight,
            "refused_while_not_ready": refused, "unexplained_errors": unexplained,
            "errors_after_kill": sum(1 for r in requests if r["error_kind"] and kill_offset_s is not None
                                     and (r["done_s"] or 0) >= kill_offset_s),
            "sent_after_healed": len(after), "ok_after_healed": sum(1 for r in after if not r["error_kind"]),
            "outage": outage, "not_ready": spans}


def tk(*args: str, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritonkit", *args], env=env, text=True, capture_output=True, **kw)


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def take_stop_signals() -> None:
    """A shell without job control starts background jobs with SIGINT ignored, and Python keeps it
    so: take SIGINT and SIGTERM ourselves, so that both stop perf and the server and keep the files."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--sample-every", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=600.0, help="seconds before memory must be flat")
    ap.add_argument("--kill-engine-at", type=float, default=0.5, help="fraction of the run (0: no kill)")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    ap.add_argument("--out", default="perf-results/soak")
    ap.add_argument("--judge", action="store_true", help="only judge the files already in --out (no run)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if args.judge:
        verdict = judge(out, args.warmup)
        print_verdict(verdict)
        return 0 if all(v is not False for v in verdict["checks"].values()) else 1
    out.mkdir(parents=True, exist_ok=True)
    take_stop_signals()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    say = (lambda m: print(f"[soak {time.strftime('%H:%M:%S')}] {m}", flush=True))

    from tritonkit.tinymodel import build_tiny_llama

    if not (out / "repo" / "tiny").is_dir():
        build_tiny_llama(out / "tiny")
        got = tk("build", str(out / "tiny"), "--gpu", "cpu", "--name", "tiny", "-o", str(out / "repo"), env=env)
        if got.returncode:
            sys.exit(f"build failed: {got.stderr.strip()}")
    name = f"soak-{os.getpid()}"
    http, grpc, metrics = free_port(), free_port(), free_port()
    got = tk("serve", "-r", str(out / "repo"), "--runtime", "local", "--name", name, "--detach",
             "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), env=env)
    if got.returncode:
        sys.exit(f"serve failed: {got.stderr.strip()}")
    say(got.stdout.splitlines()[0])
    from tritonkit.runtime import state

    record = state.load(name)
    pgid = record.pid
    perf_dir = out / "perf"
    perf_log = open(out / "perf.log", "w")
    perf = subprocess.Popen([sys.executable, "-m", "tritonkit", "perf", "--url", f"127.0.0.1:{grpc}", "--model", "tiny",
                             "--rate", f"{args.rate:g}", "--duration", f"{args.duration:g}", "--soak",
                             "--timeout", f"{args.timeout:g}", "--out", str(perf_dir), "--on-error", "continue"],
                            env=env, stdout=perf_log, stderr=subprocess.STDOUT)
    t0, wall0 = time.monotonic(), time.time()
    kill_at = args.duration * args.kill_engine_at if args.kill_engine_at > 0 else None
    kill_t = None
    mem_file = journal.Journal(out, on_error=lambda err: say(str(err)), name="memory.jsonl")
    mem_file.write({"type": "start", "wall": wall0, "duration_s": args.duration, "rate": args.rate,
                    "warmup_s": args.warmup, "server": name, "perf_pid": perf.pid, "server_pgid": pgid})
    next_sample = 0.0
    try:
        while perf.poll() is None:
            t = time.monotonic() - t0
            if t >= next_sample:
                mib = sample_rss(perf.pid, pgid)
                sample = {"type": "sample", "t": round(t, 3), "mib": mib,
                          "server": round(sum(v for k, v in mib.items() if k != "client"), 1)}
                mem_file.write(sample)
                say("RSS MiB " + ", ".join(f"{k} {v:.0f}" for k, v in mib.items()))
                next_sample += args.sample_every
            if kill_at is not None and kill_t is None and t >= kill_at:
                pids = engine_pids(pgid)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                kill_t = time.monotonic() - t0
                say(f"killed the engine (pid {', '.join(map(str, pids)) or 'none found'}) at {t:.0f} s")
                mem_file.write({"type": "kill", "t": round(kill_t, 3), "wall": time.time(), "pids": pids})
            time.sleep(min(1.0, max(0.05, next_sample - (time.monotonic() - t0))))
    except KeyboardInterrupt as stop:
        say(f"stopped by {stop} at {time.monotonic() - t0:.0f} s: stopping perf and the server; the files stay")
        interrupted = True
    else:
        interrupted = False
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if perf.poll() is None:
            perf.send_signal(signal.SIGINT)
            perf.wait(60)
        mem_file.write({"type": "end", "t": round(time.monotonic() - t0, 3), "perf_exit": perf.returncode})
        mem_file.close()
        tk("stop", "--name", name, env=env)
    verdict = judge(out, args.warmup)
    print_verdict(verdict)
    if interrupted:
        return 130
    return 0 if all(v is not False for v in verdict["checks"].values()) else 1


def judge(out: Path, warmup_s: float) -> dict:
    """The verdict from the files alone (memory.jsonl, perf/requests.jsonl), so a soak whose own
    process was killed can still be judged: `soak.py --judge OUT`. Written to OUT/soak.json."""
    memory, mem_cut = journal.read(out / "memory.jsonl")
    start = next((e for e in memory if e["type"] == "start"), {})
    kill = next((e for e in memory if e["type"] == "kill"), None)
    finish = next((e for e in memory if e["type"] == "end"), {})
    samples = [e for e in memory if e["type"] == "sample"]
    events, cut = journal.read(out / "perf")
    header = next((e for e in events if e["type"] == "run"), {})
    kill_t = kill["t"] if kill else None
    kill_offset = (kill["wall"] - header["started_at"]) if kill and kill.get("wall") and header.get("started_at") else None
    acct = account(events, kill_offset)
    flat = flatness(samples, warmup_s, kill_t)
    outage = acct["outage"]
    checks = {"memory_flat": all(v["flat"] is not False for v in flat.values()),
              "none_lost": acct["lost"] == 0 and not cut,
              "errors_only_from_the_kill": acct["unexplained_errors"] == 0}
    if kill_offset is not None:
        checks["in_flight_at_kill_all_failed"] = acct["failed_in_flight_at_kill"] == acct["in_flight_at_kill"]
        checks["not_ready_reported_then_healed"] = bool(outage and not outage["ongoing"] and acct["ok_after_healed"] > 0
                                                        and acct["ok_after_healed"] == acct["sent_after_healed"])
    verdict = {"duration_s": start.get("duration_s"), "rate": start.get("rate"), "warmup_s": warmup_s,
               "perf_exit": finish.get("perf_exit"), "soak_complete": bool(finish) and not mem_cut,
               "results_cut": cut, "kill_t": kill_t, "kill_offset_s": kill_offset, "requests": acct,
               "memory": flat, "samples": samples, "checks": checks}
    journal.write_atomic(out / "soak.json", json.dumps(verdict, indent=1) + "\n")
    return verdict


def print_verdict(v: dict) -> None:
    killed = "-" if v["kill_t"] is None else f"{v['kill_t']:.0f}"
    print(f"\nmemory (RSS MiB) every sample; engine killed at {killed} s")
    print(f"{'t (s)':>8} " + " ".join(f"{r:>8}" for r in (*ROLES, "server")))
    for s in v["samples"]:
        print(f"{s['t']:>8.0f} " + " ".join(f"{s['mib'][r]:>8.0f}" for r in ROLES) + f" {s['server']:>8.0f}")
    print("\nafter warm-up: " + "; ".join(f"{r} {m['min']:.0f}-{m['max']:.0f} MiB ({m['spread']:+.1%})"
                                          for r, m in v["memory"].items() if m["samples"]))
    a = v["requests"]
    print(f"requests: sent {a['sent']}, recorded {a['recorded']}, ok {a['ok']}, errors {a['errors']} "
          f"{a['errors_by_kind']}, lost {a['lost']}")
    print(f"at the kill: {a['in_flight_at_kill']} in flight, {a['failed_in_flight_at_kill']} of them failed; "
          f"{a['refused_while_not_ready']} refused while the model reloaded; {a['unexplained_errors']} other errors; "
          f"after it was ready again {a['ok_after_healed']} of {a['sent_after_healed']} ok")
    for span in a["not_ready"] or []:
        print(f"not ready {span['start_s']:.1f}-{span['end_s']:.1f} s ({span['duration_s']:.1f} s): {span['detail']}")
    print("checks: " + ", ".join(f"{k} {'-' if ok is None else ('PASS' if ok else 'FAIL')}" for k, ok in v["checks"].items()))


if __name__ == "__main__":
    sys.exit(main())
