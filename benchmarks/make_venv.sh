#!/usr/bin/env bash
# Create (or reuse) a baseline's own venv from its pinned requirements: make_venv.sh VENV_DIR REQUIREMENTS_TXT
# (optimum and onnxruntime-genai pin libraries the main venv must not get). Quick when already up to date.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 VENV_DIR REQUIREMENTS_TXT" >&2
    exit 2
fi
venv=$1
req=$2
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    echo "$venv is up to date with $req"
    exit 0
fi

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install -r "$req"
# The stamp is written last: an interrupted install is retried on the next run.
echo "$want" > "$stamp"
echo "installed $req into $venv"
