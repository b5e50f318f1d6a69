"""Tests for fpq_core.evaluate: perplexity protocol, lm-eval wiring, offline tasks, vLLM command."""
from __future__ import annotations

import math
import shlex

import pytest
import torch
import torch.nn.functional as F

from fpq_core import evaluate as ev


# ----------------------------------------------------------------------------------------- fixtures
def _tiny_llama(vocab_size=97, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny_llama():
    return _tiny_llama()


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A small byte-level BPE tokenizer built in memory (no hub access)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Question: how many eggs? Answer: 18 #### 18"] * 10, trainer)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=eos)


@pytest.fixture(scope="module")
def tok_llama(tiny_tokenizer):
    """Tiny random Llama whose vocabulary matches tiny_tokenizer (for lm-eval runs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = tiny_tokenizer
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return LlamaForCausalLM(cfg).eval()


def _manual_windows_nll(model, ids, L, n):
    """Hand reference: per-window CE over L-1 predicted tokens, then token-weighted mean."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(n):
            x = ids[w * L:(w + 1) * L].unsqueeze(0)  # (1, L)
            logp = torch.log_softmax(model(x).logits[0].double(), -1)  # (L, V)
            # token t+1 is predicted from position t; token 0 is never predicted
            total += -sum(logp[t, x[0, t + 1]].item() for t in range(L - 1))
            count += L - 1
    return total / count, count


# ---------------------------------------------------------------------------------------- perplexity
def test_perplexity_matches_hand_reference(tiny_llama):
    g = torch.Generator().manual_seed(1)
    L = 16
    ids = torch.randint(0, 97, (5 * L + 7,), generator=g)  # 5 full windows + remainder of 7
    res = ev.perplexity(tiny_llama, ids, sequence_length=L)
    nll, count = _manual_windows_nll(tiny_llama, ids, L, 5)
    assert res.num_windows == 5  # remainder dropped
    assert res.num_tokens == count == 5 * (L - 1)
    assert res.nll == pytest.approx(nll, rel=1e-5)
    assert res.ppl == pytest.approx(math.exp(nll), rel=1e-5)
    assert res.seconds >= 0


def test_perplexity_remainder_and_windows_limit(tiny_llama):
    g = torch.Generator().manual_seed(2)
    L = 12
    ids = torch.randint(0, 97, (4 * L + 11,), generator=g)
    full = ev.perplexity(tiny_llama, ids, sequence_length=L)
    # appending garbage shorter than a window changes nothing
    assert ev.perplexity(tiny_llama, ids[: 4 * L], sequence_length=L).nll == pytest.approx(full.nll, rel=1e-6)
    lim = ev.perplexity(tiny_llama, ids, sequence_length=L, num_windows=2)
    nll2, _ = _manual_windows_nll(tiny_llama, ids, L, 2)
    assert lim.num_windows == 2 and lim.num_tokens == 2 * (L - 1)
    assert lim.nll == pytest.approx(nll2, rel=1e-5)
    # more windows requested than available: all windows
    assert ev.perplexity(tiny_llama, ids, sequence_length=L, num_windows=99).num_windows == 4


def test_perplexity_token_weighting_and_batching(tiny_llama):
    """Mean over tokens == mean of per-window means (equal counts); batching gives the same result."""
    g = torch.Generator().manual_seed(3)
    L = 10
    ids = torch.randint(0, 97, (3 * L,), generator=g)
    per_window = [ev.perplexity(tiny_llama, ids[w * L:(w + 1) * L], sequence_length=L).nll for w in range(3)]
    all3 = ev.perplexity(tiny_llama, ids, sequence_length=L, batch_size=2)
    assert all3.nll == pytest.approx(sum(per_window) / 3, rel=1e-5)
    calls = []
    ev.perplexity(tiny_llama, ids, sequence_length=L, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 3), (3, 3)]


class _Uniform(torch.nn.Module):
    """Predicts every token with equal probability (all-zero logits)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + 0 * self.dummy)


def test_uniform_model_perplexity_is_vocab_size():
    ids = torch.randint(0, 500, (1000,))
    res = ev.perplexity(_Uniform(500), ids, sequence_length=64)
    assert res.ppl == pytest.approx(500, rel=1e-4)
    assert res.num_windows == 15


def test_perplexity_errors_and_restores_mode(tiny_llama):
    with pytest.raises(ValueError, match="fewer than one window"):
        ev.perplexity(tiny_llama, torch.arange(10), sequence_length=16)
    with pytest.raises(ValueError, match="1-D"):
        ev.perplexity(tiny_llama, torch.arange(32).view(1, 32), sequence_length=16)
    with pytest.raises(TypeError, match="integer"):
        ev.perplexity(tiny_llama, torch.rand(32), sequence_length=16)
    with pytest.raises(ValueError, match="num_windows"):
        ev.perplexity(tiny_llama, torch.arange(32), sequence_length=16, num_windows=0)
    tiny_llama.train()
    ev.perplexity(tiny_llama, torch.arange(32), sequence_length=16)
    assert tiny_llama.training
    tiny_llama.eval()


def test_perplexity_runs_in_model_dtype():
    m = _tiny_llama(seed=4).to(torch.bfloat16)
    ids = torch.randint(0, 97, (40,))
    res = ev.perplexity(m, ids, sequence_length=20)
    ref = ev.perplexity(m.float(), ids, sequence_length=20)
    assert res.nll == pytest.approx(ref.nll, rel=5e-2)


def test_wikitext2_perplexity_uses_embedded_text(tok_llama, tiny_tokenizer):
    data = pytest.importorskip("fpq_core.data")
    ids = data.get_wikitext2_test(tiny_tokenizer)
    res = ev.wikitext2_perplexity(tok_llama, tiny_tokenizer, sequence_length=32, num_windows=2)
    direct = ev.perplexity(tok_llama, ids, sequence_length=32, num_windows=2)
    assert res.num_windows == 2 and res.nll == pytest.approx(direct.nll, rel=1e-6)


# ------------------------------------------------------------------------------------------- lm-eval
def test_unknown_task_raises_before_evaluation(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="hellaswagg") as e:
        ev.run_lm_eval(tiny_llama, tiny_tokenizer, ["hellaswagg", "gsm8k_local"], limit=1)
    assert "hellaswag" in str(e.value).split("did you mean")[1]  # close match offered
    assert "gsm8k_local" not in str(e.value)  # known tasks are not reported


def test_openllm_preset_tasks_exist():
    # every task the reference's OpenLLM preset names is known to the installed lm-eval
    assert ev.check_tasks(list(ev.OPENLLM_PRESET)) == list(ev.OPENLLM_PRESET)


def test_openllm_preset_groups_settings(monkeypatch):
    calls = []

    def fake(model, tok, tasks, **kw):
        calls.append((list(tasks), kw["num_fewshot"], kw["apply_chat_template"], kw["fewshot_as_multiturn"]))
        return ev.LmEvalResult(scores={t: {"acc": 0.5} for t in tasks}, raw={})

    monkeypatch.setattr(ev, "run_lm_eval", fake)
    res = ev.run_preset(None, None, "openllm", limit=3)
    assert sorted(calls) == sorted([
        (["winogrande"], 5, False, False), (["hellaswag"], 10, False, False),
        (["gsm8k_llama", "mmlu_cot_llama"], None, True, True),
    ])
    assert set(res.scores) == set(ev.OPENLLM_PRESET)


def test_include_path_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="include_path"):
        ev.check_tasks(["gsm8k_local"], include_path=tmp_path / "nope")


def test_gsm8k_local_offline_end_to_end(tok_llama, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = ev.run_lm_eval(tok_llama, tiny_tokenizer, ["gsm8k_local"], limit=2, batch_size=1, gen_kwargs={"max_gen_toks": 8})
    scores = res.scores["gsm8k_local"]
    assert "exact_match,strict-match" in scores and "exact_match,flexible-extract" in scores
    assert 0.0 <= scores["exact_match,strict-match"] <= 1.0
    assert res.raw["results"]["gsm8k_local"]
    assert res.raw["n-samples"]["gsm8k_local"]["effective"] == 2


def test_user_include_path_local_json_task(tmp_path, tok_llama, tiny_tokenizer, monkeypatch):
    """The documented recipe: a user YAML with dataset_path: json and an absolute data_files path."""
    import json

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"q": f"Is {i} even?", "label": i % 2}) + "\n" for i in range(4)))
    (tmp_path / "my_mc.yaml").write_text(
        "task: my_local_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        "doc_to_text: \"{{q}} Answer:\"\n"
        "doc_to_choice: [\"yes\", \"no\"]\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    assert "my_local_mc" in ev.get_task_manager(tmp_path, include_defaults=False).all_tasks
    res = ev.run_lm_eval(tok_llama, tiny_tokenizer, ["my_local_mc"], include_path=tmp_path, limit=2, batch_size=2)
    assert 0.0 <= res.scores["my_local_mc"]["acc"] <= 1.0


# ---------------------------------------------------------------------------------------------- vLLM
def test_vllm_eval_command():
    cmd = ev.vllm_eval_command("/ckpt/my model", ["gsm8k_llama", "mmlu_cot_llama"], apply_chat_template=True,
                               fewshot_as_multiturn=True)
    argv = shlex.split(cmd)
    assert argv[:3] == ["lm_eval", "--model", "vllm"]
    assert argv[argv.index("--model_args") + 1] == "pretrained=/ckpt/my model,max_model_len=4096,enforce_eager=True"
    assert argv[argv.index("--tasks") + 1] == "gsm8k_llama,mmlu_cot_llama"
    assert "--apply_chat_template" in argv and "--fewshot_as_multiturn" in argv
    assert "--num_fewshot" not in argv
    cmd5 = shlex.split(ev.vllm_eval_command("d", "winogrande", num_fewshot=5, batch_size=8))
    assert cmd5[cmd5.index("--num_fewshot") + 1] == "5" and cmd5[cmd5.index("--batch_size") + 1] == "8"


# ---------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_smollm2_wikitext2_first10_windows(request):
    # addopts does not deselect slow tests, so this one only runs when asked for (-m slow or FPQ_RUN_SLOW=1)
    import os

    if "slow" not in (request.config.getoption("-m") or "") and not os.environ.get("FPQ_RUN_SLOW"):
        pytest.skip("slow: run with -m slow (or FPQ_RUN_SLOW=1)")
    loading = pytest.importorskip("fpq_core.models.loading")
    pytest.importorskip("fpq_core.data")
    model, tokenizer = loading.load_model("embedded", dtype=torch.float32)  # bf16 weights, fp32 compute
    res = ev.wikitext2_perplexity(model, tokenizer, sequence_length=2048, num_windows=10)
    print(f"SmolLM2-135M WikiText-2 first 10 windows: ppl={res.ppl:.3f} ({res.seconds:.0f} s)")
    assert res.num_windows == 10
    assert res.ppl == pytest.approx(19.9, abs=0.3)
