# Format checks (issue 16).
#   make bench-gguf   time the GGUF header check on sparse 4 GiB files with real models'
#                     headers (a printed measurement against the 50 ms budget, not a test)
# This file is included by the root Makefile, which defines BIN and STAMP.

.PHONY: bench-gguf

bench-gguf: $(STAMP)
	$(BIN)/python -m devtools.gguf_bench --size 4GiB
