#!/usr/bin/env bash
# Rebuilds, from scratch, the git-ignored bundle that lets bench/bench_sam3d_h200.py run the
# real upstream SAM 3D Objects pipeline on the GPU machine (Python 3.12, torch 2.11+cu130, no
# network there): .sam3d/, .sam3d_cumm/ and .sam3_whl/ in the destination checkout.
# README.md beside this file says what is in it, why, and how the device runs use it.
#
#   tools/gpu_bundle/build.sh [--dest CHECKOUT] [--cpu-site DIR]
#
#   --dest      checkout to build into (default: the one holding this script). Device runs
#               carry the session's own checkout, so build into that one.
#   --cpu-site  also build DIR: a Python 3.11 site for the CPU dry run with the project's
#               venv (cp311 wheels, spconv's CPU build, upstream sources, stand-ins).
#
# Needs: git mirrors of the upstream repositories under $SAM3D_MIRROR (default /work/.mirror,
# as the session's `fetch` tool leaves them: <owner>+<name>/repo), PyPI through pip, a
# Python 3.12 ($PY312) to build the two sdist-only wheels, and the model configs in
# $SAM3D_CONFIGS (default: shared/reference/sam3d-objects-configs beside the checkout).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEST=$(git -C "$HERE" rev-parse --show-toplevel)
CPU_SITE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dest) DEST=$(cd "$2" && pwd); shift 2 ;;
        --cpu-site) CPU_SITE=$2; shift 2 ;;
        -h|--help) sed -n 2,18p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
MIRROR=${SAM3D_MIRROR:-/work/.mirror}
CONFIGS=${SAM3D_CONFIGS:-$(dirname "$(git -C "$HERE" rev-parse --path-format=absolute --git-common-dir)")/../shared/reference/sam3d-objects-configs}
PIP=${PIP:-python3 -m pip}
if [ -z "${PY312:-}" ]; then  # the first Python 3.12 that runs (a pyenv shim may not)
    for c in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 "$HOME"/.local/bin/python3.12; do
        if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$c; break; fi
    done
fi
PY312=${PY312:-}

# ---------------------------------------------------------------- pins
# Upstream sources: repository, commit, paths taken from it.
SOURCES=(
    "facebookresearch/sam-3d-objects cf066761706cd02b07e2fc6274570ec8cdafb683 sam3d_objects"
    "microsoft/MoGe a8c37341bc0325ca99b9d57981cc3bb2bd3e255b moge"
    "EasternJournalist/utils3d 3913c65d81e05e47b9f367250cf8c0f7462a0900 utils3d"
    "facebookresearch/pytorch3d 75ebeeaea0908c5527e7b1e305fbc7681382db47 pytorch3d"
    "facebookresearch/dinov2 b8931f7bf91576930313be2c6d6af376033b35f0 hubconf.py dinov2"
)
# Wheels for the GPU machine (cp312, manylinux) that pip downloads as they are.
GPU_WHEELS=(hydra-core==1.3.8 omegaconf==2.3.0 loguru==0.7.3 astor==0.8.1 plyfile==1.1.5
            easydict==1.14 optree==0.20.0 pccm==0.4.16 ccimport==0.4.4 lark==1.3.1 fire==0.7.1
            termcolor==3.3.0 trimesh==5.2.0 xatlas==0.0.11)
# pydantic for the project's settings; also .sam3_whl/ for the SAM 3 encoder bench.
PYDANTIC_WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
                 typing-inspection==0.4.5 typing-extensions==4.16.0)
# pytest for the GPU-marked tests (`pytest -m gpu`), in .sam3_whl/ too.
TEST_WHEELS=(pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0
             pyyaml==6.0.4)
# sdist only on PyPI: built here with Python 3.12 (antlr4 is pure Python; meshoptimizer is C++).
BUILT_WHEELS=(antlr4-python3-runtime==4.9.3 meshoptimizer==0.2.30a0)
# Too big to travel as wheels (67 + 25 MiB): repacked as installed trees in tar.xz.
SPCONV=spconv-cu126==2.3.8
CUMM=cumm-cu126==0.7.11
# CPU dry run only (--cpu-site, Python 3.11): compiled packages in their cp311 CPU builds, and
# what the GPU machine's image has but the project's venv lacks.
CPU_COMPILED=(optree==0.20.0 spconv==2.3.8 cumm==0.7.11)
CPU_EXTRAS=(pybind11==3.1.0 ninja==1.13.2 portalocker==4.4.2 einops==0.8.2 timm==1.0.31
            lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0 matplotlib==3.11.2
            contourpy==1.3.3 cycler==0.12.1 kiwisolver==1.5.1 fonttools==4.69.1 pyparsing==3.3.3
            python-dateutil==4.0.0 six==1.17.0 torchvision==0.28.0)

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
GPU_PIP=(download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
         "${PLATFORMS[@]}")
say() { echo "[build.sh] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- checks
[ -f "$CONFIGS/pipeline.yaml" ] || die "no pipeline.yaml in $CONFIGS (set SAM3D_CONFIGS)"
[ -n "$PY312" ] && "$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' \
    || die "no Python 3.12 found (set PY312): needed to build the meshoptimizer wheel"
for entry in "${SOURCES[@]}"; do
    read -r repo commit _ <<<"$entry"
    git_dir="$MIRROR/${repo/\//+}/repo"
    git --git-dir="$git_dir" cat-file -e "$commit^{commit}" 2>/dev/null \
        || die "$repo @ $commit not in $git_dir: fetch github:$repo (session tool) or set SAM3D_MIRROR"
done

WORK=$(mktemp -d /tmp/gpu_bundle.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
say "staging in $WORK"

# ---------------------------------------------------------------- sources (+ pytorch3d's _C stand-in)
extract_sources() {  # $1: folder to fill
    mkdir -p "$1/dinov2_hub"
    for entry in "${SOURCES[@]}"; do
        read -r repo commit paths <<<"$entry"
        local into="$1"
        [ "$repo" = facebookresearch/dinov2 ] && into="$1/dinov2_hub"
        # shellcheck disable=SC2086 # paths is a list
        git --git-dir="$MIRROR/${repo/\//+}/repo" archive "$commit" $paths 2>/dev/null | tar x -C "$into"
    done
    rm -rf "$1/pytorch3d/csrc"  # C++/CUDA sources of the extension we do not build
    cp "$HERE/pytorch3d_C.py" "$1/pytorch3d/_C.py"
    [ -f "$1/sam3d_objects/pipeline/inference_pipeline.py" ] || die "source extraction failed"
}
extract_sources "$WORK/src"

# ---------------------------------------------------------------- wheels
mkdir -p "$WORK/whl" "$WORK/sam3_whl" "$WORK/big"
say "downloading cp312 wheels"
$PIP "${GPU_PIP[@]}" -d "$WORK/whl" "${GPU_WHEELS[@]}" "${PYDANTIC_WHEELS[@]}"
say "building ${BUILT_WHEELS[*]} with $PY312"
"$PY312" -m pip wheel -q --no-deps -w "$WORK/whl" "${BUILT_WHEELS[@]}"
n_expected=$(( ${#GPU_WHEELS[@]} + ${#PYDANTIC_WHEELS[@]} + ${#BUILT_WHEELS[@]} ))
n_got=$(ls "$WORK/whl"/*.whl | wc -l)
[ "$n_got" -eq "$n_expected" ] || die "expected $n_expected wheels, got $n_got: $(ls "$WORK/whl")"
for w in pydantic- pydantic_core- annotated_types- typing_inspection- typing_extensions-; do
    cp "$WORK/whl/$w"*.whl "$WORK/sam3_whl/"
done
say "downloading pytest for the GPU-marked tests"
$PIP "${GPU_PIP[@]}" -d "$WORK/sam3_whl" "${TEST_WHEELS[@]}"

# ---------------------------------------------------------------- spconv and cumm as installed trees
say "downloading $SPCONV and $CUMM"
$PIP "${GPU_PIP[@]}" -d "$WORK/big" "$SPCONV" "$CUMM"
repack() {  # $1: wheel, $2: tar.xz to write. A wheel without .data is its installed tree.
    local tree="$WORK/tree_$(basename "$2" .tar.xz)"
    mkdir -p "$tree"
    python3 -m zipfile -e "$1" "$tree"
    ! ls -d "$tree"/*.data >/dev/null 2>&1 || die "$1 has a .data folder: unzip is not an install"
    tar -C "$tree" -cf - . | xz -9e -T0 > "$2"
}
say "repacking (xz -9e; a few minutes)"
repack "$WORK/big"/spconv_cu126-*.whl "$WORK/spconv.tar.xz"
repack "$WORK/big"/cumm_cu126-*.whl "$WORK/cumm.tar.xz"

# ---------------------------------------------------------------- assemble
B="$WORK/out/.sam3d"
mkdir -p "$B" "$WORK/out/.sam3d_cumm" "$WORK/out/.sam3_whl"
tar -C "$WORK/src" -cf - . | xz -9e -T0 > "$B/src.tar.xz"
mv "$WORK/whl" "$B/whl"
mv "$WORK/spconv.tar.xz" "$B/"
mv "$WORK/cumm.tar.xz" "$WORK/out/.sam3d_cumm/"
mv "$WORK/sam3_whl"/*.whl "$WORK/out/.sam3_whl/"
mkdir -p "$B/configs"
cp "$CONFIGS"/*.yaml "$B/configs/"
cp -r "$HERE/stubs" "$B/stubs"
cp -r "$HERE/stubs_device" "$B/stubs_device"
cp "$HERE/setup.sh" "$HERE/verify_imports.py" "$B/"
find "$B" -name __pycache__ -prune -exec rm -rf {} +
{
    echo "# GPU bundle built $(date -u +%FT%TZ) by tools/gpu_bundle/build.sh at $(git -C "$HERE" rev-parse --short HEAD)"
    echo "## sources (src.tar.xz)"
    printf '%s\n' "${SOURCES[@]}"
    echo "## files (sha256)"
    (cd "$WORK/out" && find . -type f \( -name '*.whl' -o -name '*.tar.xz' \) | sort | xargs sha256sum)
} > "$B/MANIFEST.txt"

for d in .sam3d .sam3d_cumm .sam3_whl; do
    rm -rf "${DEST:?}/$d"
    mv "$WORK/out/$d" "$DEST/$d"
done
tree_bytes=$(git -C "$DEST" ls-files -z | (cd "$DEST" && xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1))
for d in .sam3d .sam3d_cumm .sam3_whl; do
    bytes=$(du -sb "$DEST/$d" | cut -f1)
    say "$DEST/$d: $(( bytes / 1024 / 1024 )) MiB ($bytes bytes); with the tracked tree" \
        "$(( (bytes + tree_bytes) / 1024 / 1024 )) MiB of the 64 MiB a device call may carry"
done

# ---------------------------------------------------------------- CPU dry-run site (optional)
if [ -n "$CPU_SITE" ]; then
    say "building the CPU dry-run site $CPU_SITE"
    rm -rf "$CPU_SITE"
    mkdir -p "$CPU_SITE/site" "$WORK/cpu"
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
        "${PLATFORMS[@]}" -d "$WORK/cpu" "${CPU_COMPILED[@]}" "${CPU_EXTRAS[@]}"
    cp "$DEST/.sam3d/whl"/*-py3-none-any.whl "$DEST/.sam3d/whl"/*-py2.py3-none-any.whl "$WORK/cpu/" 2>/dev/null || true
    rm -f "$WORK/cpu"/pydantic-* "$WORK/cpu"/typing_extensions-*  # the venv's own
    python3 -m pip install -q --no-index --no-deps --target "$CPU_SITE/site" "$WORK/cpu"/*.whl
    # PyPI's torchvision is a CUDA build whose _C cannot load beside a CPU torch; its transforms
    # (all upstream uses) work without it once two unguarded fake-op registrations are skipped.
    sed -i -E 's/^@torch.library.register_fake\("(torchvision::[a-z_]+)"\)$/@(torch.library.register_fake("\1") if torchvision.extension._has_ops() else (lambda f: f))/' \
        "$CPU_SITE/site/torchvision/_meta_registrations.py"
    extract_sources "$CPU_SITE/src"
    cp -r "$HERE/stubs" "$CPU_SITE/stubs"
    say "CPU dry run: PYTHONPATH=$CPU_SITE/site:$CPU_SITE/src:$CPU_SITE/stubs:\$PWD"
fi
say "done"
