"""State that cannot crash the tool: corrupt server records, build.json and results files give one
line naming the file and what to do (exit 2) from every command that reads them; two starts of one
server name cannot race; results written onto a full disk stay valid. No server is started here
(test_faults_live.py starts real ones)."""

from __future__ import annotations

import json
import os
import re
import sys
import subprocess
import uuid
from pathlib import Path

import pytest

from tritonkit.cli import main
from tritonkit.errors import UsageError
from tritonkit.perf import journal
from tritonkit.runtime import state

GOOD_RECORD = {"name": "x", "runtime": "local", "repository": "/nonexistent/repo", "models": ["tiny"],
               "host": "127.0.0.1", "http_port": 1, "grpc_port": 2, "metrics_port": 3, "pid": None}
CORRUPT = {
    "garbage": b"\x00\x01not json at all",
    "truncated": json.dumps(GOOD_RECORD).encode()[:40],
    "empty": b"",
    "a list": b"[1, 2]",
    "missing keys": b'{"name": "x"}',
    "wrong types": json.dumps({**GOOD_RECORD, "grpc_port": "eighty", "pid": "12"}).encode(),
    "invalid utf-8": b'{"name": "\xff\xfe"}',
}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entry point in-process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def one_line_naming(err: str, path: Path) -> bool:
    """One error line naming the file (perf may say other things first, e.g. that it has no tokenizer)."""
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    return len(errors) == 1 and str(path) in errors[0] and "Traceback" not in err


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def corrupt_record(name: str, content: bytes) -> Path:
    path = state.record_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("damage", list(CORRUPT))
@pytest.mark.parametrize("command", [
    ["status"], ["status", "--name", "x"], ["stop"], ["stop", "--name", "x"], ["stop", "--all"],
    ["generate", "hello"], ["generate", "hello", "--name", "x"], ["generate", "hello", "--url", "127.0.0.1:9"],
    ["perf", "--url", "127.0.0.1:9", "--model", "tiny", "--rate", "1", "--requests", "1"],
])
def test_a_corrupt_server_record_is_one_line_exit_2(home, capsys, tmp_path, monkeypatch, command, damage):
    monkeypatch.chdir(tmp_path)  # perf would write its default output folder here
    path = corrupt_record("x", CORRUPT[damage])
    code, out, err = cli(capsys, *command)
    assert code == 2, (out, err)
    assert one_line_naming(err, path), err
    assert f"rm {path}" in err


def test_serve_refuses_over_a_corrupt_record_of_its_name(home, capsys, tmp_path):
    path = corrupt_record("x", CORRUPT["truncated"])
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('name: "m"\n')
    code, _, err = cli(capsys, "serve", "-r", str(repo), "--name", "x", "--runtime", "local", "--detach")
    assert code == 2 and one_line_naming(err, path), err


def test_records_of_other_servers_are_still_listed_when_sound(home, capsys):
    state.save(state.ServerRecord(**{**GOOD_RECORD, "name": "good"}))
    code, out, err = cli(capsys, "status")
    assert code == 0 and "good: dead (stale record)" in out, (out, err)


@pytest.mark.parametrize("content", [b"{\"model_name\": \"m\", \"mod", b"", b"[]", b'{"model_name": "m"}'])
def test_a_corrupt_build_json_is_one_line_exit_2_for_serve_and_perf(home, capsys, tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "vllm"\n')
    path = repo / "m" / "build.json"
    path.write_bytes(content)
    for command in (["serve", "-r", str(repo), "--runtime", "local", "--name", "b", "--detach"],
                    ["perf", "-r", str(repo), "--url", "127.0.0.1:9", "--rate", "1", "--requests", "1"]):
        code, out, err = cli(capsys, *command)
        assert code == 2, (command, out, err)
        assert one_line_naming(err, path), err
        assert "tritonkit build --force" in err
    assert not (home / "servers" / "b" / "server.json").exists()


# -- results files ------------------------------------------------------------------------------

def test_journal_lines_are_whole_and_a_cut_last_line_is_tolerated(tmp_path):
    j = journal.Journal(tmp_path)
    for i in range(5):
        j.write({"type": "request", "index": i})
    j.close()
    with open(j.path, "ab") as f:
        f.write(b'{"type": "request", "ind')  # what a kill -9 in the middle of a write would leave
    events, cut = journal.read(tmp_path)
    assert cut and [e["index"] for e in events] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [b"{not json}\n", b"[1]\n", b'{"no_type": 1}\n'])
def test_a_corrupt_results_line_names_the_file_and_line(tmp_path, bad):
    path = tmp_path / journal.JOURNAL
    path.write_bytes(b'{"type": "run"}\n' + bad + b'{"type": "end"}\n')
    with pytest.raises(UsageError, match=rf"results file {path} is corrupt at line 2"):
        journal.read(path)


def test_a_missing_results_file_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="cannot read results file"):
        journal.read(tmp_path / "nope.jsonl")


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True, text=True)
    if got.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({got.stderr.strip() or got.returncode}): needs root")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_results_onto_a_full_disk_stop_at_the_last_whole_line(full_disk):
    errors = []
    j = journal.Journal(full_disk, on_error=errors.append)
    written = 0
    while j.fd is not None and written < 10_000:
        j.write({"type": "request", "index": written, "pad": "x" * 300})
        written += 1
    assert len(errors) == 1 and isinstance(errors[0], journal.ResultsWriteError)
    assert re.search(r"cannot write results to .*requests.jsonl: No space left on device; the \d+ lines", str(errors[0]))
    j.write({"type": "request", "index": -1})  # after the failure: dropped, no second error
    assert len(errors) == 1
    events, cut = journal.read(j.path)
    assert not cut and len(events) == j.lines > 0
    assert [e["index"] for e in events] == list(range(j.lines))


def test_a_summary_file_on_a_full_disk_keeps_its_previous_version(full_disk):
    target = full_disk / "results.json"
    journal.write_atomic(target, '{"ok": 1}\n')
    with pytest.raises(journal.ResultsWriteError, match="No space left on device"):
        journal.write_atomic(target, "x" * 200_000)
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in full_disk.iterdir()] == ["results.json"]  # no temporary file left


# -- one start per name ------------------------------------------------------------------------

def test_a_second_start_of_the_same_name_refuses_while_the_first_holds_the_lock(home):
    with state.start_lock("x"):
        with pytest.raises(UsageError, match="being started by another `tritonkit serve`"):
            with state.start_lock("x"):
                pass
        with state.start_lock("y"):  # another name is independent
            pass
    with state.start_lock("x"):  # released when the first start ended
        pass


def test_the_start_lock_is_released_when_its_holder_is_killed(home):
    """flock: a start killed with SIGKILL leaves no stale lock behind."""
    code = ("import os,sys,time\nfrom tritonkit.runtime import state\n"
            "with state.start_lock('x'):\n    print('held', flush=True)\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="being started"):
            with state.start_lock("x"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with state.start_lock("x"):
        pass


def test_lock_files_do_not_look_like_server_records(home):
    with state.start_lock(f"n{uuid.uuid4().hex[:6]}"):
        assert state.all_records() == []

