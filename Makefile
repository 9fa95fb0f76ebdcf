# mmvthcl: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mmvthcl-installed
DEMO_OUT ?= demo_out
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test test-fast demo ablation clean

install: $(STAMP)

# The stamp makes a second `make install` a no-op; it is redone only when the
# pins or the package metadata change. mmcv is built from the sdist WITH its
# compiled ops (~20 min on 2 cores the first time; pip's wheel cache makes
# later installs on the same machine take seconds).
$(STAMP): setup.py requirements/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'pip>=23.1' 'setuptools>=77.0.3,<82' wheel ninja
	$(PY) -m pip install -q torch==2.13.0 numpy
	MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$$(nproc) \
	  $(PY) -m pip install -q --no-build-isolation mmcv==2.1.0
	$(PY) -m pip install -q -r requirements/cpu.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import mmcv.ops, mmdet.models, mmvthcl" || \
	  { echo 'install check failed: mmcv was built without its ops?'; exit 1; }
	touch $@

test: install
	$(PY) -m pytest tests

test-fast: install
	$(PY) -m pytest tests -m 'not slow'

demo: install
	$(PY) tools/demo.py --out $(DEMO_OUT)

ablation: install
	$(PY) benchmarks/ablation.py --out $(DEMO_OUT)/ablation --train-seeds 0 1 2

clean:
	rm -rf $(VENV) $(DEMO_OUT) work_dirs
