"""Run registry, job queue (one job per device), cancel/resume, concurrency, path confinement."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from fpq_core import jobs as J
from fpq_core.config import QuantConfig

RTN = QuantConfig.preset("rtn", fmt="mxfp", w_bits=4, a_bits=16).to_dict()
GPTQ = QuantConfig.preset("gptq", fmt="mxfp", w_bits=4, a_bits=16).to_dict()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FPQ_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FPQ_ALLOWED_DIRS", raising=False)
    return tmp_path / "home"


@pytest.fixture()
def reg(home):
    return J.Registry()


@pytest.fixture()
def tiny(home):
    return J.resolve_model_source("tiny")


# ----------------------------------------------------------------------------- paths


def test_confine_path_refuses_traversal_and_outside(home, tmp_path, monkeypatch):
    inside = home / "models" / "m"
    inside.mkdir(parents=True)
    assert J.confine_path(str(inside)) == Path(os.path.realpath(inside))
    for bad in (f"{home}/../../etc", "/etc", "~/../../etc/passwd", "relative/dir", "", "/tmp/\x00x"):
        with pytest.raises(J.PathNotAllowed):
            J.confine_path(bad)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(J.PathNotAllowed):
        J.confine_path(str(other))
    (home / "escape").symlink_to(other)  # a symlink inside a root pointing outside is refused
    with pytest.raises(J.PathNotAllowed):
        J.confine_path(str(home / "escape"))
    monkeypatch.setenv("FPQ_ALLOWED_DIRS", str(other))
    assert J.confine_path(str(other)) == Path(os.path.realpath(other))
    with pytest.raises(J.PathNotAllowed):
        J.confine_path(str(home / "missing"), must_exist=True)


def test_resolve_model_source(home):
    assert J.resolve_model_source("embedded") == "embedded"
    assert J.resolve_model_source("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(J.PathNotAllowed):
        J.resolve_model_source("/etc")
    with pytest.raises(ValueError):
        J.resolve_model_source("not a model")
    tiny = Path(J.resolve_model_source("tiny"))
    assert (tiny / "config.json").exists() and tiny.is_relative_to(home)


# ----------------------------------------------------------------------------- queue


def test_one_job_per_device_and_fifo(reg, tiny):
    r1, j1 = reg.submit_quantize(tiny, RTN, start_worker=False)
    r2, j2 = reg.submit_quantize(tiny, RTN, start_worker=False)
    _, j3 = reg.submit_quantize(tiny, RTN, device="cuda:0", start_worker=False)
    assert r1 != r2 and reg.run(r1)["run_dir"] != reg.run(r2)["run_dir"]
    a = reg.claim_next("cpu")
    assert a.id == j1 and a.status == "running"
    assert reg.claim_next("cpu") is None            # cpu busy: j2 waits
    assert reg.claim_next("cuda:0").id == j3         # another device runs at the same time
    reg.finish(j1, "done")
    assert reg.claim_next("cpu").id == j2


def test_cancel_queued_and_running(reg, tiny):
    _, j1 = reg.submit_quantize(tiny, RTN, start_worker=False)
    _, j2 = reg.submit_quantize(tiny, RTN, start_worker=False)
    assert reg.cancel(j2) == "cancelled"
    assert reg.job(j2).status == "cancelled"
    reg.claim_next("cpu")
    assert reg.cancel(j1) == "running" and reg.cancel_requested(j1)
    assert reg.claim_next("cpu") is None


def test_cancel_then_resume_in_process(reg, tiny):
    rid, jid = reg.submit_quantize(tiny, RTN, start_worker=False)
    job = reg.claim_next("cpu")
    reg.cancel(jid)
    J.execute(reg, job)                              # should_stop fires before block 0
    assert reg.job(jid).status == "cancelled" and reg.run(rid)["status"] == "cancelled"
    j2 = reg.resume(rid, start_worker=False)
    J.execute(reg, reg.claim_next("cpu"))
    assert reg.job(j2).status == "done", reg.job(j2).error
    run = reg.run(rid)
    assert run["status"] == "done" and run["file_status"] == "done"
    assert len(reg.layers(rid)) == 14                # 2 blocks x 7 Linears


def test_reap_dead_worker(reg, tiny):
    rid, jid = reg.submit_quantize(tiny, RTN, start_worker=False)
    reg.claim_next("cpu", pid=2**22 + 12345)         # a pid that is not running
    assert reg.reap() == 1
    assert reg.job(jid).status == "failed" and reg.run(rid)["status"] == "failed"


def test_failed_job_is_recorded(reg, tiny):
    bad = dict(RTN, transform_class="hadamard", hadamard_group_size=48)   # not a power of two
    rid, jid = reg.submit_quantize(tiny, bad, start_worker=False)
    J.execute(reg, reg.claim_next("cpu"))
    j = reg.job(jid)
    assert j.status == "failed" and j.error


def test_import_cli_runs(reg):
    d = reg.runs_root / "20250101-000000-cli"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"model": "embedded", "method": "MXFP W4A4 RTN", "config": RTN,
                                            "status": "done"}))
    assert reg.import_runs() == 1 and reg.import_runs() == 0
    runs = reg.runs()
    assert [r["source"] for r in runs] == ["cli"] and runs[0]["status"] == "done"


def _create_runs(home: str, n: int, q) -> None:
    os.environ["FPQ_HOME"] = home
    reg = J.Registry(home)
    q.put([reg.create_run("embedded", RTN)[0] for _ in range(n)])


def test_concurrent_sessions_do_not_collide(reg, home):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_create_runs, args=(str(home), 5, q)) for _ in range(3)]
    for p in procs:
        p.start()
    ids = sum((q.get(timeout=120) for _ in procs), [])
    for p in procs:
        p.join(60)
    assert len(ids) == len(set(ids)) == 15
    runs = reg.runs(import_cli=False)
    assert len(runs) == 15 and len({r["run_dir"] for r in runs}) == 15
    assert all(Path(r["run_dir"], "run.json").exists() for r in runs)


def test_worker_process_runs_queue_and_evaluates(reg, tiny):
    """Real detached worker: two queued jobs on the tiny model, then a perplexity job."""
    rid, j1 = reg.submit_quantize(tiny, GPTQ, num_sequences=2, sequence_length=64)
    _, j2 = reg.submit_quantize(tiny, RTN)
    for j in (j1, j2):
        job = reg.wait(j, timeout=180)
        assert job.status == "done", (job.error, job.message)
    a, b = reg.job(j1), reg.job(j2)
    assert a.finished <= b.started + 1e-3            # ran one after the other
    layers = reg.layers(rid)
    assert len(layers) == 14 and all(l["method"] == "gptq" for l in layers)
    je = reg.submit("evaluate", rid, {"ppl_windows": 2, "sequence_length": 64})
    job = reg.wait(je, timeout=180)
    assert job.status == "done", job.error
    assert reg.run(rid)["results"]["wikitext2_ppl"]["ppl"] > 1
