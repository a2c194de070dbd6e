# Sourced on the GPU machine from the repo root, with .sam3d carried:
#     . .sam3d/setup.sh > /tmp/setup.log 2>&1
# after an earlier call on the same warm machine unpacked cumm (too big to travel with .sam3d):
#     mkdir -p /tmp/site && tar xJf .sam3d_cumm/cumm.tar.xz -C /tmp/site
# It installs the bundle's wheels and spconv into /tmp/site, unpacks the upstream sources into
# /tmp/sam3d_src, and puts site, sources, stand-ins and the repo on PYTHONPATH.
# Copied into .sam3d/ by tools/gpu_bundle/build.sh. Sourced: it returns, never exits.

_b="$PWD/.sam3d"
_ok=1
mkdir -p /tmp/site /tmp/sam3d_src
if [ ! -d /tmp/site/cumm ]; then
    if [ -f .sam3d_cumm/cumm.tar.xz ]; then
        tar xJf .sam3d_cumm/cumm.tar.xz -C /tmp/site || _ok=0
    else
        echo "setup.sh: /tmp/site/cumm is missing: unpack .sam3d_cumm/cumm.tar.xz first (an earlier call)"
        _ok=0
    fi
fi
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$_b"/whl/*.whl || _ok=0
[ -d /tmp/site/spconv ] || tar xJf "$_b/spconv.tar.xz" -C /tmp/site || _ok=0
[ -d /tmp/sam3d_src/sam3d_objects ] || tar xJf "$_b/src.tar.xz" -C /tmp/sam3d_src || _ok=0
export PYTHONPATH="/tmp/site:/tmp/sam3d_src:$_b/stubs:$_b/stubs_device:$PWD"
export LIDRA_SKIP_INIT=true
if [ "$_ok" = 1 ]; then
    echo "setup.sh: bundle ready; PYTHONPATH=$PYTHONPATH"
else
    echo "setup.sh: FAILED (see above); PYTHONPATH=$PYTHONPATH"
fi
unset _b _ok
