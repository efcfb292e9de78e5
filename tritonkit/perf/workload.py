"""What each request asks: its prompt (with an exact input token count) and its output length.

Prompts are cut from the shipped corpus (tritonkit/data/corpus.txt) with the model's own
tokenizer, each starting at a different place in the corpus, so every request differs from its
first token on and prefix caching cannot flatter the result. The count is what the tokenizer
gives for the whole prompt including the special tokens it adds (a BOS for Llama), which is what
vLLM counts. Without a tokenizer, prompts are N corpus words and the count is marked unknown.
Or the user's own prompts: JSONL ({"prompt": ..., "max_tokens": ...}) or CSV with a prompt column.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tritonkit.errors import UsageError
from tritonkit.paths import shipped

CORPUS = shipped("tritonkit/data/corpus.txt")
MAX_UNIQUE = 5000  # distinct prompts built per run; longer runs cycle through them


@dataclass(frozen=True)
class OutputLength:
    """Fixed ("6"), uniform ("uniform:4:8", inclusive) or normal ("normal:100:20", clipped to >= 1)."""

    kind: str
    a: float
    b: float = 0.0

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    def __str__(self) -> str:
        return {"fixed": f"{int(self.a)}", "uniform": f"uniform {int(self.a)}..{int(self.b)}",
                "normal": f"normal(mean {self.a:g}, sd {self.b:g})"}[self.kind]


def parse_output_length(spec: str | int) -> OutputLength:
    text = str(spec).strip()
    m = re.fullmatch(r"(\d+)", text)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise UsageError("output tokens must be at least 1")
        return OutputLength("fixed", n)
    m = re.fullmatch(r"(uniform|normal):([0-9.]+):([0-9.]+)", text)
    if not m:
        raise UsageError(f"cannot read output length {text!r}", "write e.g. 6, uniform:4:8 or normal:100:20")
    kind, a, b = m.group(1), float(m.group(2)), float(m.group(3))
    if kind == "uniform" and not 1 <= a <= b:
        raise UsageError(f"bad uniform output length {text!r}", "need 1 <= low <= high")
    if kind == "normal" and (a < 1 or b < 0):
        raise UsageError(f"bad normal output length {text!r}", "need mean >= 1 and sd >= 0")
    return OutputLength(kind, a, b)


@dataclass
class Workload:
    prompts: list[tuple[str, int | None]]  # (prompt, its token count or None)
    output: OutputLength | None  # None: each prompt row carries its own max_tokens
    max_tokens: list[int | None] = field(default_factory=list)  # per prompt row (user files)
    sampling: dict = field(default_factory=dict)  # extra sampling parameters (ignore_eos, temperature...)
    source: str = ""
    seed: int = 0

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        if not self.prompts:
            raise UsageError("the workload has no prompts")

    def request(self, i: int) -> tuple[str, int | None, dict]:
        """Prompt, its token count, and sampling parameters for request number i."""
        j = i % len(self.prompts)
        prompt, n = self.prompts[j]
        mt = self.max_tokens[j] if self.max_tokens and self.max_tokens[j] else None
        if mt is None:
            mt = self.output.sample(self._rng) if self.output else 16
        return prompt, n, {**self.sampling, "max_tokens": mt}

    def describe(self) -> dict:
        counts = [n for _, n in self.prompts if n is not None]
        return {"source": self.source, "distinct_prompts": len(self.prompts),
                "prompt_tokens": (f"{min(counts)}..{max(counts)}" if counts and min(counts) != max(counts)
                                  else (counts[0] if counts else "unknown (no tokenizer)")),
                "output_tokens": str(self.output) if self.output else "per prompt", "sampling": self.sampling}


def corpus_prompts(tokenizer, n: int, input_tokens: int, seed: int = 0, corpus: str | None = None) -> list[tuple[str, int | None]]:
    """n distinct prompts of exactly `input_tokens` tokens (as `tokenizer` counts a whole prompt)."""
    if input_tokens < 1:
        raise UsageError("input tokens must be at least 1")
    text = corpus if corpus is not None else CORPUS.read_text(encoding="utf-8")
    text = " ".join(text.split())
    rng = random.Random(seed)
    n = min(n, MAX_UNIQUE)
    if tokenizer is None:
        words = text.split()
        if input_tokens >= len(words):
            raise UsageError(f"the corpus holds only {len(words)} words")
        starts = rng.sample(range(len(words) - input_tokens), min(n, len(words) - input_tokens))
        return [(" ".join(words[s:s + input_tokens]), None) for s in (starts[i % len(starts)] for i in range(n))]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    want = input_tokens - special
    if want < 1:
        raise UsageError(f"input tokens must exceed the {special} special tokens the tokenizer adds")
    if want * 2 >= len(ids):
        raise UsageError(f"{input_tokens} input tokens is too long for the shipped corpus ({len(ids)} tokens)")
    positions = len(ids) - want * 2
    starts = rng.sample(range(positions), min(n, positions))  # distinct starting tokens
    return [_exact(tokenizer, ids, starts[i % len(starts)], want, input_tokens) for i in range(n)]


def _exact(tokenizer, ids: list[int], start: int, want: int, target: int) -> tuple[str, int]:
    """Decode a slice and re-encode it: nudge the slice until the round trip gives `target` tokens."""
    k = want
    for _ in range(12):
        prompt = tokenizer.decode(ids[start:start + k])
        got = len(tokenizer(prompt)["input_ids"])
        if got == target:
            return prompt, got
        k += target - got
        if k < 1:
            k = 1
    # Rare: trim characters until it fits exactly.
    while got > target and prompt:
        prompt = prompt[:-1]
        got = len(tokenizer(prompt)["input_ids"])
    return prompt, got


def load_tokenizer(path: str | Path):
    """The model's Hugging Face tokenizer from a local folder (no hub download)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"tokenizer folder {p} not found", "pass --tokenizer with a model folder")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as err:  # transformers raises many kinds
        raise UsageError(f"cannot load a tokenizer from {p}: {err}", "pass --tokenizer with a model folder") from None


def load_prompt_file(path: str | Path, tokenizer=None) -> tuple[list[tuple[str, int | None]], list[int | None]]:
    """User prompts from JSONL or CSV; returns (prompts with token counts, per-row max_tokens)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"prompt file {p} not found")
    rows: list[dict] = []
    try:
        if p.suffix.lower() == ".csv":
            with open(p, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            with open(p, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        rows.append(row if isinstance(row, dict) else {"prompt": row})
    except (ValueError, csv.Error) as err:
        raise UsageError(f"cannot read prompt file {p}: {err}") from None
    prompts, max_tokens = [], []
    for row in rows:
        text = row.get("prompt") or row.get("text")
        if not text or not str(text).strip():
            continue
        n = len(tokenizer(str(text))["input_ids"]) if tokenizer is not None else None
        prompts.append((str(text), n))
        mt = row.get("max_tokens") or row.get("output_tokens")
        max_tokens.append(int(mt) if mt not in (None, "") else None)
    if not prompts:
        raise UsageError(f"prompt file {p} holds no prompts", "give JSONL lines with a \"prompt\" key or a CSV with a prompt column")
    return prompts, max_tokens
