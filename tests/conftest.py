"""Shared fixtures. The tiny model and its adapters are built once per session (a few seconds).

The whole suite runs with a temporary $TRITONKIT_HOME and temporary caches (Hugging Face, vLLM,
XDG): tests leave the user's home alone. A local Triton runtime the user already installed is
reused through a symlink (only read: removing a symlinked runtime fails instead of deleting it);
without one, the first server of the session installs it into the temporary home.
"""

from __future__ import annotations

import shutil

import pytest

from tritonkit.tinymodel import build_tiny_llama, build_tiny_lora


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory):
    from tritonkit.runtime import install

    users_runtime = install.runtime_root()  # where the user's own runtime would be, read before the switch
    root = tmp_path_factory.mktemp("session-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITONKIT_HOME", str(root / "tritonkit"))
        for name, folder in (("HF_HOME", "hf"), ("HF_HUB_CACHE", "hf/hub"), ("VLLM_CACHE_ROOT", "vllm"),
                             ("VLLM_CONFIG_ROOT", "vllm-config"), ("XDG_CACHE_HOME", "xdg-cache"),
                             ("MPLCONFIGDIR", "matplotlib")):  # not XDG_CONFIG_HOME: pip's index config lives there
            patch.setenv(name, str(root / folder))
        patch.setenv("HF_HUB_OFFLINE", "1")
        if install.TritonInstall(users_runtime).is_complete():
            link = install.runtime_root()
            link.parent.mkdir(parents=True)
            link.symlink_to(users_runtime, target_is_directory=True)
        yield root


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
