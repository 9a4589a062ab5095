# Packages of pghoard for Node.js.
#   make deb   → dist/pkg/pghoard-node_<version>_<arch>.deb   (dpkg-deb)
#   make rpm   → dist/pkg/pghoard-node-<version>-1.<arch>.rpm (rpmbuild)
# Both install the compiled dist/ and the production node_modules under /usr/lib/pghoard, the six
# commands as /usr/bin wrappers (a link for pghoard_postgres_command), the systemd unit and /var/lib/pghoard owned by postgres; they depend
# on the system's nodejs >= 20. An existing dist/ is used as is (`make build` recompiles).

SHELL := /bin/bash
NAME := pghoard-node
VERSION := $(shell node -p 'require("./package.json").version')
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
RPM_ARCH := $(shell uname -m)
PKG_DIR := dist/pkg
STAGE := $(PKG_DIR)/stage
LIBDIR := /usr/lib/pghoard
COMMANDS := pghoard pghoard_restore pghoard_archive_cleanup pghoard_archive_sync pghoard_create_keys pghoard_postgres_command
DEB := $(PKG_DIR)/$(NAME)_$(VERSION)_$(DEB_ARCH).deb
RPM := $(PKG_DIR)/$(NAME)-$(VERSION)-1.$(RPM_ARCH).rpm

.PHONY: all build stage deb rpm clean-pkg

all: deb

build:
	npm run build

# Compile only when there is no build yet.
dist/src/commands/pghoard.js:
	npm run build

# The installed tree, shared by both package formats.
stage: dist/src/commands/pghoard.js
	rm -rf $(STAGE)
	mkdir -p $(STAGE)$(LIBDIR)/dist $(STAGE)/usr/bin $(STAGE)/lib/systemd/system $(STAGE)/var/lib/pghoard \
	         $(STAGE)/usr/share/doc/$(NAME)/examples $(STAGE)/usr/share/man/man1 \
	         $(STAGE)/usr/share/bash-completion/completions
	cp -a dist/src $(STAGE)$(LIBDIR)/dist/
	# The native parts (pghoard_postgres_command's front, snappy's addon), built by
	# `npm run build` where a C compiler is.
	if [ -d dist/native ]; then cp -a dist/native $(STAGE)$(LIBDIR)/dist/; fi
	find $(STAGE)$(LIBDIR)/dist -name '*.map' -delete
	cp -a bin $(STAGE)$(LIBDIR)/
	cp package.json package-lock.json $(STAGE)$(LIBDIR)/
	# Production dependencies only (npm ls knows the tree; nested node_modules come with their parent).
	npm ls --omit=dev --all --parseable 2>/dev/null | sed "s|^$$PWD/||" | grep '^node_modules/' \
	  | grep -v '^node_modules/.*/node_modules/' | sort -u > $(PKG_DIR)/modules.txt
	tar -cf - -T $(PKG_DIR)/modules.txt | tar -C $(STAGE)$(LIBDIR) -xf -
	# pghoard_postgres_command is the native front (when built) or the bash client (no Node.js
	# start-up per WAL file); each finds what it hands over to from its own real path: a link, not a wrapper.
	for cmd in $(filter-out pghoard_postgres_command,$(COMMANDS)); do \
	  sed "s/@COMMAND@/$$cmd/" debian/wrapper.sh > $(STAGE)/usr/bin/$$cmd; chmod 0755 $(STAGE)/usr/bin/$$cmd; \
	done
	if [ -x dist/native/pghoard_postgres_command ]; then \
	  ln -s ../lib/pghoard/dist/native/pghoard_postgres_command $(STAGE)/usr/bin/pghoard_postgres_command; \
	else \
	  ln -s ../lib/pghoard/bin/pghoard_postgres_command $(STAGE)/usr/bin/pghoard_postgres_command; \
	fi
	install -m 0644 systemd/pghoard.service $(STAGE)/lib/systemd/system/pghoard.service
	install -m 0644 pghoard.json pghoard-local-minimal.json $(STAGE)/usr/share/doc/$(NAME)/examples/
	install -m 0644 README.md $(STAGE)/usr/share/doc/$(NAME)/README.md
	install -m 0644 debian/copyright $(STAGE)/usr/share/doc/$(NAME)/copyright
	# Debian policy wants a changelog (changelog.gz: the version has no Debian revision, a native
	# package); one entry for this build, from the package version and git. The rpm ships it too.
	{ echo "$(NAME) ($(VERSION)) unstable; urgency=medium"; echo; \
	  echo "  * Build of pghoard for Node.js $(VERSION)$$(git rev-parse --short HEAD 2>/dev/null | sed 's/^/ from git commit /')."; \
	  git log -5 --format='  * %s' 2>/dev/null | cut -c1-100; echo; \
	  echo " -- $$(sed -n 's/^Maintainer: //p' debian/control)  $$(LC_ALL=C date -R)"; } \
	  | gzip -9n > $(STAGE)/usr/share/doc/$(NAME)/changelog.gz
	# Man pages and completion are generated from the option definitions (npm run docs) and committed.
	for page in man/*.1; do gzip -9n < $$page > $(STAGE)/usr/share/man/man1/$$(basename $$page).gz; done
	install -m 0644 completion/pghoard.bash $(STAGE)/usr/share/bash-completion/completions/pghoard
	for cmd in $(COMMANDS); do \
	  [ $$cmd = pghoard ] || ln -s pghoard $(STAGE)/usr/share/bash-completion/completions/$$cmd; \
	done

deb: stage
	rm -rf $(PKG_DIR)/deb && mkdir -p $(PKG_DIR)/deb/DEBIAN
	cp -al $(STAGE)/. $(PKG_DIR)/deb/
	sed -e "s/@VERSION@/$(VERSION)/" -e "s/@ARCH@/$(DEB_ARCH)/" \
	    -e "s/@SIZE@/$$(du -sk $(STAGE) | cut -f1)/" debian/control > $(PKG_DIR)/deb/DEBIAN/control
	install -m 0755 debian/postinst debian/prerm debian/postrm $(PKG_DIR)/deb/DEBIAN/
	dpkg-deb --root-owner-group -Zxz -z1 --build $(PKG_DIR)/deb $(DEB)
	@echo "built $(DEB)"

rpm: stage
	rm -rf $(PKG_DIR)/rpmbuild && mkdir -p $(PKG_DIR)/rpmbuild/{BUILD,RPMS,SPECS,SOURCES,SRPMS}
	rpmbuild -bb --quiet \
	  --define "_topdir $(CURDIR)/$(PKG_DIR)/rpmbuild" \
	  --define "pkg_version $(VERSION)" \
	  --define "stage_dir $(CURDIR)/$(STAGE)" \
	  --define "_binary_payload w2.xzdio" \
	  rpm/pghoard-node.spec
	cp $(PKG_DIR)/rpmbuild/RPMS/$(RPM_ARCH)/$(NAME)-$(VERSION)-1.$(RPM_ARCH).rpm $(RPM)
	@echo "built $(RPM)"

clean-pkg:
	rm -rf $(PKG_DIR)
