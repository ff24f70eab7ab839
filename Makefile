# yolotune: `make demo` runs the main job on the bundled demo, `make test` runs the tests.
# Both create .venv when it is missing and install everything into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tune run --model yolov8n-coco.pt --data tiny_coco --imgsz 320 --target local-cpu --budget 12 --study demo --workers 2 --max-map-drop 0.05
	$(BIN)/tune report --study demo
	@echo "study: studies/demo.db, trials in studies/demo/trials/ (.venv/bin/tune show / dashboard / export --study demo)"

test: $(STAMP)
	./scripts/system-deps.sh
	$(MAKE) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check yolotune tests bench
	$(BIN)/ruff format --check yolotune tests bench
	$(BIN)/mypy yolotune

bench: $(STAMP)
	$(BIN)/python bench/candidate.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/scale.py

clean-venv:
	rm -rf $(VENV)
