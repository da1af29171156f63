# `make soak`: the fault mix repeatedly for a few minutes (SOAK_MINUTES); corrupt files must be 0.
SOAK_MINUTES ?= 3

.PHONY: soak

soak: install
	env -u AWS_CA_BUNDLE $(BIN)/python -m tests.faults.soak --minutes $(SOAK_MINUTES)
