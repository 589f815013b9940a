#!/usr/bin/env bash
# The Python wheel's tests: builds r1py with maturin, installs the wheel in a virtual
# environment (target/py-venv, made once and reused), and runs r1-py/tests with pytest.
#
#   bash scripts/test-python.sh [pytest args]
#
# R1_FRESH_VENV=1 rebuilds the environment from nothing, as on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-venv
if [ -n "${R1_FRESH_VENV:-}" ]; then rm -rf "$venv"; fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "maturin>=1.7,<2" "pytest>=7" "numpy>=1.21"
fi
# r1py[ray]'s dependencies, as r1-py/pyproject.toml pins them, for r1-py/tests/test_ray.py.
ray_deps=$("$venv/bin/python" -c "import tomllib; print('\n'.join(tomllib.load(open('r1-py/pyproject.toml', 'rb'))['project']['optional-dependencies']['ray']))")
mapfile -t ray_deps <<<"$ray_deps"
"$venv/bin/pip" install -q "${ray_deps[@]}"
rm -rf target/wheels
"$venv/bin/maturin" build --release --manifest-path r1-py/Cargo.toml -o target/wheels >&2
wheel=$(ls target/wheels/r1py-*.whl)
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"
"$venv/bin/pip" install -q --force-reinstall --no-deps "$wheel"
RAY_USAGE_STATS_ENABLED=0 "$venv/bin/python" -m pytest -q r1-py/tests "$@"
