import json
import warnings

import pytest
import torch

from fpq_core import data
from fpq_core.models.hub import HubUnreachableError


@pytest.fixture(scope="module")
def tok():
    from fpq_core.models.embedded import embedded_tokenizer

    return embedded_tokenizer()


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_embedded_default_deterministic_shapes(tok):
    a = data.get_calibration_data("embedded", tok, num_sequences=6, sequence_length=256, seed=0)
    b = data.get_calibration_data(None, tok, num_sequences=6, sequence_length=256, seed=0)
    c = data.get_calibration_data("embedded", tok, num_sequences=6, sequence_length=256, seed=1)
    assert [x.shape for x in a] == [torch.Size([1, 256])] * 6 and all(x.dtype == torch.long for x in a)
    assert _same(a, b) and not _same(a, c)
    assert len({tuple(x[0, :16].tolist()) for x in a}) == 6  # different documents


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """40 embedded C4 docs as a local .jsonl (fast to tokenize)."""
    path = tmp_path_factory.mktemp("corpus") / "c4_40.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in data.embedded_c4_texts()[:40]))
    return path


def test_crops_come_from_one_document(tok, small_corpus):
    docs = [tok(json.loads(line)["text"])["input_ids"] for line in small_corpus.read_text().splitlines()]
    for x in data.get_calibration_data(small_corpus, tok, num_sequences=3, sequence_length=64, seed=5):
        window = x[0].tolist()
        assert any(d[i : i + 64] == window for d in docs for i in range(len(d) - 63))


def test_fallback_to_eos_joined_windows(tok, small_corpus):
    lengths = [len(tok(json.loads(line)["text"])["input_ids"]) for line in small_corpus.read_text().splitlines()]
    n_long = sum(n >= 1024 for n in lengths)
    assert 0 < n_long < 10
    with pytest.warns(UserWarning, match=f"only {n_long} documents of >= 1024 tokens"):
        s = data.get_calibration_data(small_corpus, tok, num_sequences=10, sequence_length=1024, seed=0)
    assert [x.shape[1] for x in s] == [1024] * 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _same(s, data.get_calibration_data(small_corpus, tok, num_sequences=10, sequence_length=1024, seed=0))
    eos = tok.eos_token_id
    assert any(eos in x[0].tolist() for x in s[n_long:])  # windows cross document boundaries


def test_local_txt_jsonl_parquet(tok, tmp_path):
    texts = data.embedded_c4_texts()[:40]
    (tmp_path / "a.txt").write_text("\n\n".join(texts))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet")
    j = data.get_calibration_data(str(tmp_path / "a.jsonl"), tok, 4, 128, seed=0)
    p = data.get_calibration_data(tmp_path / "a.parquet", tok, 4, 128, seed=0)
    t = data.get_calibration_data(tmp_path / "a.txt", tok, 4, 128, seed=0)
    assert _same(j, p) and all(x.shape == (1, 128) for x in j + t)


def test_local_chat_jsonl(tok, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Yes. " * i}]} for i in range(1, 9)]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = data.get_calibration_data(tmp_path / "chat.jsonl", tok, 3, 20, seed=0)
    assert len(s) == 3 and all(x.shape[0] == 1 and x.shape[1] <= 20 for x in s)
    assert s[0][0, 0].item() == tok.convert_tokens_to_ids("<|im_start|>")  # template, no extra BOS


def test_bad_inputs(tok, tmp_path):
    with pytest.raises(ValueError, match="unknown calibration dataset 'nope'.*embedded, fineweb-edu, c4"):
        data.get_calibration_data("nope", tok, 1, 8)
    with pytest.raises(TypeError, match="needs a tokenizer"):
        data.get_calibration_data("embedded", None, 1, 8)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="must end with one of"):
        data.get_calibration_data(tmp_path / "x.csv", tok, 1, 8)


@pytest.mark.parametrize("name", ["c4", "fineweb-edu", "wikitext2", "open-platypus", "tulu"])
def test_hub_unreachable_message(tok, monkeypatch, name):
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(HubUnreachableError, match="hub is unreachable.*--dataset_name_or_path embedded"):
        data.get_calibration_data(name, tok, 2, 16)


@pytest.fixture
def fake_hub(monkeypatch):
    """Route datasets.load_dataset to in-memory data; record the arguments."""
    import datasets

    calls = []
    texts = data.embedded_c4_texts()[:200]

    def load_dataset(path, **kw):
        calls.append((path, kw))
        if path in ("allenai/c4", "HuggingFaceFW/fineweb-edu", "wikitext"):
            ds = datasets.Dataset.from_dict({"text": texts})
        elif path == "garage-bAInd/Open-Platypus":
            ds = datasets.Dataset.from_list([{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(20)])
        else:
            raise AssertionError(path)
        return ds.to_iterable_dataset() if kw.get("streaming") else ds

    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_code_paths(tok, fake_hub):
    c4 = data.get_calibration_data("c4", tok, 3, 64, seed=0)
    fw = data.get_calibration_data("fineweb-edu", tok, 3, 64, seed=0)
    wt = data.get_calibration_data("wikitext2", tok, 3, 64, seed=0)
    pl = data.get_calibration_data("open-platypus", tok, 5, 64, seed=0)
    assert all(x.shape == (1, 64) for x in c4 + fw + wt) and len(pl) == 5
    assert _same(fw, data.get_calibration_data("fineweb-edu", tok, 3, 64, seed=0))
    kw = dict(fake_hub)
    assert kw["allenai/c4"] == {"split": "train", "streaming": False, "data_files": "en/c4-train.00000-of-01024.json.gz"}
    assert kw["HuggingFaceFW/fineweb-edu"] == {"split": "train", "streaming": True, "name": "sample-10BT"}
    assert kw["wikitext"]["name"] == "wikitext-2-raw-v1" and kw["wikitext"]["split"] == "train"


def test_wikitext2_rows_and_tokens(tok):
    rows = data.get_text_rows("wikitext2")
    assert len(rows) == 4358 and rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    assert sum(bool(r) for r in rows) == 2891 and len("\n\n".join(rows)) == 1294336
    ids = data.get_wikitext2_test(tok)
    assert ids.ndim == 1 and ids.dtype == torch.long
    assert ids.numel() == 304986  # SmolLM2 tokenizer (no BOS added by default)


def test_other_rows():
    assert len(data.get_text_rows("gsm8k")) == 1319 and len(data.get_text_rows("c4")) == 1000
    with pytest.raises(ValueError, match="unknown text"):
        data.get_text_rows("pile")


def test_data_files_small_and_documented():
    files = [p for p in data.DATA_DIR.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"wikitext2_raw_test.txt", "c4_en_train00000_first1000.jsonl", "gsm8k_test.jsonl", "SOURCES.md"}
    assert all(p.stat().st_size < 5_000_000 for p in files)
    sources = (data.DATA_DIR / "SOURCES.md").read_text()
    for needle in ("CC BY-SA 3.0", "ODC-BY 1.0", "MIT", "173c87a5", "cdd5b754", "3730d312"):
        assert needle in sources
