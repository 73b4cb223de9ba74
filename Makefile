# Everything runs from a fresh clone with only Go installed.
SHELL       := bash
.SHELLFLAGS := -eu -o pipefail -c
GO          ?= go
# VERSION is the version the plugin reports to Vault. It names the file too
# (vault-plugin-secrets-instacart-$(VERSION)), so versions sit side by side in a
# plugin directory and the README's `vault plugin register -version=... -command=...`
# names exactly what `make build VERSION=...` and `make release VERSION=...` wrote.
# Its default comes from its one source, version/version.go: the next release
# with -dev (v0.2.0-dev) between releases, the release's own number only on the
# release commit (docs/releasing.md).
VERSION     ?= $(shell scripts/version.sh)
PLUGIN      := vault-plugin-secrets-instacart
PLUGIN_FILE  = $(PLUGIN)-$(VERSION)
MODULE      := github.com/instacart-vault/vault-plugin-secrets-instacart
LDFLAGS     := -s -w -X $(MODULE)/version.version=$(VERSION)
BIN         := .bin
PLUGIN_DIR  := $(BIN)/plugins
FUZZTIME    ?= 5s
SEEDS       ?= 2000
DIST        ?= dist
# Go modules of their own (the root's ./... does not enter them): linted, and
# unit-tested where they have tests, with the root module.
SUBMODULES  := tokensource examples/app-go e2e/tsclient tools/dashboard
# Node >= 18 and npm run the examples/app-node unit tests (node --test) and e2e
# TestClientNodeVault*; without them those tests are skipped, and make says so at
# the end instead of passing quietly.
NODE_OK      = $(shell node -e 'process.exit(parseInt(process.versions.node) >= 18 ? 0 : 1)' >/dev/null 2>&1 && command -v npm >/dev/null && echo yes)
NODE_NOTE   := NOTE: Node >= 18 and npm not found: the node-vault example tests (examples/app-node unit tests, e2e TestClientNodeVault*) were skipped
# Debian's prometheus package (prometheus and promtool) runs the alert rule tests (test-prometheus) and
# e2e TestPrometheusScrapesVault / TestPrometheusAlertRules; make prometheus installs it where apt-get runs as
# root. The tests start their own Prometheus on a free port, so the package's service, running or not, is
# never used. Without it those parts are skipped, and make says so at the end.
PROM_OK      = $(shell command -v prometheus >/dev/null && command -v promtool >/dev/null && echo yes)
PROM_NOTE   := NOTE: prometheus and promtool not found, and not installable here (Debian: apt-get install prometheus, as root): promtool check/test rules (make test-prometheus) and e2e TestPrometheusScrapesVault and TestPrometheusAlertRules were skipped

.DEFAULT_GOAL := build
.PHONY: build plugin versioncheck releasecheck version fake vault dashboard prometheus test test-unit test-fuzz test-prometheus test-e2e test-bench-smoke chaos explore demo dev fmt fmtcheck vet tidycheck lint fuzz release bench clean

## build: the plugin (into .bin/plugins/vault-plugin-secrets-instacart-$(VERSION), with
## its sha256) and the Connect fake (into .bin). VERSION defaults to version/version.go's
## (v0.2.0-dev between releases); make build VERSION=v0.2.0-dev.2 names another build
build: plugin fake

plugin: versioncheck
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(PLUGIN_DIR)/$(PLUGIN_FILE) ./cmd/$(PLUGIN)
	@sha256sum $(PLUGIN_DIR)/$(PLUGIN_FILE)

# A semantic version with a leading v, as Vault's catalog shows versions and the
# README registers them; the registered -version must equal the one the binary
# reports, or Vault refuses to run it ("plugin version mismatch").
versioncheck:
	@[[ "$(VERSION)" =~ ^v[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$$ ]] || \
	  { echo "VERSION=$(VERSION) is not a semantic version with a leading v, e.g. VERSION=v0.2.0" >&2; exit 1; }

# A -dev version is a build of unreleased code: it is never published as a release.
releasecheck:
	@[[ "$(VERSION)" != *-dev* ]] || \
	  { echo "VERSION=$(VERSION) is a development version: release from the commit that sets version/version.go to the release (docs/releasing.md)" >&2; exit 1; }

## version: print the version make build stamps by default (from version/version.go)
version:
	@echo $(VERSION)

fake:
	$(GO) build -o $(BIN)/connect-fake ./cmd/connect-fake

## vault: build Vault v1.21.0 from source once and cache it at .bin/vault
vault:
	@scripts/vault.sh

## test: lint, unit tests with -race, a short fuzz run, the end-to-end suite in a real Vault,
## and a smoke run of the benchmark program (it builds and completes; no figures)
test: lint test-unit test-fuzz test-prometheus test-e2e test-bench-smoke
	@echo "make test: lint, unit, fuzz, prometheus rules, e2e and bench-smoke passed"
	@$(if $(NODE_OK),true,echo "$(NODE_NOTE)")
	@$(if $(PROM_OK),true,echo "$(PROM_NOTE)")

test-unit:
	$(GO) test -race -count=1 -tags explore ./...
	cd tokensource && $(GO) test -race -count=1 ./...
	cd tools/dashboard && $(GO) test -count=1 ./...
	$(if $(NODE_OK),cd examples/app-node && node --test app.test.js,@echo "$(NODE_NOTE)")

## explore: the schedule explorer on more seeds than test-unit runs (make explore SEEDS=10000);
## a failing seed replays with EXPLORE_SEED=<n> go test -tags explore -race -run '^TestLifecycleExplorer$$' -v .
explore:
	EXPLORE_SEEDS=$(SEEDS) $(GO) test -tags explore -race -run '^TestLifecycleExplorer$$' -count=1 -timeout 0 .

test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRoleWrite$$' -fuzztime $(FUZZTIME) .
	$(GO) test -run '^$$' -fuzz '^FuzzAssertionUserID$$' -fuzztime $(FUZZTIME) .

## dashboard: regenerate examples/grafana/dashboard.json from tools/dashboard (never edit it by
## hand: test-unit fails when the two differ)
dashboard:
	cd tools/dashboard && $(GO) run . -out ../../examples/grafana/dashboard.json

## prometheus: Debian's prometheus package (prometheus, promtool), installed with apt-get where run as root
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's prometheus package (prometheus, promtool) for the Prometheus tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus; } \
	    || echo "$(PROM_NOTE)"; \
	else echo "$(PROM_NOTE)"; fi

## test-prometheus: promtool check rules and test rules on examples/prometheus/alerts.yml
test-prometheus: prometheus
	@if command -v promtool >/dev/null; then \
	  promtool check rules examples/prometheus/alerts.yml && promtool test rules examples/prometheus/alerts_test.yml; \
	else echo "NOTE: no promtool: the alert rules were not checked (see the NOTE above)"; fi

test-e2e: vault prometheus
	E2E_REQUIRE_PROMETHEUS=$(if $(PROM_OK),1,0) $(GO) test -tags e2e -count=1 -timeout 40m -v ./e2e/
	@$(if $(NODE_OK),true,echo "$(NODE_NOTE)")
	@$(if $(PROM_OK),true,echo "$(PROM_NOTE)")

test-bench-smoke: vault
	$(GO) test -tags bench -count=1 -timeout 10m ./bench/

## chaos: 3 raft nodes under concurrent reads of shared, per-user and exclusive roles at every
## node while the active node is killed (SIGKILL) 3 times and frozen (SIGSTOP 15 s) twice, Connect
## answering late; prints the counts (~3 min; not part of make test)
chaos: vault
	$(GO) test -tags e2e,chaos -run '^TestChaosRaft$$' -count=1 -timeout 20m -v ./e2e/

## bench: the benchmark on inmem and raft Vault → bench/results/ (~40 min). USERS is the
## shoppers of scenario 10 on the dev server and of its tidy on raft (scenario 8 on raft
## takes at most 100,000): make bench USERS=1000000 (about an hour more; not in CI).
## BENCH_ONLY runs only some parts, comma-separated: main (1-8), floor (9), users (10):
## make bench USERS=1000000 BENCH_ONLY=users
USERS      ?= 100000
BENCH_ONLY ?=
bench: vault
	$(GO) run ./bench -users $(USERS)$(if $(BENCH_ONLY), -only $(BENCH_ONLY))

## demo: start Vault + the Connect fake, issue a token per grant, revoke one, stop
demo: build vault
	@VERSION=$(VERSION) DEMO_BIN=$(BIN) scripts/demo.sh demo

## dev: the demo's set-up, left running (INSTACART_BASE_URL=... for a real Connect host)
dev: build vault
	@VERSION=$(VERSION) DEMO_BIN=$(BIN) scripts/demo.sh dev

fmt:
	gofmt -w $$(git ls-files '*.go')

fmtcheck:
	@scripts/gofmtcheck.sh

vet:
	$(GO) vet ./...
	$(GO) vet -tags explore .
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

## release: cross-compiled binaries, one directory per platform, each holding the file
## as it is registered (dist/linux_amd64/vault-plugin-secrets-instacart-$(VERSION)),
## and dist/SHA256SUMS (check with: cd dist && sha256sum -c SHA256SUMS). Run on the
## release commit, whose version/version.go names the release (docs/releasing.md)
release: versioncheck releasecheck
	rm -rf $(DIST) && mkdir -p $(DIST)
	for os in linux darwin; do for arch in amd64 arm64; do \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" \
	    -o $(DIST)/$${os}_$${arch}/$(PLUGIN_FILE) ./cmd/$(PLUGIN) || exit 1; \
	done; done
	cd $(DIST) && sha256sum */$(PLUGIN_FILE) > SHA256SUMS && cat SHA256SUMS

clean:
	rm -rf dist $(PLUGIN_DIR) $(BIN)/connect-fake
