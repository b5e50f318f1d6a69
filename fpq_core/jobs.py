"""Background jobs and the run registry of the studio (no Streamlit here).

Long work (quantize, evaluate, export) never runs in a Streamlit script thread: ``submit_*``
records a job in a SQLite registry and starts (if none is running) one detached worker process
per device (``python -m fpq_core.jobs worker --device cpu``). The worker runs that device's
queued jobs one after another, so a page rerun, a refresh or a closed tab loses nothing, and
there is ONE job per device at a time while the others queue.

Data folder (``$FPQ_HOME``, default ``~/.cache/fpq-studio``)::

    studio.db          SQLite (WAL): tables runs, jobs
    runs/<run id>/     fpq_core.runs.RunDir: run.json, layers.json, results.json, state/ ...
                       (the CLI's default runs root too, so CLI runs are imported and listed)
    logs/<job id>.log  worker output
    locks/<device>.lock  held by the device's worker (fcntl), so at most one worker per device
    models/tiny-<arch>/  the tiny random test model, saved as a folder

Concurrency: every state change is one ``BEGIN IMMEDIATE`` transaction, run ids are unique
(time + random suffix) and every run has its own folder, so two browser sessions cannot
corrupt each other's runs. Cancelling is cooperative: the pipeline's ``should_stop`` reads the
job's cancel flag between blocks; finished blocks stay in ``state/`` and the run can be resumed.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["studio_home", "allowed_roots", "confine_path", "PathNotAllowed", "resolve_model_source",
           "Registry", "Job", "JOB_KINDS", "ACTIVE", "FINAL", "worker_main", "is_baseline"]

JOB_KINDS = ("quantize", "evaluate", "export")
ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")
TINY_PREFIX = "tiny"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----------------------------------------------------------------------------- folders and paths


def studio_home() -> Path:
    """The studio's data folder: ``$FPQ_HOME`` or ``~/.cache/fpq-studio``."""
    env = os.environ.get("FPQ_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fpq-studio"


class PathNotAllowed(ValueError):
    """A folder outside the allowed roots, or one spelled with '..'."""


def allowed_roots() -> list[Path]:
    """Folders the app may read models from or write exports to: the studio home, the user's
    cache (~/.cache, where Hugging Face keeps models) and ``$FPQ_ALLOWED_DIRS`` (os.pathsep list)."""
    roots = [studio_home(), Path.home() / ".cache"]
    roots += [Path(p).expanduser() for p in os.environ.get("FPQ_ALLOWED_DIRS", "").split(os.pathsep) if p.strip()]
    out = []
    for r in roots:
        r = Path(os.path.realpath(r))
        if r not in out:
            out.append(r)
    return out


def confine_path(text: str | os.PathLike, must_exist: bool = False) -> Path:
    """The resolved folder ``text`` if it lies inside an allowed root; PathNotAllowed otherwise.
    '..' components are refused outright, and symlinks are resolved before the check."""
    raw = str(text).strip()
    if not raw or "\x00" in raw:
        raise PathNotAllowed("empty or invalid folder name")
    p = Path(raw).expanduser()
    if ".." in p.parts:
        raise PathNotAllowed(f"{raw!r}: '..' is not allowed in folder names; give the full path")
    if not p.is_absolute():
        raise PathNotAllowed(f"{raw!r}: give an absolute path (or start it with ~)")
    real = Path(os.path.realpath(p))
    roots = allowed_roots()
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise PathNotAllowed(f"{real} is outside the allowed folders ({', '.join(map(str, roots))}); "
                             "add its parent to FPQ_ALLOWED_DIRS to allow it")
    if must_exist and not real.is_dir():
        raise PathNotAllowed(f"{real} is not an existing folder")
    return real


def _tiny_folder(arch: str) -> Path:
    """Save the tiny random test model (+ the SmolLM2 tokenizer) once as a folder, so jobs, the
    session loader and exports treat it like any other local model."""
    from fpq_core.models.tiny import TINY_ARCHS, make_tiny_model

    if arch not in TINY_ARCHS:
        raise ValueError(f"tiny model arch {arch!r} not in {TINY_ARCHS}")
    folder = studio_home() / "models" / f"tiny-{arch}"
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return folder
    model, tok = make_tiny_model(arch, with_tokenizer=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:6]}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race: use its folder
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_model_source(text: str | None) -> str:
    """What the engine's ``load_model`` gets: "embedded", a hub id, or a confined folder path.
    "tiny" / "tiny:<arch>" is the tiny random test model (saved as a folder under the home)."""
    t = (text or "embedded").strip()
    if t.lower() in ("embedded", "default", ""):
        return "embedded"
    if t.lower() == TINY_PREFIX or t.lower().startswith(TINY_PREFIX + ":"):
        arch = t.split(":", 1)[1] if ":" in t else "llama"
        return str(_tiny_folder(arch))
    if t.startswith(("/", "~", ".")) or os.sep in t.replace("/", "") or t.count("/") > 1:
        return str(confine_path(t, must_exist=True))
    if _HUB_ID.match(t):
        return t
    raise ValueError(f"{t!r} is neither 'embedded', a hub id (owner/name) nor an absolute folder path")


def is_baseline(config: dict) -> bool:
    return config.get("w_bits", 16) >= 16 and config.get("a_bits", 16) >= 16


# ----------------------------------------------------------------------------- registry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, run_dir TEXT UNIQUE NOT NULL, model TEXT, method TEXT, config TEXT,
  status TEXT, source TEXT, created REAL, label TEXT);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, run_id TEXT NOT NULL, device TEXT NOT NULL,
  status TEXT NOT NULL, params TEXT, created REAL, started REAL, finished REAL, pid INTEGER,
  cancel INTEGER NOT NULL DEFAULT 0, progress REAL NOT NULL DEFAULT 0, message TEXT, error TEXT,
  result TEXT, log TEXT);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(device, status, created);
"""


@dataclass
class Job:
    id: str
    kind: str
    run_id: str
    device: str
    status: str
    params: dict
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    cancel: bool
    progress: float
    message: str | None
    error: str | None
    result: dict | None
    log: str | None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> "Job":
        d = dict(r)
        d["params"] = json.loads(d["params"] or "{}")
        d["result"] = json.loads(d["result"]) if d["result"] else None
        d["cancel"] = bool(d["cancel"])
        return cls(**d)

    @property
    def seconds(self) -> float | None:
        if not self.started:
            return None
        return (self.finished or time.time()) - self.started


def new_id(prefix: str = "") -> str:
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Registry:
    """The SQLite run/job registry under ``home`` (default :func:`studio_home`)."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home) if home else studio_home()
        self.runs_root = self.home / "runs"
        for sub in ("runs", "logs", "locks"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.db_path = self.home / "studio.db"
        with self._conn() as c:
            c.executescript(_SCHEMA)

    # -- connections / transactions
    @contextlib.contextmanager
    def _conn(self):
        c = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA busy_timeout=30000")
        try:
            yield c
        finally:
            c.close()

    @contextlib.contextmanager
    def _tx(self):
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # -- submit
    def create_run(self, model: str, config: dict, *, label: str = "", dataset: str = "embedded",
                   calibration: dict | None = None, device: str = "cpu") -> tuple[str, "Any"]:
        """A new run folder (RunDir, run.json with status 'queued') and its registry row."""
        from fpq_core.config import QuantConfig
        from fpq_core.runs import RunDir

        cfg = QuantConfig.from_dict(config).normalized()
        method = "bf16 baseline" if is_baseline(config) else cfg.method_name
        rid = new_id()
        run = RunDir.create(self.runs_root / rid)
        run.write("run", {"model": model, "dataset": dataset, "method": method, "config": cfg.to_dict(),
                          "calibration": calibration or {}, "status": "queued", "device": device,
                          "dtype": "float32", "label": label, "source": "studio",
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        with self._tx() as c:
            c.execute("INSERT INTO runs(id, run_dir, model, method, config, status, source, created, label) "
                      "VALUES (?,?,?,?,?,?,?,?,?)", (rid, str(run.path), model, method, json.dumps(cfg.to_dict()),
                                                      "queued", "studio", time.time(), label))
        return rid, run

    def submit(self, kind: str, run_id: str, params: dict, device: str = "cpu", start_worker: bool = True) -> str:
        """Queue a job for ``run_id`` on ``device``; starts the device's worker unless one runs."""
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}: choose one of {JOB_KINDS}")
        if self.run(run_id) is None:
            raise KeyError(f"no run {run_id!r} in the registry")
        jid = new_id("job-")
        log = str(self.home / "logs" / f"{jid}.log")
        with self._tx() as c:
            c.execute("INSERT INTO jobs(id, kind, run_id, device, status, params, created, log) VALUES (?,?,?,?,?,?,?,?)",
                      (jid, kind, run_id, device, "queued", json.dumps(params), time.time(), log))
        if start_worker:
            self.ensure_worker(device)
        return jid

    def submit_quantize(self, model: str, config: dict, *, device: str = "cpu", dataset: str = "embedded",
                        num_sequences: int = 16, sequence_length: int = 256, seed: int = 42, label: str = "",
                        start_worker: bool = True) -> tuple[str, str]:
        """-> (run id, job id). ``model`` as :func:`resolve_model_source` returns it."""
        calib = {"dataset": dataset, "num_sequences": int(num_sequences), "sequence_length": int(sequence_length),
                 "seed": int(seed)}
        rid, _ = self.create_run(model, config, label=label, dataset=dataset, calibration=calib, device=device)
        jid = self.submit("quantize", rid, {"resume": False}, device, start_worker)
        return rid, jid

    def resume(self, run_id: str, device: str | None = None, start_worker: bool = True) -> str:
        run = self.run(run_id)
        if run is None:
            raise KeyError(f"no run {run_id!r}")
        if self.active_jobs(run_id=run_id):
            raise ValueError(f"run {run_id} already has a queued or running job")
        return self.submit("quantize", run_id, {"resume": True}, device or "cpu", start_worker)

    # -- state changes
    def claim_next(self, device: str, pid: int | None = None) -> Job | None:
        """Atomically take the oldest queued job of ``device`` (status -> running)."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM jobs WHERE device=? AND status='running'", (device,)).fetchone():
                return None  # one job per device
            r = c.execute("SELECT * FROM jobs WHERE device=? AND status='queued' ORDER BY created, id LIMIT 1",
                          (device,)).fetchone()
            if r is None:
                return None
            c.execute("UPDATE jobs SET status='running', started=?, pid=? WHERE id=?",
                      (time.time(), pid or os.getpid(), r["id"]))
        return self.job(r["id"])

    def cancel(self, job_id: str) -> str:
        """Queued jobs are cancelled at once; running ones get the cancel flag. -> new status."""
        with self._tx() as c:
            r = c.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
            if r is None:
                raise KeyError(f"no job {job_id!r}")
            if r["status"] == "queued":
                c.execute("UPDATE jobs SET status='cancelled', finished=?, message='cancelled before start' "
                          "WHERE id=?", (time.time(), job_id))
                return "cancelled"
            if r["status"] == "running":
                c.execute("UPDATE jobs SET cancel=1, message='cancelling...' WHERE id=?", (job_id,))
            return r["status"]

    def cancel_requested(self, job_id: str) -> bool:
        with self._conn() as c:
            r = c.execute("SELECT cancel FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(r and r["cancel"])

    def set_progress(self, job_id: str, progress: float, message: str = "") -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET progress=?, message=? WHERE id=?", (float(progress), message, job_id))

    def finish(self, job_id: str, status: str, *, error: str | None = None, result: dict | None = None,
               message: str | None = None) -> None:
        if status not in FINAL:
            raise ValueError(f"final status must be one of {FINAL}")
        with self._tx() as c:
            c.execute("UPDATE jobs SET status=?, finished=?, error=?, result=?, message=COALESCE(?, message), "
                      "progress=CASE WHEN ?='done' THEN 1 ELSE progress END WHERE id=?",
                      (status, time.time(), error, json.dumps(result, default=str) if result is not None else None,
                       message, status, job_id))

    def set_run_status(self, run_id: str, status: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET status=? WHERE id=?", (status, run_id))

    def reap(self) -> int:
        """Mark running jobs whose worker process died as failed (and their runs). -> count."""
        n = 0
        for j in self.jobs(status="running"):
            if not _pid_alive(j.pid):
                with self._tx() as c:
                    c.execute("UPDATE jobs SET status='failed', finished=?, error=? WHERE id=? AND status='running'",
                              (time.time(), "the worker process died (killed, or out of memory)", j.id))
                if j.kind == "quantize":
                    self.set_run_status(j.run_id, "failed")
                n += 1
        return n

    # -- queries
    def job(self, job_id: str) -> Job | None:
        with self._conn() as c:
            r = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(r) if r else None

    def jobs(self, *, run_id: str | None = None, status: str | None = None, device: str | None = None,
             limit: int = 200) -> list[Job]:
        q, args = "SELECT * FROM jobs WHERE 1=1", []
        for col, val in (("run_id", run_id), ("status", status), ("device", device)):
            if val is not None:
                q += f" AND {col}=?"
                args.append(val)
        q += " ORDER BY created DESC, id DESC LIMIT ?"
        args.append(int(limit))
        with self._conn() as c:
            return [Job.from_row(r) for r in c.execute(q, args).fetchall()]

    def active_jobs(self, run_id: str | None = None) -> list[Job]:
        return [j for j in self.jobs(run_id=run_id) if j.status in ACTIVE]

    def run(self, run_id: str) -> dict | None:
        with self._conn() as c:
            r = c.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._run_dict(r) if r else None

    def runs(self, import_cli: bool = True) -> list[dict]:
        """Every registered run, newest first, with run.json / results.json merged in."""
        if import_cli:
            self.import_runs()
        with self._conn() as c:
            rows = c.execute("SELECT * FROM runs ORDER BY created DESC, id DESC").fetchall()
        return [self._run_dict(r) for r in rows]

    def _run_dict(self, r: sqlite3.Row) -> dict:
        from fpq_core.runs import RunDir

        d = dict(r)
        d["config"] = json.loads(d["config"] or "{}")
        run = RunDir(d["run_dir"])
        meta = run.read("run", {}) or {}
        d["results"] = run.read("results", {}) or {}
        d["timings"] = run.read("timings", {}) or {}
        d["layers_path"] = str(run.path / "layers.json")
        d["file_status"] = meta.get("status")
        return d

    def import_runs(self, root: str | os.PathLike | None = None) -> int:
        """Register run folders (e.g. written by ``fpq quantize``) found under ``root`` (default
        the registry's runs root). -> number of runs added."""
        from fpq_core.runs import RunDir

        root = Path(root) if root else self.runs_root
        if not root.is_dir():
            return 0
        with self._conn() as c:
            known = {r[0] for r in c.execute("SELECT run_dir FROM runs").fetchall()}
        added = 0
        for p in sorted(root.iterdir()):
            if str(p) in known or not (p / "run.json").exists():
                continue
            meta = RunDir(p).read("run", {}) or {}
            cfg = meta.get("config") or {}
            with self._tx() as c:
                c.execute("INSERT OR IGNORE INTO runs(id, run_dir, model, method, config, status, source, created, label) "
                          "VALUES (?,?,?,?,?,?,?,?,?)", (f"cli-{p.name}", str(p), meta.get("model"),
                                                         meta.get("method"), json.dumps(cfg), meta.get("status"),
                                                         "cli", p.stat().st_mtime, meta.get("label", "")))
            added += 1
        return added

    def layers(self, run_id: str) -> list[dict]:
        from fpq_core.runs import RunDir

        r = self.run(run_id)
        return (RunDir(r["run_dir"]).read("layers", []) or []) if r else []

    # -- workers
    def ensure_worker(self, device: str) -> subprocess.Popen | None:
        """Start a detached worker for ``device`` unless its lock is held (a worker is running)."""
        lock = self.home / "locks" / f"{_safe(device)}.lock"
        if _lock_held(lock):
            return None
        log = open(self.home / "logs" / f"worker-{_safe(device)}.log", "ab")
        env = {**os.environ, "FPQ_HOME": str(self.home)}
        try:
            return subprocess.Popen([sys.executable, "-m", "fpq_core.jobs", "worker", "--device", device,
                                     "--home", str(self.home)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    cwd=str(Path(__file__).resolve().parents[1]))
        finally:
            log.close()

    def wait(self, job_id: str, timeout: float = 300.0, poll: float = 0.2) -> Job:
        """Block until the job is final (tests, CLI); TimeoutError otherwise."""
        t_end = time.time() + timeout
        while time.time() < t_end:
            self.reap()
            j = self.job(job_id)
            if j is not None and j.status in FINAL:
                return j
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f}s")


def _safe(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", device)


def _lock_held(path: Path) -> bool:
    import fcntl

    path.touch(exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


# ----------------------------------------------------------------------------- job bodies


def _load_base(model_source: str, device: str):
    from fpq_core.models.loading import load_model

    return load_model(model_source, device=device)


def run_quantize_job(reg: Registry, job: Job) -> dict:
    from fpq_core.config import QuantConfig
    from fpq_core.pipeline import QuantizationCancelled, RunOptions, quantize_model
    from fpq_core.runs import RunDir, environment_info

    r = reg.run(job.run_id)
    run = RunDir(r["run_dir"])
    meta = run.read("run", {})
    cfg = QuantConfig.from_dict(meta["config"])
    reg.set_run_status(job.run_id, "running")
    run.update("run", status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), device=job.device)
    run.write("environment", environment_info())
    t0 = time.perf_counter()
    model, tok = _load_base(meta["model"], "cpu")
    t_load = time.perf_counter() - t0
    if is_baseline(meta["config"]):
        run.write("timings", {"load_s": t_load, "calibration_data_s": 0.0, "quantize_s": 0.0})
        run.update("run", status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return {"baseline": True}
    aspec = cfg.normalized().act_spec()
    need_data = cfg.gptq or (aspec is not None and aspec.uses_global_scale)
    batches, t_data = None, 0.0
    if need_data:
        from fpq_core.data import get_calibration_data

        cal = meta.get("calibration") or {}
        reg.set_progress(job.id, 0.0, "sampling calibration data")
        t0 = time.perf_counter()
        batches = get_calibration_data(cal.get("dataset", "embedded"), tok, num_sequences=cal.get("num_sequences", 16),
                                       sequence_length=cal.get("sequence_length", 256), seed=cal.get("seed", 42))
        t_data = time.perf_counter() - t0
    layers: list[dict] = list(run.read("layers", []) or []) if job.params.get("resume") else []

    def on_layer(rep):
        layers.append(rep.to_dict())
        run.write("layers", layers)

    def on_block(i, n):
        reg.set_progress(job.id, (i + 1) / n, f"block {i + 1}/{n}")

    try:
        res = quantize_model(model, cfg, batches, options=RunOptions(device=job.device, state_dir=str(run.state_dir)),
                             on_layer=on_layer, on_block=on_block, should_stop=lambda: reg.cancel_requested(job.id))
    except QuantizationCancelled:
        run.update("run", status="cancelled")
        raise
    run.write("layers", [l.to_dict() for l in res.layers])
    run.write("timings", {"load_s": t_load, "calibration_data_s": t_data, "quantize_s": res.seconds,
                          "resumed_from_block": res.resumed_from_block})
    run.update("run", status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return {"layers": len(res.layers), "seconds": res.seconds}


def load_run_for_eval(run_dir: str, device: str = "cpu"):
    """(model, tokenizer) of a run: the base model for a baseline run, else the quantized one."""
    from fpq_core.runs import RunDir
    from fpq_core.session import load_run_model

    meta = RunDir(run_dir).read("run", {}) or {}
    if is_baseline(meta.get("config") or {}):
        return _load_base(meta["model"], device)
    model, tok, _ = load_run_model(run_dir, device=device)
    return model, tok


def run_evaluate_job(reg: Registry, job: Job) -> dict:
    from fpq_core.runs import RunDir

    p = job.params
    run = RunDir(reg.run(job.run_id)["run_dir"])
    reg.set_progress(job.id, 0.05, "loading the run's model")
    model, tok = load_run_for_eval(str(run.path), job.device)
    out = {}
    timings = run.read("timings", {}) or {}
    if p.get("ppl_windows"):
        from fpq_core.evaluate import wikitext2_perplexity

        seq = int(p.get("sequence_length", 512))
        t0 = time.perf_counter()

        def prog(i, n):
            reg.set_progress(job.id, 0.1 + 0.5 * i / max(n, 1), f"perplexity window {i}/{n}")
            if reg.cancel_requested(job.id):
                raise _Cancelled("cancelled during perplexity")

        ppl = wikitext2_perplexity(model, tok, sequence_length=seq, num_windows=int(p["ppl_windows"]), progress=prog)
        timings["perplexity_s"] = time.perf_counter() - t0
        out["wikitext2_ppl"] = {"ppl": ppl.ppl, "nll": ppl.nll, "num_windows": ppl.num_windows,
                                "num_tokens": ppl.num_tokens, "sequence_length": seq}
        run.add_result("wikitext2_ppl", out["wikitext2_ppl"])
    if p.get("tasks"):
        if reg.cancel_requested(job.id):
            raise _Cancelled("cancelled before lm-eval")
        from fpq_core.evaluate import run_lm_eval

        reg.set_progress(job.id, 0.6, f"lm-eval {', '.join(p['tasks'])}")
        t0 = time.perf_counter()
        scores = run_lm_eval(model, tok, p["tasks"], limit=p.get("limit"), batch_size=p.get("batch_size", "auto")).scores
        timings["lm_eval_s"] = time.perf_counter() - t0
        merged = {**(run.read("results", {}) or {}).get("lm_eval", {}), **scores}
        run.add_result("lm_eval", merged)
        out["lm_eval"] = scores
    run.write("timings", timings)
    return out


def run_export_job(reg: Registry, job: Job) -> dict:
    from fpq_core.export import export_model, export_run_archive
    from fpq_core.runs import RunDir
    from fpq_core.session import load_run_model

    p = job.params
    run = RunDir(reg.run(job.run_id)["run_dir"])
    kind = p.get("kind", "realquant")
    dest = Path(p["dest"]) if p.get("dest") else run.path / "exports" / kind
    reg.set_progress(job.id, 0.1, "loading the run's model")
    model, tok, _ = load_run_model(str(run.path), device=job.device)
    reg.set_progress(job.id, 0.4, f"writing {kind} to {dest}")
    rep = export_model(model, tok, dest, kind=kind, overwrite=bool(p.get("overwrite", True)))
    info = rep.to_dict()
    run.add_result(f"export_{kind}", info)
    out = {"export": info, "path": str(dest)}
    if p.get("archive", True):
        reg.set_progress(job.id, 0.9, "zipping")
        out["zip"] = str(export_run_archive(dest))
    return out


class _Cancelled(Exception):
    pass


_BODIES = {"quantize": run_quantize_job, "evaluate": run_evaluate_job, "export": run_export_job}


def execute(reg: Registry, job: Job) -> None:
    """Run one claimed job to a final status (never raises for the job's own errors)."""
    from fpq_core.pipeline import QuantizationCancelled

    try:
        result = _BODIES[job.kind](reg, job)
    except (QuantizationCancelled, _Cancelled) as e:
        reg.finish(job.id, "cancelled", message=str(e))
        if job.kind == "quantize":
            reg.set_run_status(job.run_id, "cancelled")
    except BaseException as e:  # noqa: BLE001 - recorded on the job, worker keeps serving
        reg.finish(job.id, "failed", error=f"{type(e).__name__}: {e}", message=traceback.format_exc()[-2000:])
        if job.kind == "quantize":
            reg.set_run_status(job.run_id, "failed")
            with contextlib.suppress(Exception):
                from fpq_core.runs import RunDir

                RunDir(reg.run(job.run_id)["run_dir"]).update("run", status="failed", error=str(e))
        if isinstance(e, KeyboardInterrupt):
            raise
    else:
        reg.finish(job.id, "done", result=result, message="done")
        if job.kind == "quantize":
            reg.set_run_status(job.run_id, "done")


def worker_main(device: str = "cpu", home: str | None = None) -> int:
    """Serve ``device``'s queue until it is empty. Holds the device lock, so a second worker for
    the same device exits at once; after releasing, re-checks the queue (no job is orphaned)."""
    import fcntl

    reg = Registry(home)
    lock_path = reg.home / "locks" / f"{_safe(device)}.lock"
    while True:
        with open(lock_path, "a") as lf:
            try:
                fcntl.flock(lf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another worker serves this device and will re-check the queue
            reg.reap()
            while True:
                job = reg.claim_next(device, os.getpid())
                if job is None:
                    break
                print(f"[{time.strftime('%H:%M:%S')}] {job.kind} {job.id} (run {job.run_id})", flush=True)
                execute(reg, job)
            fcntl.flock(lf, fcntl.LOCK_UN)
        if not reg.jobs(status="queued", device=device, limit=1):
            return 0


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m fpq_core.jobs")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="serve one device's job queue until it is empty")
    w.add_argument("--device", default="cpu")
    w.add_argument("--home", default=None)
    a = p.parse_args(argv)
    return worker_main(a.device, a.home)


if __name__ == "__main__":
    raise SystemExit(_main())
