# cxl-bmc: build, test and (later) demo and benchmark.
# `make test SCRATCH=.build-foo` keeps a second build folder apart from the default one.

SWIFT_BIN ?= /opt/swift/usr/bin
export PATH := $(SWIFT_BIN):$(PATH)

SWIFT   ?= swift
SCRATCH ?= .build
SWIFTPM_FLAGS = --scratch-path $(SCRATCH)

.PHONY: build test deps demo bench clean

build:
	$(SWIFT) build $(SWIFTPM_FLAGS)

deps:
	bash kernel-scripts/install-deps.sh

# The build comes first so that a compile error stops before any test runs; the tests find mc-load
# and cxl-bmc next to the test binary.
test: deps
	$(SWIFT) build $(SWIFTPM_FLAGS)
	$(SWIFT) test $(SWIFTPM_FLAGS)

demo:
	@echo "demo: not yet"

bench:
	@echo "bench: not yet"

clean:
	rm -rf $(SCRATCH)
