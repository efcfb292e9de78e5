"""Delivery methods: which runtime serves the build and which protocol the same client speaks to it."""

from __future__ import annotations

from dataclasses import dataclass

from tritonkit.errors import UsageError


@dataclass(frozen=True)
class Method:
    name: str  # what users pass to --methods
    runtime: str  # a name in tritonkit.runtime.base.RUNTIMES
    protocol: str  # the perf client's protocol: grpc (Triton) or openai
    label: str  # the table's column heading
    seed_server: str | None  # the `server` column of the seed's benchmarks, where it measured this method

    def url(self, host: str, http_port: int, grpc_port: int) -> str:
        return f"{host}:{grpc_port}" if self.protocol == "grpc" else f"http://{host}:{http_port}"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("triton-local", "local", "grpc", "Triton + vLLM (local)", "triton_vllm"),
    Method("triton-docker", "docker", "grpc", "Triton + vLLM (container)", "triton_vllm"),
    Method("vllm", "vllm", "openai", "standalone vLLM", "vllm"),
    Method("ray", "ray", "openai", "Ray Serve + vLLM", "ray_llm"),
)}
ALIASES = {"triton": "triton-local"}


def parse(text: str) -> list[Method]:
    """'triton-local,vllm,ray' -> Methods, in the order given (the order they run in)."""
    names = [ALIASES.get(n.strip(), n.strip()) for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("no delivery method given", f"pass --methods, e.g. {','.join(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UsageError(f"unknown delivery method {unknown[0]!r}", f"use some of: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise UsageError(f"a delivery method is named twice in {text!r}", "use --repeat to run a method again")
    return [METHODS[n] for n in names]


def baseline(name: str | None, methods: list[Method]) -> Method:
    """The method every ratio divides by: --baseline, else the first one."""
    if name is None:
        return methods[0]
    name = ALIASES.get(name, name)
    found = next((m for m in methods if m.name == name), None)
    if found is None:
        raise UsageError(f"--baseline {name!r} is not among the methods compared",
                         f"use one of: {', '.join(m.name for m in methods)}")
    return found
