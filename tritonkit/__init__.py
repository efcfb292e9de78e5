"""tritonkit: fine-tuned LLM -> Triton (vLLM backend) -> measured latency, throughput and cost."""

__version__ = "0.1.0"
