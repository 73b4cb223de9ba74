# Everything runs from a fresh clone with only Go installed.
SHELL       := bash
.SHELLFLAGS := -eu -o pipefail -c
GO          ?= go
VERSION     ?= v0.1.0
PLUGIN      := vault-plugin-secrets-instacart
MODULE      := github.com/instacart-vault/vault-plugin-secrets-instacart
LDFLAGS     := -s -w -X $(MODULE)/version.version=$(VERSION)
BIN         := .bin
PLUGIN_DIR  := $(BIN)/plugins
FUZZTIME    ?= 5s
SEEDS       ?= 2000
DIST        ?= dist
# Go modules of their own (the root's ./... does not enter them): linted, and
# unit-tested where they have tests, with the root module.
SUBMODULES  := tokensource examples/app-go
# Node >= 18 and npm run e2e TestClientNodeVault (examples/app-node); without
# them that test is skipped, and make says so at the end instead of passing quietly.
NODE_OK      = $(shell node -e 'process.exit(parseInt(process.versions.node) >= 18 ? 0 : 1)' >/dev/null 2>&1 && command -v npm >/dev/null && echo yes)
NODE_NOTE   := NOTE: Node >= 18 and npm not found: the node-vault example test (e2e TestClientNodeVault, examples/app-node) was skipped

.DEFAULT_GOAL := build
.PHONY: build plugin fake vault test test-unit test-fuzz test-e2e test-bench-smoke explore demo dev fmt fmtcheck vet tidycheck lint fuzz release bench clean

## build: the plugin (into .bin/plugins) and the Connect fake (into .bin)
build: plugin fake

plugin:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(PLUGIN_DIR)/$(PLUGIN) ./cmd/$(PLUGIN)

fake:
	$(GO) build -o $(BIN)/connect-fake ./cmd/connect-fake

## vault: build Vault v1.21.0 from source once and cache it at .bin/vault
vault:
	@scripts/vault.sh

## test: lint, unit tests with -race, a short fuzz run, the end-to-end suite in a real Vault,
## and a smoke run of the benchmark program (it builds and completes; no figures)
test: lint test-unit test-fuzz test-e2e test-bench-smoke
	@echo "make test: lint, unit, fuzz, e2e and bench-smoke passed"
	@$(if $(NODE_OK),true,echo "$(NODE_NOTE)")

test-unit:
	$(GO) test -race -count=1 ./...
	cd tokensource && $(GO) test -race -count=1 ./...

## explore: the schedule explorer on more seeds than test-unit runs (make explore SEEDS=10000);
## a failing seed replays with EXPLORE_SEED=<n> go test -race -run '^TestLifecycleExplorer$$' -v .
explore:
	EXPLORE_SEEDS=$(SEEDS) $(GO) test -race -run '^TestLifecycleExplorer$$' -count=1 -timeout 0 .

test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRoleWrite$$' -fuzztime $(FUZZTIME) .
	$(GO) test -run '^$$' -fuzz '^FuzzAssertionUserID$$' -fuzztime $(FUZZTIME) .

test-e2e: vault
	$(GO) test -tags e2e -count=1 -timeout 40m -v ./e2e/
	@$(if $(NODE_OK),true,echo "$(NODE_NOTE)")

test-bench-smoke: vault
	$(GO) test -tags bench -count=1 -timeout 10m ./bench/

## bench: the benchmark on inmem and raft Vault → bench/results/ (~23 min)
bench: vault
	$(GO) run ./bench

## demo: start Vault + the Connect fake, issue a token per grant, revoke one, stop
demo: build vault
	@scripts/demo.sh demo

## dev: the demo's set-up, left running (INSTACART_BASE_URL=... for a real Connect host)
dev: build vault
	@scripts/demo.sh dev

fmt:
	gofmt -w $$(git ls-files '*.go')

fmtcheck:
	@scripts/gofmtcheck.sh

vet:
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/
	$(GO) vet -tags bench ./bench/
	for m in $(SUBMODULES); do (cd $$m && $(GO) vet ./...); done

tidycheck:
	@for m in . $(SUBMODULES); do \
	  (cd $$m && $(GO) mod tidy -diff >/dev/null) || { echo "$$m: go.mod/go.sum are not tidy: run go mod tidy in $$m"; (cd $$m && $(GO) mod tidy -diff); exit 1; }; \
	done

lint: fmtcheck vet tidycheck

## fuzz: longer fuzzing (FUZZTIME=10m make fuzz)
fuzz: FUZZTIME = 2m
fuzz: test-fuzz

## release: cross-compiled binaries and SHA256SUMS in dist/
release:
	rm -rf $(DIST) && mkdir -p $(DIST)
	for os in linux darwin; do for arch in amd64 arm64; do \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" \
	    -o $(DIST)/$(PLUGIN)_$(VERSION)_$${os}_$${arch} ./cmd/$(PLUGIN) || exit 1; \
	done; done
	cd $(DIST) && sha256sum $(PLUGIN)_* > SHA256SUMS && cat SHA256SUMS

clean:
	rm -rf dist $(PLUGIN_DIR) $(BIN)/connect-fake
