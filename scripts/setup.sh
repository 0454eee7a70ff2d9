#!/usr/bin/env bash
# Create .venv at the repo root with the pinned stack and this SDK installed (editable).
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  # TFLite Support's metadata schema module; --no-deps because its runtime pins clash with the stack.
  .venv/bin/python -m pip install -q --no-deps tflite-support==0.4.4
  rm -f .venv/.installed-*
  touch "$stamp"
fi
