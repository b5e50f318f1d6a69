import json

import pytest
import torch

from fpq_core.models import loading
from fpq_core.models.hub import HubUnreachableError
from fpq_core.models.loading import load_config, load_model, resolve_source
from fpq_core.models.tiny import make_tiny_model


def test_resolve_source(tmp_path):
    assert resolve_source(None) == ("embedded", "embedded")
    assert resolve_source("embedded")[0] == "embedded"
    assert resolve_source(tmp_path) == ("folder", tmp_path)
    assert resolve_source("Qwen/Qwen3-8B") == ("hub", "Qwen/Qwen3-8B")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_source(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="embedded"):
        resolve_source("./no/such/folder")


@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])
def test_load_local_folder_roundtrip(tmp_path, arch):
    ref, _ = make_tiny_model(arch, seed=1)
    ref.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no tokenizer"):
        model, tok = load_model(tmp_path)
    assert tok is None
    assert type(model) is type(ref) and model.dtype == torch.float32
    assert not model.training and model.config.use_cache is False
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randint(0, 256, (1, 10))
    torch.testing.assert_close(model(x).logits, ref(x).logits)


def test_unsupported_architecture_fails_before_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1).save_pretrained(tmp_path)  # config only: no weights to read
    with pytest.raises(ValueError, match="'gpt2' is not supported; supported model types: llama"):
        load_model(tmp_path)


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_hub_unreachable_error_names_alternatives(monkeypatch):
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    with pytest.raises(HubUnreachableError) as e:
        load_model("fpq-test-owner/not-a-real-model-xyz")
    msg = str(e.value)
    assert "hub is unreachable" in msg and "embedded" in msg and "local folder" in msg and ".gguf" in msg


def test_trust_remote_code_off_by_default():
    import inspect

    for fn in (load_model, load_config):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False


def test_load_config_reads_no_weights(tmp_path):
    ref, _ = make_tiny_model("mistral")
    ref.config.save_pretrained(tmp_path)
    cfg = load_config(tmp_path)
    assert cfg.model_type == "mistral" and json.loads((tmp_path / "config.json").read_text())["hidden_size"] == 64
