# Two commands on a fresh clone:  `make demo` (set up + the default sweep) and `make test`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip -q
STAMP := $(VENV)/.joulecut-installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard kernels/*.pyx kernels/*.h energy/*.pyx)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.26"
	$(PIP) install -c constraints.txt --no-build-isolation -e '.[all,dev]'
	touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/joulecut sweep examples/sweep/default.yaml -o demo-report --resume

test: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info kernels/*.so
