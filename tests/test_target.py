"""Which server `generate` and `perf` talk to: one answer (tritonkit.target), from the records."""

from __future__ import annotations

import pytest

from tritonkit import target
from tritonkit.errors import UsageError
from tritonkit.perf import session
from tritonkit.runtime import state


def record(name, port, repository, models=("tiny",)):
    return state.ServerRecord(name=name, runtime="local", repository=str(repository), models=list(models),
                              host="127.0.0.1", http_port=port, grpc_port=port + 1, metrics_port=port + 2)


@pytest.fixture
def servers(tritonkit_home, tmp_path, monkeypatch):
    """Records of two servers; `alive` says which answer."""
    alive = {"a": True, "b": False}
    monkeypatch.setattr(target, "_alive", lambda r: alive[r.name])
    for r in (record("a", 9000, tmp_path / "repo-a"), record("b", 9100, tmp_path / "repo-b", ("x", "y"))):
        state.save(r)
    return alive


def test_nothing_given_is_the_one_live_server(servers, tmp_path):
    found = target.resolve("grpc")
    assert found.record.name == "a" and found.url == "127.0.0.1:9001" and found.repository == tmp_path / "repo-a"
    assert target.resolve("http").url == "127.0.0.1:9000" and target.resolve("openai").url == "http://127.0.0.1:9000"
    servers["b"] = True
    with pytest.raises(UsageError, match=r"several servers are running \(a, b\)"):
        target.resolve("grpc")


def test_url_name_and_repository_pick_their_server(servers, tmp_path):
    servers["b"] = True
    assert target.resolve("grpc", url="localhost:9101").record.name == "b"
    assert target.resolve("grpc", url="localhost:7001").record is None  # a server tritonkit did not start
    assert target.resolve("grpc", name="b").url == "127.0.0.1:9101"
    assert target.resolve("grpc", repository=tmp_path / "repo-b").record.name == "b"
    with pytest.raises(UsageError, match="serves several models"):
        target.resolve("grpc", name="b").only_model()
    servers["b"] = False
    with pytest.raises(UsageError, match="server 'b' is not running"):
        target.resolve("grpc", name="b")


def test_no_server_defaults_to_model_repository_here(tritonkit_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert target.resolve("grpc") == target.Target(None, "grpc", None, None)
    assert target.resolve(None).protocol == "grpc"  # no server: Triton's gRPC
    (tmp_path / "model_repository").mkdir()
    assert target.resolve("grpc").repository == target.Path("model_repository")
    assert target.resolve("grpc", url="127.0.0.1:7001").repository is None  # not a server tritonkit started


def test_perf_without_a_model_says_what_it_looked_at(tritonkit_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"which model should perf load\? No server is running and no "
                                         r"./model_repository here") as err:
        session.resolve(session.Options(rate="1"), say=lambda m: None)
    assert "pass --model NAME, or --repository with a tritonkit build" in err.value.hint


def test_perf_and_generate_agree(servers, tmp_path):
    said = []
    plan = session.resolve(session.Options(rate="1", metrics_url="none"), say=said.append)
    assert (plan.model, plan.url, plan.meta["server"]) == ("tiny", "127.0.0.1:9001", "a")
    assert said[0] == "perf: server a at 127.0.0.1:9001, model tiny"
    from tritonkit.commands.generate import _target

    found, model = _target(None, None, None, "grpc")
    assert (found.url, model) == (plan.url, plan.model)


def test_the_default_protocol_is_the_servers_api(tritonkit_home, tmp_path, monkeypatch):
    """A vllm or ray server speaks OpenAI: generate and perf pick it when --protocol is not given."""
    monkeypatch.setattr(target, "_alive", lambda r: True)
    openai_server = record("v", 9200, tmp_path / "repo-v")
    openai_server.runtime, openai_server.api = "vllm", "openai"
    state.save(openai_server)
    found = target.resolve(None)
    assert (found.protocol, found.url) == ("openai", "http://127.0.0.1:9200")
    assert target.resolve("grpc").protocol == "grpc"  # an explicit choice stands
