# cxl-bmc: build, test, demo and benchmark (all need root for BPF and network namespaces).
# `make test SCRATCH=.build-foo` keeps a second build folder apart from the default one.

SWIFT_BIN ?= /opt/swift/usr/bin
export PATH := $(SWIFT_BIN):$(PATH)

SWIFT   ?= swift
SCRATCH ?= .build
SWIFTPM_FLAGS = --scratch-path $(SCRATCH)

.PHONY: build test deps demo bench bench-quick bench-peering bench-tier fuzz soak clean

build:
	$(SWIFT) build $(SWIFTPM_FLAGS)

# Debian's packages, then Debian's memcached source rebuilt with symbols (cached under
# /var/cache/cxl-bmc; the uprobe tests run against both builds).
deps:
	bash kernel-scripts/install-deps.sh
	bash kernel-scripts/build-memcached.sh

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
# One report, docs/benchmarks/report.md (+ report.svg): vanilla memcached vs memcached + cxl-bmc,
# same client, same run, as ratios — L1 CPU per GET and throughput, L3 promotion and the latency a
# client sees for a lost key, the hit ratio after memcached is killed and restarted, the uprobes'
# SET-rate cost (kernel-scripts/bench_report.py; ~4-5 min on 2 cores, all of `make bench` ~10 min). Then the L1 programs' own
# timings, peering and CXLTier, each in its own file.
bench: deps
	$(SWIFT) build -c release $(SWIFTPM_FLAGS)
	mkdir -p docs/benchmarks
	python3 kernel-scripts/bench_report.py --build-dir $(SCRATCH)/release --out docs/benchmarks
	$(SCRATCH)/release/cxl-bmc-bench --runs 50000 | tee docs/benchmarks/programs.txt
	$(MAKE) bench-peering SCRATCH=$(SCRATCH)
	$(MAKE) bench-tier SCRATCH=$(SCRATCH)

# The same report with every part run briefly (~2 min), into docs/benchmarks/quick/ (not committed):
# shows that the whole pipeline works, not what it measures.
bench-quick: deps
	$(SWIFT) build -c release $(SWIFTPM_FLAGS)
	python3 kernel-scripts/bench_report.py --build-dir $(SCRATCH)/release --quick --out docs/benchmarks/quick

# Peering transport: remote get p50/p99 over loopback TCP and over a veth pair into a netns (root),
# 100-key multi-get vs 100 single gets.
bench-peering:
	$(SWIFT) build -c release $(SWIFTPM_FLAGS) --product peering-bench
	mkdir -p docs/benchmarks
	$(SCRATCH)/release/peering-bench --veth | tee docs/benchmarks/peering.md

# L3 (CXLTier): 10 M items in an emulated pool against a Swift Dictionary, in the same run, with the
# pool on 4 KiB pages (/dev/shm) and on 2 MiB pages (the script reserves huge pages, mounts a
# hugetlbfs, and restores both afterwards; without root it says so and measures 4 KiB only).
bench-tier:
	$(SWIFT) build -c release $(SWIFTPM_FLAGS) --product cxl-tier-bench
	mkdir -p docs/benchmarks
	bash kernel-scripts/bench-tier-hugepages.sh $(SCRATCH)/release/cxl-tier-bench --items 10000000 --samples 1000000 | tee docs/benchmarks/cxltier.md

# Packet fuzzing of L1 against its reference model (docs/reliability.md): release build, one
# BPF_PROG_TEST_RUN per packet. 10 M packets take 7 min (idle) to 16 min (busy) on 2 cores; CI runs a fixed-seed
# 60 k pass inside `make test` (Tests/L1FuzzTests). Exits non-zero on an unexpected divergence.
FUZZ_SEED ?= 1
FUZZ_PACKETS ?= 10000000
fuzz:
	$(SWIFT) build -c release $(SWIFTPM_FLAGS) --product l1-fuzz
	$(SCRATCH)/release/l1-fuzz --seed $(FUZZ_SEED) --packets $(FUZZ_PACKETS)

# Soak (docs/reliability.md): SOAK_SECONDS (default 600) of mixed load against memcached with cxl-bmc
# fully attached (L1, uprobes, L3 in a pool) and the stale checker on; samples the daemon's RSS and
# every BPF map's entry count. Exits non-zero unless 0 stale, 0 corrupt, 0 events lost, RSS flat and
# maps bounded. A 60-second version runs inside `make test` (Tests/FaultTests).
SOAK_SECONDS ?= 600
soak: deps
	$(SWIFT) build $(SWIFTPM_FLAGS) --product cxl-bmc
	$(SWIFT) build $(SWIFTPM_FLAGS) --product mc-load
	SOAK_SECONDS=$(SOAK_SECONDS) bash kernel-scripts/soak.sh $(SCRATCH)/debug

clean:
	rm -rf $(SCRATCH)
