#!/usr/bin/env bash
# Puts the newest ComfyUI frontend (PyPI's comfyui-frontend-package) in .host/frontend-latest/, for
# the browser tests that run the pack against it with ComfyUI's `--front-end-root`.
#
#   .host/frontend-latest/           the wheel's comfyui_frontend_package/static folder
#   .host/frontend-latest/VERSION    the package version it came from
#
# Idempotent: nothing is downloaded when the folder already holds that version.
# The version is pinned so that CI is reproducible: 1.58.1 was the newest on the index on 2026-12-01.
# FRONTEND_VERSION=1.60.0 picks another one, FRONTEND_VERSION=newest whatever the index has now.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
DEST="$ROOT/.host/frontend-latest"
FRONTEND_VERSION="${FRONTEND_VERSION:-1.58.1}"

log() { printf '[setup-frontend] %s\n' "$*"; }

if [[ -f "$DEST/VERSION" && -f "$DEST/index.html" && -f "$DEST/scripts/app.js" ]] \
   && [[ "$FRONTEND_VERSION" == "newest" || "$(cat "$DEST/VERSION")" == "$FRONTEND_VERSION" ]]; then
  log "frontend $(cat "$DEST/VERSION") ready: $DEST"
  exit 0
fi

SPEC="comfyui-frontend-package"
[[ "$FRONTEND_VERSION" == "newest" ]] || SPEC="$SPEC==$FRONTEND_VERSION"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log "downloading $SPEC"
"$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$tmp/wheel" "$SPEC" 2> >(grep -v "^WARNING: Location" >&2)
"$VENV/bin/python" - "$tmp" "$DEST" <<'PYEOF'
import pathlib, re, shutil, sys, zipfile

tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next((tmp / "wheel").glob("comfyui_frontend_package-*.whl"))
version = re.match(r"comfyui_frontend_package-([^-]+)-", wheel.name).group(1)
prefix = "comfyui_frontend_package/static/"
staged = tmp / "static"
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not any(n == prefix + "index.html" for n in names):
        sys.exit(f"{wheel.name} has no {prefix}index.html")
    for name in names:
        out = staged / name[len(prefix):]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(zf.read(name))
(staged / "VERSION").write_text(version + "\n")
dest.parent.mkdir(parents=True, exist_ok=True)
if dest.exists():
    shutil.rmtree(dest)
shutil.move(str(staged), str(dest))
print(f"[setup-frontend] frontend {version} ready: {dest} ({len(names)} files)")
PYEOF
