# ltsp-unionfs — see README.md.
#
#   make            build the static binary ./ltsp-unionfs
#   make demo       build, then mount a union over a sample tree and show what it does
#   make test       the full gate: gofmt, go vet, staticcheck, go test -race (root and /dev/fuse for all of it)
#   make install    install the binary, the mount(8) helper link, man pages, completions, the dracut module and
#                   the initramfs-tools hook
#   make deb        build the Debian source and binary packages into $(BUILDDIR)/deb and run lintian on them
#   make rpm        build the RPM source and binary packages into $(BUILDDIR)/rpm (rpmbuild)
#   make docs       generate the man pages and shell completions into $(BUILDDIR)
#   make fuzz       run every go test -fuzz target for $(FUZZTIME) each (CI runs only their seed corpora)
#   make bench      run the benchmark against overlayfs and the FUSE peers (root; see benchmarks/RESULTS.md)
#   make bench-quick  the same in under 3 minutes: one repetition, short fio runs, no dpkg workload
#   make vm-test    boot real diskless clients under qemu on the union and check them from inside (root; see README)
#   make stress     the long runs of the stress, fsx, differential and load tests (root; STRESS_TIME, default 1h)

SHELL       := /bin/bash
GO          ?= go
# /usr, not /usr/local: dracut and mount.fuse3 look for the program in /usr/bin, /usr/sbin, /bin and /sbin only.
PREFIX      ?= /usr
SBINDIR     ?= /sbin
DRACUTDIR   ?= /usr/lib/dracut/modules.d
INITRAMFSDIR ?= /usr/share/initramfs-tools
# The root script both initramfs generators run (initramfs-tools' hook takes it from here).
LIBDIR      ?= $(PREFIX)/lib/ltsp-unionfs
DESTDIR     ?=
# Generated documentation (man pages, completions) is built here before it is installed.
BUILDDIR    ?= build
MANDIR      ?= $(PREFIX)/share/man/man8
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
FUZZTIME    ?= 10s
# e.g. FUZZFLAGS=-parallel=1 on a shared machine
FUZZFLAGS   ?=
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.7.0
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)

# A static binary that needs nothing from the filesystem once started (it must outlive switch_root).
export CGO_ENABLED = 0
LDFLAGS = -s -w -X main.version=$(VERSION)

.PHONY: all build demo test vet staticcheck fmt-check gotest install clean bench bench-quick bench-deps
.PHONY: docs fuzz stress vm-test vm-test-deps deb deb-deps rpm srcdir

all: build docs

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o ltsp-unionfs ./cmd/ltsp-unionfs

# The man pages and completions come from the command tree itself (ltsp-unionfs gen), so they cannot drift from it.
docs: build
	rm -rf $(BUILDDIR)/man $(BUILDDIR)/completion
	./ltsp-unionfs gen man $(BUILDDIR)/man
	mkdir -p $(BUILDDIR)/completion
	./ltsp-unionfs gen completion bash > $(BUILDDIR)/completion/ltsp-unionfs.bash
	./ltsp-unionfs gen completion zsh > $(BUILDDIR)/completion/_ltsp-unionfs
	./ltsp-unionfs gen completion fish > $(BUILDDIR)/completion/ltsp-unionfs.fish

# Every Fuzz function of the tree, each for FUZZTIME (go test -fuzz takes one target of one package at a time).
fuzz:
	@set -e; for f in $$(git ls-files '*_test.go'); do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "== $$t ($$(dirname $$f), $(FUZZTIME))"; \
			$(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) $(FUZZFLAGS) ./$$(dirname $$f); \
		done; \
	done

demo: build
	./scripts/demo.sh ./ltsp-unionfs

test: fmt-check vet staticcheck gotest

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run $(STATICCHECK) ./...

# The race detector needs cgo. One package at a time (-p 1): some tests drop the kernel's caches or load the
# machine, which must not land in the middle of another package's stress run.
# The tests make their directories below a fresh TMPDIR of this run, and no test may leave a mount there. Only
# this run's directory is checked: a mount left by some other run on the machine (an interrupted one) is not
# this run's failure. The directory is removed when nothing is left mounted in it.
gotest:
	@dir=$$(mktemp -d /tmp/lut.XXXXXX) && chmod 755 $$dir || exit 1; \
	echo "CGO_ENABLED=1 TMPDIR=$$dir $(GO) test -race -count=1 -p 1 -timeout 20m ./..."; \
	CGO_ENABLED=1 TMPDIR=$$dir $(GO) test -race -count=1 -p 1 -timeout 20m ./...; rc=$$?; \
	left=$$(awk -v d="$$dir/" 'index($$2, d) == 1' /proc/self/mounts); \
	if [ -n "$$left" ]; then echo "tests left mounts behind:"; echo "$$left"; exit 1; fi; \
	rm -rf $$dir; exit $$rc

# The peers and tools the benchmark runs, from Debian's packages; installed only when missing.
BENCH_DEPS = fuse-overlayfs:fuse-overlayfs unionfs:unionfs-fuse mergerfs:mergerfs fio:fio \
	debootstrap:debootstrap mksquashfs:squashfs-tools fusermount3:fuse3
bench-deps:
	@missing=; for d in $(BENCH_DEPS); do command -v $${d%%:*} >/dev/null || missing="$$missing $${d##*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi

bench: bench-deps
	$(GO) run ./benchmarks $(BENCHFLAGS)

bench-quick: bench-deps
	$(GO) run ./benchmarks --quick $(BENCHFLAGS)

# The VM boot test (vmtest/): its tools from Debian's packages, installed only when missing. The guest's base image
# is cached in /var/cache/ltsp-unionfs-vmtest; VMTESTFLAGS passes flags (e.g. --boots nbd,control --keep).
VMTEST_PKGS = qemu-system-x86 nbdkit nfs-ganesha nfs-ganesha-vfs debootstrap squashfs-tools
vm-test-deps:
	@missing=$$(for p in $(VMTEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi

# The guest gets the project from its Debian package, as users do (VMTESTFLAGS=-deb= for make install instead).
vm-test: vm-test-deps deb
	$(GO) run ./vmtest -deb $(BUILDDIR)/deb/ltsp-unionfs_$(PKGVERSION)_$(DEB_ARCH).deb $(VMTESTFLAGS)

# The tests CI runs briefly, run long: concurrent stress workers against kernel overlayfs for most of
# STRESS_TIME, then fsx, the differential fuzzer, the many-clients load test and every go test -fuzz target, then
# the memory-pressure test for PRESSURE_TIME (so the whole takes about both). The log goes to stress.log; its
# summary belongs in README's "What was tried" table.
STRESS_TIME   ?= 1h
PRESSURE_TIME ?= $(STRESS_TIME)
STRESS_LOG    ?= stress.log
stress:
	@secs=$$(CGO_ENABLED=1 $(GO) run ./internal/testutil/cmd/seconds $(STRESS_TIME)); \
	stress=$$((secs * 3 / 4))s; load=$$((secs / 8))s; \
	set -o pipefail; { \
	echo "make stress: STRESS_TIME=$(STRESS_TIME) on $$(uname -r), $$(nproc) CPUs, commit $(VERSION), $$(date -u)"; \
	LTSP_UNIONFS_REQUIRE_FUSE=1 LTSP_UNIONFS_STRESS_DURATION=$$stress LTSP_UNIONFS_FSX_OPS=100000 \
	LTSP_UNIONFS_DIFF_SEEDS=30 CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 0 -v \
		-run '^(TestStress|TestFsx|TestDifferentialRandom|TestConcurrentCopyUpOfLargeFile)$$' ./unionfs && \
	LTSP_UNIONFS_REQUIRE_FUSE=1 LTSP_UNIONFS_LOAD_DURATION=$$load $(GO) test -count=1 \
		-timeout 0 -v -run '^TestManyClientsNoLeak$$' ./cmd/ltsp-unionfs && \
	$(MAKE) --no-print-directory fuzz FUZZTIME=$$((secs / 80))s && \
	LTSP_UNIONFS_REQUIRE_FUSE=1 LTSP_UNIONFS_PRESSURE_DURATION=$(PRESSURE_TIME) $(GO) test -count=1 \
		-timeout 0 -v -run '^TestMemoryPressure$$$$' ./cmd/ltsp-unionfs; \
	} 2>&1 | tee $(STRESS_LOG) | grep -E '^(make stress|--- |ok|FAIL|PASS|== Fuzz|fuzz: elapsed)|(stress|fsx|load|diff|pressure)_test.go'

install: build docs
	install -D -m 0755 ltsp-unionfs $(DESTDIR)$(PREFIX)/bin/ltsp-unionfs
	install -d $(DESTDIR)$(SBINDIR)
	ln -sf $(PREFIX)/bin/ltsp-unionfs $(DESTDIR)$(SBINDIR)/mount.fuse.ltsp-unionfs
	install -d $(DESTDIR)$(MANDIR)
	install -m 0644 $(BUILDDIR)/man/*.8 $(DESTDIR)$(MANDIR)/
	ln -sf ltsp-unionfs.8 $(DESTDIR)$(MANDIR)/mount.fuse.ltsp-unionfs.8
	install -D -m 0644 $(BUILDDIR)/completion/ltsp-unionfs.bash $(DESTDIR)$(BASHCOMPDIR)/ltsp-unionfs
	install -D -m 0644 $(BUILDDIR)/completion/_ltsp-unionfs $(DESTDIR)$(ZSHCOMPDIR)/_ltsp-unionfs
	install -D -m 0644 $(BUILDDIR)/completion/ltsp-unionfs.fish $(DESTDIR)$(FISHCOMPDIR)/ltsp-unionfs.fish
	install -d $(DESTDIR)$(DRACUTDIR)/90ltsp-unionfs
	install -m 0755 dracut/90ltsp-unionfs/*.sh $(DESTDIR)$(DRACUTDIR)/90ltsp-unionfs/
	install -m 0644 dracut/90ltsp-unionfs/*.service $(DESTDIR)$(DRACUTDIR)/90ltsp-unionfs/
	install -D -m 0755 dracut/90ltsp-unionfs/ltsp-unionfs-root.sh $(DESTDIR)$(LIBDIR)/ltsp-unionfs-root
	install -D -m 0755 initramfs-tools/hooks/ltsp-unionfs $(DESTDIR)$(INITRAMFSDIR)/hooks/ltsp-unionfs
	install -D -m 0755 initramfs-tools/scripts/ltsp-unionfs-bottom \
		$(DESTDIR)$(INITRAMFSDIR)/scripts/local-bottom/ltsp-unionfs
	install -D -m 0755 initramfs-tools/scripts/ltsp-unionfs-bottom \
		$(DESTDIR)$(INITRAMFSDIR)/scripts/nfs-bottom/ltsp-unionfs

# The packages are built from a copy of the files git knows (tracked, and untracked ones it does not ignore), so
# that local leftovers (binaries, logs) stay out of the source packages; Go's caches are this machine's.
PKGVERSION = $(shell head -1 debian/changelog | cut -d'(' -f2 | cut -d')' -f1)
GOCACHES   = GOCACHE=$$($(GO) env GOCACHE) GOMODCACHE=$$($(GO) env GOMODCACHE)

# srcdir copies the tree as git knows it to $(SRCDIR).
srcdir:
	rm -rf $(SRCDIR) && mkdir -p $(SRCDIR)
	git ls-files -z --cached --others --exclude-standard | \
		while IFS= read -r -d '' f; do [ -e "$$f" ] && printf '%s\0' "$$f"; done | \
		tar --null -T - -c | tar -x -C $(SRCDIR)

DEB_PKGS = dpkg-dev debhelper lintian fakeroot
DEB_ARCH = $(shell dpkg --print-architecture 2>/dev/null)
deb-deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi

deb: deb-deps
	rm -rf $(BUILDDIR)/deb
	$(MAKE) --no-print-directory srcdir SRCDIR=$(BUILDDIR)/deb/ltsp-unionfs-$(PKGVERSION)
	cd $(BUILDDIR)/deb/ltsp-unionfs-$(PKGVERSION) && $(GOCACHES) dpkg-buildpackage -us -uc
	lintian --fail-on error,warning --info $(BUILDDIR)/deb/*.changes
	@ls -l $(BUILDDIR)/deb/*.deb

rpm:
	rm -rf $(BUILDDIR)/rpm
	$(MAKE) --no-print-directory srcdir SRCDIR=$(BUILDDIR)/rpm/ltsp-unionfs-$(PKGVERSION)
	mkdir -p $(BUILDDIR)/rpm/SOURCES
	tar -C $(BUILDDIR)/rpm -czf $(BUILDDIR)/rpm/SOURCES/ltsp-unionfs-$(PKGVERSION).tar.gz ltsp-unionfs-$(PKGVERSION)
	@grep -q '^Version: *$(PKGVERSION)$$' rpm/ltsp-unionfs.spec || \
		{ echo "rpm/ltsp-unionfs.spec: Version differs from debian/changelog's $(PKGVERSION)" >&2; exit 1; }
	@# --nodeps where the build dependencies are no RPM packages (building on Debian)
	$(GOCACHES) rpmbuild -ba $$(rpm -q make >/dev/null 2>&1 || echo --nodeps) \
		--define "_topdir $(abspath $(BUILDDIR)/rpm)" rpm/ltsp-unionfs.spec
	@ls -l $(BUILDDIR)/rpm/RPMS/*/*.rpm

clean:
	rm -f ltsp-unionfs
	rm -rf $(BUILDDIR)
