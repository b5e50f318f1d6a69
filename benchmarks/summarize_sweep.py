"""Print a sweep_quant_kernel.py JSON as one line per distinct configuration with all its runs.

    python benchmarks/summarize_sweep.py benchmarks/results/sweep_quant_kernel_TAG.json [...]

Each line: (case, format, rotation, walk, stages, waves, split_neg, gen_popc, pdl, register cap, tail,
registers, spills, shared memory) and the per-cent-of-copy of every run of that configuration, in run order (a
configuration that failed shows its error); configurations whose bytes differ from the default
launch are listed first as DIFF.
"""
from __future__ import annotations

import collections
import json
import sys


def summarize(path: str) -> list[str]:
    d = json.load(open(path))
    out = [f"== {path.split('/')[-1]}: {d['device'].get('gpu')}, copy {d['copy_GBps']:.0f} GB/s"]
    runs: dict = collections.defaultdict(list)
    for r in d["rows"]:
        key = tuple(r.get(k) for k in ("case", "fmt", "rot", "walk", "stages", "waves", "split_neg", "gen_popc", "pdl", "maxnreg", "tail",
                                       "n_regs", "n_spills", "shared"))
        runs[key].append(r["error"][:60] if "error" in r else round(r.get("pct_copy", float("nan")), 1))
        if r.get("equal_to_default") is False:
            out.append(f"DIFF {key}")
    out += [f"{k} {v}" for k, v in runs.items()]
    return out


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print("\n".join(summarize(p)))
