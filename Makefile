# Build the deb and rpm packages of backupmx into dist/, from this checkout.
# The build trees are temporary folders outside the checkout.

VERSION := $(shell sed -n 's/^version *= *//p' setup.cfg)
DIST := $(CURDIR)/dist
# Debian's own Python and tools, not whatever python3 comes first in a developer's PATH.
SYSTEM_PATH := /usr/sbin:/usr/bin:/sbin:/bin

.PHONY: help deb rpm clean

help:
	@echo "make deb    build dist/backupmx_$(VERSION)-*_all.deb (dpkg-buildpackage, then lintian -I --pedantic)"
	@echo "make rpm    build dist/backupmx-$(VERSION)-*.noarch.rpm (rpmbuild, also on Debian)"
	@echo "make clean  remove dist/"

# The source: tracked and new files of the checkout, without what .gitignore excludes (or, out
# of git, the tree without build products and the venv).
define export_source
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -z --cached --others --exclude-standard \
	        | xargs -0 sh -c 'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done' sh \
	        | tar --null -T - -cf -; \
	else \
	    tar --exclude=./dist --exclude=./build --exclude=./.venv --exclude=./.git -cf - .; \
	fi | tar -xf - -C $(1)
endef

# lintian -I --pedantic must show nothing but overridden (O:) and masked (M:) hints. Not with
# --fail-on info,pedantic: lintian 2.116 (Debian 12) counts masked hints there too.
deb:
	set -e; tree=$$(mktemp -d); trap 'rm -rf "$$tree"' EXIT; \
	mkdir "$$tree/backupmx-$(VERSION)"; \
	$(call export_source,"$$tree/backupmx-$(VERSION)"); \
	cp -r packaging/debian "$$tree/backupmx-$(VERSION)/debian"; \
	(cd "$$tree/backupmx-$(VERSION)" && PATH=$(SYSTEM_PATH) dpkg-buildpackage -us -uc -b); \
	mkdir -p $(DIST); cp "$$tree"/*.deb $(DIST)/; \
	PATH=$(SYSTEM_PATH) lintian -I --pedantic --fail-on error,warning "$$tree"/*.changes \
	    >"$$tree/lintian.log" || { cat "$$tree/lintian.log"; exit 1; }; \
	cat "$$tree/lintian.log"; \
	! grep -q '^[EWIP]: ' "$$tree/lintian.log"

rpm:
	set -e; tree=$$(mktemp -d); trap 'rm -rf "$$tree"' EXIT; \
	mkdir -p "$$tree/SOURCES" "$$tree/backupmx-$(VERSION)"; \
	$(call export_source,"$$tree/backupmx-$(VERSION)"); \
	tar -C "$$tree" -czf "$$tree/SOURCES/backupmx-$(VERSION).tar.gz" backupmx-$(VERSION); \
	PATH=$(SYSTEM_PATH) rpmbuild -bb --nodeps --define "_topdir $$tree" \
	    --define "upstream_version $(VERSION)" packaging/rpm/backupmx.spec; \
	mkdir -p $(DIST); cp "$$tree"/RPMS/noarch/*.rpm $(DIST)/

clean:
	rm -rf $(DIST)
