# Identity Animator - developer commands. Everything runs in .venv against the ComfyUI in
# .host/ComfyUI (built offline by `make setup`) or the one named by COMFYUI_DIR.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo convert clean train-align eval-align bench models

setup:
	bash tools/setup_host.sh

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	$(PY) tools/demo.py $(if $(REF),--reference $(REF)) $(if $(DRIVING),--driving $(DRIVING))

convert: setup
	$(PY) tools/convert_checkpoints.py $(FILES)

clean:
	rm -rf .host .venv .cache test-artifacts

# learnable SVD-guided pose alignment: train on the parametric 2-D body model, then evaluate (Dis)
train-align: setup
	$(PY) tools/pose_align_learnable.py train --out models/data/learnable_align_v1.safetensors

eval-align: setup
	$(PY) tools/pose_align_learnable.py eval --ckpt models/data/learnable_align_v1.safetensors

# sampler speed and memory without and with face refinement (real sizes on a GPU, tiny on a CPU)
bench: setup
	$(PY) tools/benchmark.py

# model files: list / check / download (ARGS="download --all")
models:
	python3 tools/models.py $(or $(ARGS),list)
