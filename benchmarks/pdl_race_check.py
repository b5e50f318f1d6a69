"""Does the PDL chain test catch a kernel that reads before the previous kernel has finished?

    python benchmarks/pdl_race_check.py --out DIR [--runs 20]

``tests/kernels/test_quant.py::test_pdl_chain_reads_only_what_the_previous_kernel_finished`` runs
``pdl_chain`` below: a chain of fused-quant calls launched with programmatic dependent launch (the first two with two
resident programs per SM, the second reading the first's output with another tiling), each reading what the one
before wrote, and compares the bytes with the same chain launched without PDL. This script runs
that chain ``--runs`` times (``pdl="start"``: every call lets the next one launch at once, the
widest window) for (a) the kernel as it is and (b) a copy of it whose ``griddepcontrol.wait`` is
removed, and counts
the runs whose bytes differ from the chain without PDL. (a) must be 0; (b) shows whether the chain
exposes the race at all on this GPU -- how much the test can see. Prints a table and writes
OUT/pdl_race_check.json with the card's name.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._common import device_info, quant_module_copy, table, write_json  # noqa: E402

_WAIT = '"griddepcontrol.wait; mov.u32 $0, 0;"'


def _no_wait_module():
    def edit(src: str) -> str:
        if _WAIT not in src:
            raise SystemExit("griddepcontrol.wait not found in quant.py; update _WAIT")
        return src.replace(_WAIT, '"mov.u32 $0, 0;"')
    return quant_module_copy(edit, "fpq_quant_no_wait")


def pdl_chain(rq, x, spec, t, c, pdl):
    """The chain of four calls of ``rq`` (a ``rotate_quantize``), each reading what the one before
    wrote, on x * c (a torch kernel first), launched with ``pdl``. The first two run two programs per
    SM walking all tiles: every program runs at once and leaves room on its SM, so the next kernel's
    programs can start beside it; the second reads y1 as (16384, 2048), so its programs read rows
    that other programs of the first one write. Then fake quant (NVFP4: an amax pass first) and
    packed codes. Returns every output."""
    y1 = rq(x * c, spec, t, "rotated", pdl=pdl, walk="linear", waves=2)
    y2 = rq(y1.view(16384, 2048), spec, t, "rotated", pdl=pdl, walk="linear", waves=2)
    fake = rq(y2.view(8192, 4096), spec, t, "fake", pdl=pdl)
    pk, sb, gs = rq(fake, spec, t, "packed", pdl=pdl)
    return y1, y2, fake, pk, sb, gs


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args(argv)
    from fpq_core.formats.spec import QuantSpec
    from fpq_core.kernels import quant
    from fpq_core.transforms import get_transform
    variants = {"kernel": quant.rotate_quantize, "without the wait": _no_wait_module().rotate_quantize}
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    rows = []
    for fmt in ("mxfp4", "nvfp4"):
        spec = QuantSpec.from_name(fmt)
        for n in (spec.group_size, 128):
            t = get_transform("hadamard", size=n)
            for label, rq in variants.items():
                bad = 0
                for r in range(a.runs):        # other values each run: a stale buffer holds the last run's bytes
                    c = (1.0 + r) * (-1) ** r
                    torch.cuda._sleep(20_000_000)    # the GPU busy while Python queues the chain
                    got = pdl_chain(rq, x, spec, t, c, "start")
                    ref = pdl_chain(rq, x, spec, t, c, False)
                    bad += any(not torch.equal(u.view(torch.uint8), v.view(torch.uint8)) for u, v in zip(got, ref))
                rows.append({"format": fmt, "rot": n, "variant": label, "runs": a.runs, "runs_differing": bad})
                print(f"{fmt} had{n} {label}: {bad} of {a.runs} PDL chains differ from the chain without PDL", flush=True)
    print(table(rows, ["format", "rot", "variant", "runs", "runs_differing"]))
    write_json(a.out, "pdl_race_check", {"device": device_info(), "rows": rows})


if __name__ == "__main__":
    main()
