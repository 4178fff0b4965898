# Identity Animator - developer commands. Everything runs in $(VENV) (.venv unless set) against the ComfyUI in
# .host/ComfyUI (built offline by `make setup`) or the one named by COMFYUI_DIR.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test compat demo convert clean train-align eval-align bench bench-bundle models eval

setup:
	bash tools/setup_host.sh

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

# the smoke subset (-m compat) against another ComfyUI checkout, in a venv of its own:
#   make compat COMFYUI_DIR=/path/to/ComfyUI      (docs/compatibility.md records the results)
COMPAT_VENV ?= .venv-compat
compat:
	@test -n "$(COMFYUI_DIR)" || { echo "make compat needs COMFYUI_DIR=/path/to/ComfyUI (the version to check)"; exit 2; }
	$(MAKE) test VENV=$(abspath $(COMPAT_VENV)) COMFYUI_DIR=$(abspath $(COMFYUI_DIR)) PYTEST_ARGS="-m compat $(PYTEST_ARGS)"

demo: setup
	$(PY) tools/demo.py $(if $(REF),--reference $(REF)) $(if $(DRIVING),--driving $(DRIVING))

convert: setup
	$(PY) tools/convert_checkpoints.py $(FILES)

clean:
	rm -rf .host .venv .venv-compat .cache test-artifacts .bench-bundle bench-out

# learnable SVD-guided pose alignment: train on the parametric 2-D body model, then evaluate (Dis)
train-align: setup
	$(PY) tools/pose_align_learnable.py train --out models/data/learnable_align_v1.safetensors

eval-align: setup
	$(PY) tools/pose_align_learnable.py eval --ckpt models/data/learnable_align_v1.safetensors

# sampler speed, memory and FLOP/s without and with face refinement, against the official pipeline on
# diffusers (real sizes on a GPU, tiny on a CPU); docs/benchmarks.md
bench: setup
	$(PY) tools/benchmark.py

# what a GPU machine without ComfyUI or network needs for `make bench` (<= 60 MiB, .bench-bundle/):
# carry it and run tools/bench/run_on_device.sh there (docs/benchmarks.md)
bench-bundle: setup
	$(PY) tools/bench/bundle.py

# L1/PSNR/SSIM/LPIPS per video and FVD over the set, generated against ground truth (docs/evaluation.md):
#   make eval ARGS="out/dance.mp4 data/dance.mp4 --out report"   (LPIPS/FVD weights: ComfyUI/models/evaluation)
eval: setup
	$(PY) tools/evaluate.py $(ARGS)

# model files: list / check / download (ARGS="download --all")
models:
	python3 tools/models.py $(or $(ARGS),list)
