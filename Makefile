# cxl-bmc: build, test, demo and benchmark (all need root for BPF and network namespaces).
# `make test SCRATCH=.build-foo` keeps a second build folder apart from the default one.

SWIFT_BIN ?= /opt/swift/usr/bin
export PATH := $(SWIFT_BIN):$(PATH)

SWIFT   ?= swift
SCRATCH ?= .build
SWIFTPM_FLAGS = --scratch-path $(SCRATCH)

.PHONY: build test deps demo bench bench-tier clean

build:
	$(SWIFT) build $(SWIFTPM_FLAGS)

deps:
	bash kernel-scripts/install-deps.sh

# The build comes first so that a compile error stops before any test runs; the tests find mc-load
# and cxl-bmc next to the test binary.
# Serial: on a small machine, the timing-sensitive netns tests must not compete with each other.
test: deps
	$(SWIFT) build $(SWIFTPM_FLAGS)
	$(SWIFT) test $(SWIFTPM_FLAGS) --no-parallel

demo: deps
	$(SWIFT) build $(SWIFTPM_FLAGS)
	bash kernel-scripts/demo.sh $(SCRATCH)/debug

# Release build: the load generator must not be the bottleneck.
bench: deps
	$(SWIFT) build -c release $(SWIFTPM_FLAGS)
	mkdir -p docs/benchmarks
	$(SCRATCH)/release/cxl-bmc-bench --runs 50000 | tee docs/benchmarks/programs.txt
	python3 kernel-scripts/bench_l1.py --build-dir $(SCRATCH)/release
	$(MAKE) bench-tier

# L3 (CXLTier): 10 M items in an emulated pool against a Swift Dictionary, in the same run.
bench-tier:
	$(SWIFT) build -c release $(SWIFTPM_FLAGS) --product cxl-tier-bench
	mkdir -p docs/benchmarks
	$(SCRATCH)/release/cxl-tier-bench --items 10000000 --samples 1000000 | tee docs/benchmarks/cxltier.md

clean:
	rm -rf $(SCRATCH)
