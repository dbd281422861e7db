#!/usr/bin/env bash
# The GPU check (docs/gpu.md): install the Partita packages where they are missing, then run
# check.py, which does the work. From the repository root:
#
#     bash benchmarks/gpu/check.sh [--out DIR] [check.py options]
#
# Environment: PYTHON (default python3). For a machine without a package index, pip's own
# variables apply, e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels.
set -u

started_at=$(date +%s) # the check's deadline counts from here, the install included
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
packages=(formats models profiler simulator executor)

# Already importable (a developer checkout, the test suite, a second run): no pip at all, so
# this is quick and needs no network.
imports="import partita.formats.cli, partita.models, partita.profiler, partita.simulator"
if "$py" -c "$imports, partita.executor" >/dev/null 2>&1; then
    exec "$py" "$here/check.py" --started-at "$started_at" "$@"
fi

# What torch is there: "cuda VERSION", "cpu VERSION" or "none".
probe='import torch; print("cuda" if torch.cuda.is_available() else "cpu", torch.__version__)'
torch_state=$("$py" -c "$probe" 2>/dev/null || echo none)
read -r torch_kind torch_version <<<"$torch_state"

# torch without CUDA, or no torch and no NVIDIA device: nothing to measure, so nothing to
# install; check.py says so in one line.
no_gpu_device() { ! compgen -G '/dev/nvidia[0-9]*' >/dev/null; }
if [ "$torch_kind" = cpu ] || { [ "$torch_kind" = none ] && no_gpu_device; }; then
    exec "$py" "$here/check.py" --started-at "$started_at" "$@"
fi

# Install quietly. The packages build with setuptools >= 68; where it is installed, build
# without an isolated build environment (quicker, and no download of setuptools offline).
pip=("$py" -m pip install -q --disable-pip-version-check --no-input --no-warn-script-location)
if "$py" -c 'import sys, setuptools; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' \
    >/dev/null 2>&1; then
    pip+=(--no-build-isolation)
fi
export PIP_ROOT_USER_ACTION=ignore
dirs=()
for name in "${packages[@]}"; do dirs+=("$root/packages/$name"); done
pinned=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$root/constraints.txt")

# Which install, by the torch already there:
# - none: the fresh-machine command of README.md, torch pinned by constraints.txt (on Linux
#   x86-64, PyPI's torch wheel is a CUDA build);
# - the pinned version (2.13.0+cu128 satisfies ==2.13.0: PEP 440 ignores the local label):
#   the same command, and pip keeps the installed CUDA build since it meets the pin;
# - another CUDA build (say a GPU image's 2.11.0+cu130): constraints.txt would make pip
#   replace it by 2.13.0, a multi-GB download that may not be a CUDA build at all, and
#   impossible offline. Keep it: the packages without their dependencies (--no-deps), then
#   their dependencies other than torch, read from the pyproject files. The packages ask
#   for torch>=2.4, which such a build meets.
if [ "$torch_kind" = none ] || [ "${torch_version%%+*}" = "$pinned" ]; then
    echo "gpu check: installing the Partita packages (torch ${torch_version:-none}; pin $pinned)"
    "${pip[@]}" -c "$root/constraints.txt" "${dirs[@]}" || status=$?
else
    echo "gpu check: installing the Partita packages, keeping torch $torch_version (--no-deps)"
    mapfile -t deps < <("$py" - "$root" "${packages[@]}" <<'EOF'
import re, sys, tomllib
from pathlib import Path

root, names = Path(sys.argv[1]), sys.argv[2:]
for name in names:
    project = tomllib.loads((root / "packages" / name / "pyproject.toml").read_text())
    for spec in project["project"].get("dependencies", []):
        dist = re.split(r"[\s<>=!~;\[(]", spec, maxsplit=1)[0].lower()
        if dist != "torch" and not dist.startswith("partita-"):
            print(spec)
EOF
    )
    "${pip[@]}" --no-deps "${dirs[@]}" && "${pip[@]}" "${deps[@]}" || status=$?
fi
if [ "${status:-0}" -ne 0 ]; then
    # Go on: check.py records every stage that fails for want of a package.
    echo "gpu check: warning: pip exited with status $status; the check goes on" >&2
fi
exec "$py" "$here/check.py" --started-at "$started_at" "$@"
