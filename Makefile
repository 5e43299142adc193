# weir: build, generate, test, run.
# Heavy tools and downloads are cached under $(CACHE), outside the clone.

SHELL        := /bin/bash
.SHELLFLAGS  := -o pipefail -c
CACHE        ?= $(HOME)/.cache/weir
TOOLS        := $(CACHE)/bin
BIN          := $(CURDIR)/bin
GO           ?= go
MODULES      := proto collector reducer k8s-watcher test
PKGS         := $(foreach m,$(MODULES),github.com/weir-project/weir/$(m)/...)
K8S_TESTS    := github.com/weir-project/weir/test/k8s
CLUSTER_TESTS := github.com/weir-project/weir/test/cluster
UNIT_PKGS    := $(foreach m,proto collector reducer k8s-watcher,github.com/weir-project/weir/$(m)/...)
SYSTEM_PKGS  := github.com/weir-project/weir/test/...

BUF_VERSION           := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GRPC_VER   := v1.6.2
GOLANGCI_LINT_VERSION := v2.15.0

REDUCER_GRPC ?= 127.0.0.1:7000
REDUCER_HTTP ?= 127.0.0.1:7010
INTERVAL     ?= 5s

.PHONY: all build images generate generate-bpf generate-proto test test-kernels run bench lint tools-apt tools-go tools-lint clean

all: build

## build: compile every binary into bin/
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ \
	  github.com/weir-project/weir/collector/cmd/weir-collector \
	  github.com/weir-project/weir/reducer/cmd/weir-reducer \
	  github.com/weir-project/weir/reducer/cmd/weirctl \
	  github.com/weir-project/weir/k8s-watcher/cmd/weir-k8s-watcher \
	  github.com/weir-project/weir/test/cmd/flowsrv \
	  github.com/weir-project/weir/test/cmd/flowcli \
	  github.com/weir-project/weir/collector/internal/probe/floorsink

## images: OCI image tarballs of the four binaries in bin/images/<name>.tar, tagged
#   $(IMAGE_REPO)/<name>:$(IMAGE_TAG), built with go-containerregistry (no container engine):
#   static binaries (CGO_ENABLED=0), user 65532, OCI labels. `ctr -n k8s.io images import` loads them.
VERSION        ?= dev
IMAGE_REPO     ?= ghcr.io/weir-project
IMAGE_TAG      ?= $(VERSION)
IMAGE_LICENSES ?= Apache-2.0 AND (GPL-2.0-only OR BSD-2-Clause)
IMAGE_SOURCE   ?= https://github.com/weir-project/weir
export WEIR_IMAGE_REPO = $(IMAGE_REPO)
export WEIR_IMAGE_TAG  = $(IMAGE_TAG)
images:
	@mkdir -p $(BIN)/static $(BIN)/images
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN)/static/ \
	  github.com/weir-project/weir/collector/cmd/weir-collector \
	  github.com/weir-project/weir/reducer/cmd/weir-reducer \
	  github.com/weir-project/weir/reducer/cmd/weirctl \
	  github.com/weir-project/weir/k8s-watcher/cmd/weir-k8s-watcher
	$(GO) run github.com/weir-project/weir/test/cmd/weir-images --bin-dir $(BIN)/static --out-dir $(BIN)/images \
	  --repo $(IMAGE_REPO) --tag $(IMAGE_TAG) --version $(VERSION) --licenses "$(IMAGE_LICENSES)" --source $(IMAGE_SOURCE) \
	  --revision "$$(git rev-parse HEAD 2>/dev/null || echo unknown)" --created "$$(git log -1 --format=%ct 2>/dev/null)" \
	  --ca-certs "$$(test -f /etc/ssl/certs/ca-certificates.crt && echo /etc/ssl/certs/ca-certificates.crt)"

## generate: rebuild the bpf2go output and the protobuf Go code
generate: generate-bpf generate-proto

tools-apt:
	@command -v clang >/dev/null && command -v bpftool >/dev/null && test -f /usr/include/bpf/bpf_helpers.h || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm bpftool libbpf-dev; }

tools-go:
	@mkdir -p $(TOOLS)
	@test -x $(TOOLS)/buf || GOWORK=off GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@test -x $(TOOLS)/protoc-gen-go || GOWORK=off GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@test -x $(TOOLS)/protoc-gen-go-grpc || GOWORK=off GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GRPC_VER)

tools-lint:
	@mkdir -p $(TOOLS)
	@test -x $(TOOLS)/golangci-lint || GOWORK=off GOBIN=$(TOOLS) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

generate-bpf: tools-apt
	cd collector && $(GO) generate ./internal/probe/

generate-proto: tools-go
	cd proto && PATH=$(TOOLS):$$PATH buf lint && PATH=$(TOOLS):$$PATH buf generate

## test: unit, privileged (real BPF on this kernel) and end-to-end tests; benchmarks run once so they keep compiling
test: build images
	@command -v ip >/dev/null && command -v nft >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables; }
	@# test/mappage draws the /map page in Debian's headless Chromium.
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell; }
	@# Module packages (unit tests, and the collector's privileged tests) run side by side.
	WEIR_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 20m $(UNIT_PKGS)
	@# The system tests under test/ run one package at a time: each starts real collectors that
	@# see every socket on the machine, and exact counts need the machine to themselves.
	@# test/k8s runs last: a control plane starting takes both cores for seconds. Its first run
	@# builds the control plane into ~/.cache/weir/k8s (about 12 min).
	WEIR_BIN_DIR=$(BIN) $(GO) test -p 1 -count=1 -timeout 30m $$($(GO) list $(SYSTEM_PKGS) | grep -v -e '^$(K8S_TESTS)$$' -e '^$(CLUSTER_TESTS)$$')
	WEIR_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 30m -bench . -benchtime=1x $(K8S_TESTS)
	@# test/cluster: the Helm chart (lint, template, schema, flags), then installed on a real
	@# single-node Kubernetes (containerd, runc and the CNI plugins from Debian; kube-scheduler and
	@# kubelet built beside test/k8s's control plane, helm into ~/.cache/weir/bin).
	@command -v containerd >/dev/null && command -v runc >/dev/null && test -x /usr/lib/cni/bridge || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc containernetworking-plugins; }
	WEIR_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 30m $(CLUSTER_TESTS)
	@# Every benchmark once, so that they keep compiling and working.
	WEIR_BIN_DIR=$(BIN) $(GO) test -p 1 -count=1 -run '^$$' -bench . -benchtime=1x $$($(GO) list $(PKGS) | grep -v -e '^$(K8S_TESTS)$$' -e '^$(CLUSTER_TESTS)$$')
	@# The collector's privileged tests on Debian's 5.10, 6.1, 6.12 and arm64 6.1 kernels under qemu;
	@# a first run fetches the kernels, qemu and the guests' userland (about 1 min, then cached).
	$(MAKE) test-kernels

## test-kernels: the collector's privileged tests on Debian's 5.10, 6.1 and 6.12 (amd64) and 6.1 (arm64)
#   kernels under qemu (TCG), one guest per kernel, all four at once (test/kernels). Kernels, qemu and the
#   guests' userland come from Debian (apt-get) and are cached under $(CACHE)/kernels.
test-kernels:
	cd test && $(GO) run ./kernels -cache $(CACHE)/kernels

## run: start a reducer and a collector on this machine; Ctrl-C stops both
run: build
	@if [ "$$(id -u)" != 0 ]; then \
	  if command -v sudo >/dev/null; then exec sudo $(MAKE) run; fi; \
	  echo "make run: the collector loads eBPF programs and needs root" >&2; exit 1; \
	fi; \
	trap 'kill $$R $$C 2>/dev/null; wait $$R $$C 2>/dev/null; echo; echo "weir stopped"' EXIT; \
	trap 'STOP=1' INT TERM; \
	$(BIN)/weir-reducer --grpc-addr $(REDUCER_GRPC) --http-addr $(REDUCER_HTTP) & R=$$!; \
	$(BIN)/weir-collector --reducer $(REDUCER_GRPC) --interval $(INTERVAL) & C=$$!; \
	sleep 1; \
	echo; \
	echo "weir is running (reducer pid $$R, collector pid $$C)"; \
	echo "  reducer   http://localhost:7010/metrics  http://localhost:7010/healthz"; \
	echo "  collector http://127.0.0.1:7011/metrics  http://127.0.0.1:7011/healthz"; \
	echo "  try:      curl -s localhost:7010/metrics | grep weir_tcp"; \
	echo "Ctrl-C stops both."; \
	wait -n $$R $$C; \
	if [ -n "$$STOP" ]; then exit 0; fi; \
	echo "a weir process exited on its own; stopping the other" >&2; exit 1

## bench: the hot-path benchmarks and the end-to-end figures; P<n> and bpf-ns lines also land in bench/results.txt
#   (P<n> lines that a benchmark prints itself pass through; the simulated fleet's P5 is shown as P5-fleet)
#   (WEIR_BENCH_FULL=1: the overhead benchmark runs its full 5 interleaved pairs of 5 s windows per load;
#    -p 1: one package's benchmarks at a time, so that none measures while another loads the machine)
#   (then P1 and P1-churn on the fallback paths fentry and hashmap inside Debian's 6.1 kernel under qemu TCG,
#    test/kernels -bench: P1-guest-6.1-<path> lines, only indicative; about 20 min)
bench: build
	@mkdir -p bench
	@# The figures are printed even when a benchmark fails; the target fails afterwards.
	WEIR_BIN_DIR=$(BIN) WEIR_BENCH_FULL=1 $(GO) test -p 1 -timeout 30m -run '^$$' -bench . -benchmem -count=1 $(PKGS) \
	  | tee bench/raw.txt; status=$$?; \
	WEIR_BIN_DIR=$(BIN) $(GO) test -run '^$$' -bench 'FirstByteToEdge' -benchtime=8x -count=1 \
	  github.com/weir-project/weir/test/e2e | tee -a bench/raw.txt || status=1; \
	(cd test && $(GO) run ./kernels -bench -cache $(CACHE)/kernels) | tee -a bench/raw.txt || status=1; \
	awk '$$1 ~ /^BenchmarkPrivilegedOverhead-/ { for (i = 3; i < NF; i++) { u = $$(i+1); \
	    if (u == "ratio") p1 = $$i; if (u == "ratio-min") p1lo = $$i; if (u == "ratio-max") p1hi = $$i; \
	    if (u == "churn-ratio") pc = $$i; if (u == "churn-ratio-min") pclo = $$i; if (u == "churn-ratio-max") pchi = $$i; \
	    if (u == "collector-mcores") p2 = $$i; if (u == "collector-ns/request") p2ns = $$i; \
	    if (u ~ /^bpf-ns\/run:/) { name = substr(u, 12); if (!(name in bpf)) order[++nb] = name; bpf[name] = $$i } } } \
	  $$1 ~ /^BenchmarkPrivilegedOverheadFloor-/ { for (i = 3; i < NF; i++) { u = $$(i+1); \
	    if (u == "floor-churn-ratio") fl = $$i; if (u == "minimal-churn-ratio") mn = $$i; \
	    if (u == "churn-ratio") flc = $$i; if (u == "minimal-bpf-ns/run") mnns = $$i } } \
	  $$1 ~ /^BenchmarkPrivilegedWireBytesPerUpdate/ { for (i = 3; i < NF; i++) if ($$(i+1) == "B/update") p5 = $$i } \
	  $$1 ~ /^BenchmarkPrivilegedFirstByteToEdge/ { for (i = 3; i < NF; i++) if ($$(i+1) == "s/edge-max") p6 = $$i } \
	  /^P[0-9]+(-[A-Za-z0-9]+)? / { k = $$1; if (k == "P5") { sub(/^P5 /, "P5-fleet "); k = "P5-fleet" } \
	    if (!(k in pt)) pord[++np] = k; pt[k] = $$0 } \
	  END { if (p1 != "") printf "P1 %s ratio (spread %s–%s)\n", p1, p1lo, p1hi; \
	        if (pc != "") printf "P1-churn %s ratio (spread %s–%s)\n", pc, pclo, pchi; \
	        if (fl != "") printf "P1-churn-floor %s ratio with the collector'"'"'s programs and nothing else, %s with floor_minimal (%s ns/run), %s with the collector in the same runs\n", fl, mn, mnns, flc; \
	        if (p2 != "") printf "P2 %s millicores (%s ns/request)\n", p2, p2ns; \
	        for (k = 1; k <= nb; k++) printf "bpf-ns %s %s\n", order[k], bpf[order[k]]; \
	        for (k = 1; k <= np; k++) if (pord[k] ~ /^P[34]/) print pt[pord[k]]; \
	        if (p5 != "") print "P5", p5, "B/update"; if ("P5-fleet" in pt) print pt["P5-fleet"]; \
	        if (p6 != "") print "P6", p6, "s"; \
	        for (k = 1; k <= np; k++) if (pord[k] !~ /^P[345]/) print pt[pord[k]] }' bench/raw.txt | tee bench/results.txt; \
	grep -E '^P1(-churn)?-guest-' bench/raw.txt | tee -a bench/results.txt; \
	exit $$status

## lint: go vet, golangci-lint (.golangci.yml), gofmt, buf lint
lint: tools-go tools-lint
	$(GO) vet $(PKGS)
	for m in collector reducer k8s-watcher test; do (cd $$m && $(TOOLS)/golangci-lint run --config ../.golangci.yml ./...) || exit 1; done
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	cd proto && PATH=$(TOOLS):$$PATH buf lint

clean:
	rm -rf $(BIN)
