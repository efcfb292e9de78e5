"""tritonkit: fine-tuned LLM -> Triton (vLLM backend) -> measured latency, throughput and cost."""

__version__ = "0.1.0"

from tritonkit import quiet as _quiet

_quiet.install()  # every tritonkit process (CLI, engine): drop known third-party noise lines
