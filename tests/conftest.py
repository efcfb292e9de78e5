"""Shared fixtures. The tiny model and its adapters are built once per session (a few seconds)."""

from __future__ import annotations

import shutil

import pytest

from tritonkit.tinymodel import build_tiny_llama, build_tiny_lora


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight tiny Llama folder (config.json, safetensors, tokenizer)."""
    return build_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory):
    """Two PEFT LoRA adapters for tiny_model, non-zero B: a (rank 8, q/v), b (rank 16, q/k/v/o)."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": build_tiny_lora(tiny_model, root / "a", seed=1),
        "b": build_tiny_lora(tiny_model, root / "b", seed=2, rank=16,
                             target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
    }


@pytest.fixture
def tritonkit_home(tmp_path, monkeypatch, tiny_model):
    """An empty $TRITONKIT_HOME (and HF cache) for one test, with the built-in tiny-llama already
    in place (a copy of tiny_model, which is what tritonkit would build there)."""
    home = tmp_path / "tritonkit-home"
    shutil.copytree(tiny_model, home / "models" / "tiny-llama")
    monkeypatch.setenv("TRITONKIT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home
