"""Third-party console noise that tells a tritonkit user nothing, silenced by name (nothing else).

- vLLM's CPU build logs "Triton is installed, but doesn't include CPU backend. Disabling Triton."
  when imported: that is the Triton *compiler*, confusing in a tool about Triton *server*.
- transformers' save_pretrained draws a "Writing model shards" progress bar for a tiny model
  written in a blink (the built-in model, a merged adapter).
"""

from __future__ import annotations

import contextlib
import logging

DROPPED = {"vllm.triton_utils.importing": "Triton is installed, but doesn't include CPU backend"}


class _Drop(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def install() -> None:
    """Attach the filters (before vLLM is imported; loggers are per-name singletons, so vLLM's
    own logging set-up keeps them)."""
    for name, text in DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(text))


@contextlib.contextmanager
def no_progress_bars():
    """transformers' progress bars off for the block (save_pretrained's shard writing)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
