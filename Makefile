# The two commands: `make run` (the main job on the embedded dataset) and `make test`.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test install clean

$(BIN)/spikernel: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[test]'
	touch $@

install: $(BIN)/spikernel

run: install
	$(BIN)/spikernel run $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) runs
