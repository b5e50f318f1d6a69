"""The `fpq` command line on a tiny random Llama saved as a local folder (with the embedded tokenizer)."""
from __future__ import annotations

import json

import pytest
import torch

from fpq_core.cli import main
from fpq_core.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    model, tok = make_tiny_model("llama", with_tokenizer=True)
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_quantize_rtn_prints_reference_line_and_writes_run_dir(tiny_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc, out, err = run(["quantize", "--model_name_or_path", tiny_folder, "--format", "mxfp", "--w_bits", "4",
                        "--eval_perplexity", "--ppl_num_windows", "2", "--sequence_length", "64",
                        "--run_dir", str(run_dir), "--no_progress"], capsys)
    assert rc == 0, err
    line = [l for l in out.splitlines() if l.startswith("Wikitext-2 perplexity: ")]
    assert line and float(line[0].split(": ")[1]) > 1
    for f in ("run.json", "layers.json", "results.json", "timings.json", "environment.json"):
        assert (run_dir / f).is_file(), f
    run_meta = json.loads((run_dir / "run.json").read_text())
    assert run_meta["status"] == "done" and run_meta["config"]["w_group_size"] == 32
    layers = json.loads((run_dir / "layers.json").read_text())
    assert len(layers) == 14 and all(l["method"] == "rtn" for l in layers)
    res = json.loads((run_dir / "results.json").read_text())
    assert res["wikitext2_ppl"]["num_windows"] == 2
    # the same run directory again is refused (nothing overwritten)
    rc, _, err = run(["quantize", "--model_name_or_path", tiny_folder, "--format", "mxfp", "--w_bits", "4",
                      "--run_dir", str(run_dir), "--no_progress"], capsys)
    assert rc == 2 and "already exists" in err


def test_reference_style_invocation_gptq_and_export(tiny_folder, tmp_path, capsys):
    """`python -m fpq_core --w_bits 4 ...` (no sub-command) as model_quant.py, then `fpq export`."""
    run_dir, save = tmp_path / "run", tmp_path / "export"
    rc, out, err = run(["--model_name_or_path", tiny_folder, "--dataset_name_or_path", "embedded",
                        "--format", "nvfp", "--w_bits", "4", "--a_bits", "4", "--gptq",
                        "--transform_class", "hadamard", "--hadamard_group_size", "16", "--w_observer", "mse",
                        "--quantization_order", "activation", "--fuse_global_scale",
                        "--num_sequences", "2", "--sequence_length", "64", "--run_dir", str(run_dir),
                        "--export_quantized_model", "realquant", "--save_path", str(save), "--no_progress"], capsys)
    assert rc == 0, err
    assert json.loads((run_dir / "run.json").read_text())["method"] == "NVFP W4A4 MR-GPTQ"
    cfg = json.loads((save / "config.json").read_text())["quantization_config"]
    assert cfg["forward_dtype"] == "nvfp4" and cfg["hadamard_group_size"] == 16 and cfg["quant_method"] == "fp_quant"
    # export the finished run again, in another format, from its run directory
    save2 = tmp_path / "export2"
    rc, out, err = run(["export", str(run_dir), "--format", "pseudoquant", "--save_path", str(save2)], capsys)
    assert rc == 0, err
    from fpq_core.runtime import load_quantized
    m1, _ = load_quantized(save)
    m2, _ = load_quantized(save2)
    ids = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        torch.testing.assert_close(m1(input_ids=ids).logits, m2(input_ids=ids).logits, rtol=0, atol=0)


def test_bad_input_fails_early_with_clear_errors(tiny_folder, tmp_path, capsys):
    rc, _, err = run(["quantize", "--model_name_or_path", tiny_folder, "--format", "mxfp", "--w_bits", "4",
                      "--transform_class", "hadamard", "--run_dir", str(tmp_path / "r1"), "--no_progress"], capsys)
    assert rc == 2 and "does not divide" in err and "[16, 32, 64]" in err
    with pytest.raises(SystemExit, match="--a_bits 4"):
        main(["quantize", "--model_name_or_path", tiny_folder, "--format", "mxfp", "--w_bits", "4",
              "--export_quantized_model", "realquant", "--save_path", str(tmp_path / "x"),
              "--run_dir", str(tmp_path / "r2")])
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["quantize", "--w_bits", "4", "--format", "nvfp5"])
    rc, _, err = run(["quantize", "--model_name_or_path", str(tmp_path / "missing"), "--w_bits", "4",
                      "--format", "mxfp", "--run_dir", str(tmp_path / "r3"), "--no_progress"], capsys)
    assert rc == 2
