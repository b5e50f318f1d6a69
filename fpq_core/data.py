"""Calibration and evaluation text, tokenized.

Calibration (``get_calibration_data``) follows the reference's ``--dataset_name_or_path``:

| name | source | sampling |
|---|---|---|
| ``embedded`` (default) | C4 sample shipped in ``data_files/`` (1,000 docs) | as ``c4`` |
| ``c4`` | allenai/c4 ``en/c4-train.00000-of-01024.json.gz`` | random docs with >= L tokens, no repeats, random crop of L |
| ``fineweb-edu`` | HuggingFaceFW/fineweb-edu ``sample-10BT``, streaming, ``shuffle(seed, buffer_size=1000)`` | skip docs < L tokens, random crop of L |
| ``wikitext2`` | wikitext ``wikitext-2-raw-v1`` *train* | random L-windows of the ``"\\n\\n"``-joined text |
| ``open-thoughts``, ``open-platypus``, ``ultrachat-200k``, ``tulu`` | chat sets | ``shuffle(seed).select(n)``, chat template, ``add_special_tokens=False``, truncate to L (variable length) |
| a ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` path | local file | text docs as ``c4``; records with ``messages`` / ``conversations`` as chat |

Each sample is a ``(1, L)`` LongTensor (chat samples may be shorter). Sampling uses
``random.Random(seed)`` only: same seed, same tokenizer -> same tokens.

Fallback for small corpora: when fewer than ``num_sequences`` documents have >= L tokens (the
embedded C4 sample has 32 such documents at L=2048 with the SmolLM2 tokenizer), the long
documents are used first and the rest are random L-token windows of the whole corpus,
documents joined with EOS (a warning says so). Windows may overlap.

Evaluation (``get_wikitext2_test``) is WikiText-2 raw *test* per the reference protocol:
``"\\n\\n".join(rows)`` tokenized once with the tokenizer's default special tokens. It is never
used for calibration.
"""
from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from fpq_core.models.hub import HubUnreachableError, hub_reachable, offline_mode

DATA_DIR = Path(__file__).resolve().parent / "data_files"
EMBEDDED_C4 = DATA_DIR / "c4_en_train00000_first1000.jsonl"
WIKITEXT2_TEST = DATA_DIR / "wikitext2_raw_test.txt"
GSM8K_TEST = DATA_DIR / "gsm8k_test.jsonl"
EMBEDDED_ALIASES = ("embedded", "default", "c4-embedded")
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class HubTextSet:
    """A pretraining-style text set on the hub: random crops of long documents."""

    path: str
    name: str | None = None
    split: str = "train"
    data_files: str | None = None
    streaming: bool = False
    text_field: str = "text"
    join_windows: bool = False  # True: random windows of the joined corpus (wikitext style)


@dataclass(frozen=True)
class HubChatSet:
    """A chat set on the hub: ``to_messages(record) -> [{"role", "content"}, ...]``."""

    path: str
    split: str = "train"
    to_messages: Callable[[dict], list[dict]] = lambda r: r["messages"]


def _openthoughts_messages(r: dict) -> list[dict]:
    role = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
    msgs = [{"role": "system", "content": r["system"]}] if r.get("system") else []
    return msgs + [{"role": role.get(m["from"], m["from"]), "content": m["value"]} for m in r["conversations"]]


def _platypus_messages(r: dict) -> list[dict]:
    prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"]}]


HUB_DATASETS: dict[str, HubTextSet | HubChatSet] = {
    "fineweb-edu": HubTextSet("HuggingFaceFW/fineweb-edu", name="sample-10BT", streaming=True),
    "c4": HubTextSet("allenai/c4", data_files="en/c4-train.00000-of-01024.json.gz"),
    "wikitext2": HubTextSet("wikitext", name="wikitext-2-raw-v1", join_windows=True),
    "open-thoughts": HubChatSet("open-thoughts/OpenThoughts-114k", to_messages=_openthoughts_messages),
    "open-platypus": HubChatSet("garage-bAInd/Open-Platypus", to_messages=_platypus_messages),
    "ultrachat-200k": HubChatSet("HuggingFaceH4/ultrachat_200k", split="train_sft"),
    "tulu": HubChatSet("allenai/tulu-3-sft-mixture"),
}


def dataset_names() -> list[str]:
    """Names accepted by ``get_calibration_data`` besides local file paths."""
    return ["embedded", *HUB_DATASETS]


# ---------------------------------------------------------------------------------------------
# tokenization and sampling (pure given tokenizer + rng)


def _encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]


def _as_sample(ids: list[int]) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)  # (1, L)


def _random_windows(stream: list[int], n: int, length: int, rng: random.Random) -> list[torch.Tensor]:
    if len(stream) < length:
        raise ValueError(f"the calibration text has {len(stream)} tokens, fewer than sequence_length={length}")
    starts = [rng.randint(0, len(stream) - length) for _ in range(n)]
    return [_as_sample(stream[s : s + length]) for s in starts]


_CHUNK = 32


def sample_documents(
    docs: list[str], tokenizer, num_sequences: int, sequence_length: int, rng: random.Random
) -> list[torch.Tensor]:
    """Random docs with >= L tokens, without repeats, each randomly cropped to exactly L tokens.

    If the corpus runs out of long documents, the remaining samples are random L-windows of all
    documents joined with EOS (see the module docstring)."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    samples, cache = [], {}
    for pos, i in enumerate(order):
        if len(samples) == num_sequences:
            return samples
        if i not in cache:  # tokenize ahead in chunks (fast tokenizers batch in parallel)
            chunk = order[pos : pos + _CHUNK]
            for j, ids in zip(chunk, tokenizer([docs[j] for j in chunk], verbose=False)["input_ids"]):
                cache[j] = ids
        ids = cache[i]
        if len(ids) >= sequence_length:
            start = rng.randint(0, len(ids) - sequence_length)
            samples.append(_as_sample(ids[start : start + sequence_length]))
    if len(samples) == num_sequences:
        return samples
    missing = num_sequences - len(samples)
    warnings.warn(
        f"calibration corpus has only {len(samples)} documents of >= {sequence_length} tokens; "
        f"taking the other {missing} samples as random windows of the EOS-joined corpus"
    )
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [t for i in range(len(docs)) for t in cache[i] + eos]
    return samples + _random_windows(stream, missing, sequence_length, rng)


def sample_stream(
    docs: Iterable[str], tokenizer, num_sequences: int, sequence_length: int, rng: random.Random
) -> list[torch.Tensor]:
    """Streaming variant (fineweb-edu): skip docs shorter than L, random crop, stop at n."""
    samples = []
    for text in docs:
        ids = _encode(tokenizer, text)
        if len(ids) < sequence_length:
            continue
        start = rng.randint(0, len(ids) - sequence_length)
        samples.append(_as_sample(ids[start : start + sequence_length]))
        if len(samples) == num_sequences:
            return samples
    raise ValueError(f"the stream ended after {len(samples)} of {num_sequences} documents of >= {sequence_length} tokens")


def sample_chats(conversations: list[list[dict]], tokenizer, sequence_length: int) -> list[torch.Tensor]:
    """Chat template (no generation prompt), ``add_special_tokens=False``, truncate to L."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat calibration sets need a tokenizer with a chat template; this tokenizer has none")
    out = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        out.append(_as_sample(_encode(tokenizer, text, add_special_tokens=False)[:sequence_length]))
    return out


# ---------------------------------------------------------------------------------------------
# sources: embedded files, local files, the hub


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def embedded_c4_texts() -> list[str]:
    """The 1,000 documents of the embedded C4 sample."""
    return [r["text"] for r in _read_jsonl(EMBEDDED_C4)]


def _read_records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else data.get("data", [data])
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _record_messages(r: dict) -> list[dict] | None:
    if isinstance(r.get("messages"), list):
        return r["messages"]
    if isinstance(r.get("conversations"), list):
        return _openthoughts_messages(r)
    return None


def _local_file(path: Path, tokenizer, n: int, length: int, rng: random.Random) -> list[torch.Tensor]:
    if path.suffix not in LOCAL_SUFFIXES:
        raise ValueError(f"local calibration file {path} must end with one of {LOCAL_SUFFIXES}")
    if path.suffix == ".txt":  # documents = paragraphs separated by blank lines
        docs = [d for d in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if d.strip()]
        return sample_documents(docs, tokenizer, n, length, rng)
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path} holds no records")
    if _record_messages(records[0]) is not None:
        rng.shuffle(records)
        return sample_chats([_record_messages(r) for r in records[:n]], tokenizer, length)
    if "text" not in records[0]:
        raise ValueError(f"{path}: records need a 'text' field or 'messages'/'conversations'; got keys {sorted(records[0])}")
    return sample_documents([r["text"] for r in records], tokenizer, n, length, rng)


def _require_hub(what: str) -> None:
    if not hub_reachable() and not offline_mode():
        raise HubUnreachableError(
            f"cannot load {what}: the Hugging Face hub is unreachable. Use the embedded C4 sample "
            "instead (--dataset_name_or_path embedded, the default) or a local .txt/.jsonl/.parquet "
            "file (--dataset_name_or_path path/to/file)."
        )


def _load_hub(spec: HubTextSet | HubChatSet, streaming: bool = False):
    _require_hub(f"dataset {spec.path!r}")
    import datasets

    kw = dict(split=spec.split, streaming=streaming)
    if isinstance(spec, HubTextSet):
        kw.update(name=spec.name, data_files=spec.data_files)
    try:
        return datasets.load_dataset(spec.path, **{k: v for k, v in kw.items() if v is not None})
    except (OSError, ConnectionError) as e:
        raise HubUnreachableError(
            f"could not load {spec.path!r} from the Hugging Face hub ({e}). Use --dataset_name_or_path "
            "embedded or a local file."
        ) from e


def _hub_set(name: str, tokenizer, n: int, length: int, seed: int, rng: random.Random) -> list[torch.Tensor]:
    spec = HUB_DATASETS[name]
    if isinstance(spec, HubChatSet):
        ds = _load_hub(spec).shuffle(seed=seed).select(range(n))
        return sample_chats([spec.to_messages(r) for r in ds], tokenizer, length)
    if spec.streaming:
        ds = _load_hub(spec, streaming=True).shuffle(seed=seed, buffer_size=1000)
        return sample_stream((r[spec.text_field] for r in ds), tokenizer, n, length, rng)
    ds = _load_hub(spec)
    if spec.join_windows:
        stream = _encode(tokenizer, "\n\n".join(ds[spec.text_field]))
        return _random_windows(stream, n, length, rng)
    return sample_documents(ds[spec.text_field], tokenizer, n, length, rng)


def get_calibration_data(
    name_or_path: str | Path | None = "embedded",
    tokenizer=None,
    num_sequences: int = 128,
    sequence_length: int = 2048,
    seed: int = 0,
) -> list[torch.Tensor]:
    """-> list of ``num_sequences`` LongTensors of shape ``(1, L)`` (chat sets: L <= sequence_length).

    ``name_or_path``: "embedded" (default, the shipped C4 sample), a name from ``dataset_names()``,
    or a local .txt/.jsonl/.json/.parquet file. Hub names need network; without it a
    ``HubUnreachableError`` names the offline alternatives."""
    if tokenizer is None:
        raise TypeError("get_calibration_data needs a tokenizer (load_model returns one)")
    if num_sequences < 1 or sequence_length < 1:
        raise ValueError(f"num_sequences and sequence_length must be >= 1, got {num_sequences}, {sequence_length}")
    rng = random.Random(seed)
    name = "embedded" if name_or_path is None else str(name_or_path)
    if name.lower() in EMBEDDED_ALIASES:
        return sample_documents(embedded_c4_texts(), tokenizer, num_sequences, sequence_length, rng)
    if name in HUB_DATASETS:
        return _hub_set(name, tokenizer, num_sequences, sequence_length, seed, rng)
    path = Path(name).expanduser()
    if path.is_file():
        return _local_file(path, tokenizer, num_sequences, sequence_length, rng)
    raise ValueError(
        f"unknown calibration dataset {name!r}: not a file and not one of {', '.join(dataset_names())}"
    )


# ---------------------------------------------------------------------------------------------
# evaluation text


def wikitext_rows(text: str) -> list[str]:
    """HF ``wikitext-2-raw-v1`` rows from the raw file text (blank lines -> "")."""
    return [line + "\n" if line.strip() else "" for line in text.split("\n")[:-1]]


def get_text_rows(name: str = "wikitext2", split: str = "test") -> list[str]:
    """Rows of an embedded text, for display and evaluation.

    ``wikitext2`` (test split: the HF rows, blank rows as ""), ``c4`` / ``embedded`` (C4
    documents), ``gsm8k`` (test questions). ``wikitext2`` with another split goes to the hub."""
    key = name.lower()
    if key in ("wikitext2", "wikitext", "wikitext-2"):
        if split == "test":
            return wikitext_rows(WIKITEXT2_TEST.read_text(encoding="utf-8"))
        return list(_load_hub(HubTextSet("wikitext", name="wikitext-2-raw-v1", split=split))["text"])
    if key in ("c4", *EMBEDDED_ALIASES):
        return embedded_c4_texts()
    if key == "gsm8k":
        return [r["question"] for r in _read_jsonl(GSM8K_TEST)]
    raise ValueError(f"unknown text {name!r}; choose wikitext2, c4 (embedded) or gsm8k")


def get_wikitext2_test(tokenizer, source: str = "embedded") -> torch.Tensor:
    """1-D LongTensor: WikiText-2 raw test, ``"\\n\\n".join(rows)``, tokenized once with the
    tokenizer's default special tokens (reference perplexity protocol).

    ``source="embedded"`` reads the shipped file; ``"hub"`` loads ``wikitext-2-raw-v1`` test."""
    if source == "embedded":
        rows = get_text_rows("wikitext2", "test")
    elif source == "hub":
        rows = list(_load_hub(HubTextSet("wikitext", name="wikitext-2-raw-v1", split="test"))["text"])
    else:
        raise ValueError(f"source must be 'embedded' or 'hub', got {source!r}")
    return torch.tensor(_encode(tokenizer, "\n\n".join(rows)), dtype=torch.long)
