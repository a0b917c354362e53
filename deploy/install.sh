#!/usr/bin/env bash
# Install the toolkit into a virtual environment (default ./.venv).
#   deploy/install.sh            CPU-only PyTorch (hospital servers without a GPU, CI, laptops)
#   TORCH_SPEC=torch deploy/install.sh   PyPI's default Linux wheel, i.e. the CUDA build (GPU sites)
# Nothing is downloaded at run time afterwards: no weights, no data, no telemetry.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}
cd "$(dirname "$0")/.."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: Python >= 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 3; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, so the package's "torch>=2.4" is already satisfied by the chosen build.
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$VENV/bin/python" -m pip install --quiet -e ".[${EXTRAS}]"
echo "installed into $VENV: $("$VENV/bin/site-agent" --help >/dev/null && echo site-agent, coordinator)"
