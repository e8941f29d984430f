#!/usr/bin/env bash
# The deb and rpm packages, proven: build the deb, install it with apt, run the installed daemons
# as their units would against a private Postfix instance (accept, defer, reject), purge, reinstall,
# purge again; then build the rpm and check its files, requirements and scriptlets.
#
# Run as root on Debian 12 from anywhere: bash tests/packaging/test_packages.sh
# Needs: the apt packages of .ci/install, pybuild-plugin-pyproject, and the project's venv
# (.venv/bin/python with aiosmtpd; LAB_PYTHON overrides it) for the fake primary MX.
# Leaves the machine as it found it: the package is purged at the end, whatever happened.
set -uo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD
LAB_PYTHON=${LAB_PYTHON:-$REPO/.venv/bin/python}
# Debian's own tools and Python, whatever comes first in the caller's PATH.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
VERSION=$(sed -n 's/^version *= *//p' setup.cfg)
DEB=$REPO/dist/backupmx_${VERSION}-1_all.deb
RPM=$REPO/dist/backupmx-${VERSION}-1.noarch.rpm
LOG=$(mktemp -d /tmp/backupmx-packages.XXXXXX)

passed=()
failed=()
pass() { passed+=("$1"); echo "PASS $1"; }
fail() { failed+=("$1"); echo "FAIL $1${2:+: $2}"; }
# check NAME COMMAND...: run COMMAND quietly (output kept in $LOG), PASS or FAIL.
check() {
    local name=$1; shift
    if "$@" >"$LOG/last" 2>&1; then pass "$name"; else fail "$name" "$(tail -20 "$LOG/last")"; fi
}
installed() { dpkg-query -W -f='${Status}' backupmx 2>/dev/null | grep -q "ok installed"; }
purge() { apt-get purge -y -q backupmx >"$LOG/purge" 2>&1; }
# Other apt users may hold the lock for a while: wait for it instead of failing.
apt-get() { command apt-get -o DPkg::Lock::Timeout=900 "$@"; }

user_existed=no
getent passwd backupmx >/dev/null && user_existed=yes

finish() {
    # Clean whatever state a failure left: the package, and the user if this test created it
    # (the package itself keeps it on purge, as Debian does with system users).
    if installed || dpkg-query -W backupmx >/dev/null 2>&1; then purge; fi
    if [ "$user_existed" = no ] && getent passwd backupmx >/dev/null; then
        userdel backupmx >/dev/null 2>&1; getent group backupmx >/dev/null && groupdel backupmx
    fi
    rm -rf "$LOG"
    echo
    echo "== package test: ${#passed[@]} passed, ${#failed[@]} failed"
    for name in "${failed[@]}"; do echo "   FAIL $name"; done
    if ((${#failed[@]})); then echo "== FAIL"; exit 1; fi
    echo "== PASS"
}
trap finish EXIT

if [ "$(id -u)" != 0 ]; then fail "running as root" "apt-get and setpriv need root"; exit 1; fi
if installed; then echo "backupmx was installed: purging it first"; purge; fi

# ---- the deb ------------------------------------------------------------------------------
echo "== make deb"
check "make deb (dpkg-buildpackage + lintian -I --pedantic clean)" make -s deb
[ -f "$DEB" ] || { fail "dist/backupmx_${VERSION}-1_all.deb built"; exit 1; }
check "deb contains backupmx/policyd/*.py" sh -c \
    "dpkg-deb -c '$DEB' | grep -q 'usr/lib/python3/dist-packages/backupmx/policyd/main.py'"
check "deb contains backupmx/milter/*.py" sh -c \
    "dpkg-deb -c '$DEB' | grep -q 'usr/lib/python3/dist-packages/backupmx/milter/main.py'"
check "deb contains backupmx/admin/*.py" sh -c \
    "dpkg-deb -c '$DEB' | grep -q 'usr/lib/python3/dist-packages/backupmx/admin/restrictions.py'"
check "deb contains the Prometheus rules" sh -c \
    "dpkg-deb -c '$DEB' | grep -q './usr/share/backupmx/prometheus/backupmx-rules.yml'"
check "backupmx is a namespace package (no backupmx/__init__.py)" sh -c \
    "! dpkg-deb -c '$DEB' | grep -q 'dist-packages/backupmx/__init__.py'"
for page in man5/backupmx.conf.5 man8/backupmx.8 man8/backupmx-policyd.8 man8/backupmx-milter.8; do
    check "deb has the manual page $page" sh -c "dpkg-deb -c '$DEB' | grep -q 'usr/share/man/$page.gz$'"
done
check "deb has the reload helper /usr/lib/backupmx/policyd-reload (executable)" sh -c \
    "dpkg-deb -c '$DEB' | grep -q '^-rwxr-xr-x .* ./usr/lib/backupmx/policyd-reload$'"

echo "== apt-get install $DEB"
check "apt-get install ./dist/backupmx_*.deb" apt-get install -y -q "$DEB"
installed || { fail "package installed"; exit 1; }
check "user backupmx created" getent passwd backupmx
check "/var/lib/backupmx is 750 backupmx:backupmx" \
    test "$(stat -c '%a %U:%G' /var/lib/backupmx)" = "750 backupmx:backupmx"
check "/var/spool/postfix/backupmx is 2750 backupmx:postfix" \
    test "$(stat -c '%a %U:%G' /var/spool/postfix/backupmx)" = "2750 backupmx:postfix"
check "conffiles under /etc/backupmx" sh -c \
    "dpkg-query -W -f='\${Conffiles}' backupmx | grep -q '/etc/backupmx/backupmx.conf'"
check "units installed" test -f /lib/systemd/system/backupmx-policyd.service \
    -a -f /lib/systemd/system/backupmx-milter.service \
    -a -f /lib/systemd/system/backupmx-flush.service -a -f /lib/systemd/system/backupmx-flush.timer
check "installed code imports from dist-packages on Debian's Python" sh -c \
    "cd / && /usr/bin/python3 -c 'import backupmx.policyd.main, backupmx.milter.main, backupmx.admin.main, milter; print(backupmx.policyd.main.__file__)' | grep -q /usr/lib/python3/dist-packages/"
check "backupmx-policyd --check-config on the shipped configuration" \
    runuser -u backupmx -- /usr/bin/backupmx-policyd -c /etc/backupmx/backupmx.conf --check-config

echo "== the installed daemons on a private Postfix"
if [ -x "$LAB_PYTHON" ]; then
    "$LAB_PYTHON" tests/packaging/installed_lab.py 2>&1 | tee "$LOG/lab"
    while read -r verdict name; do
        case $verdict in PASS) passed+=("$name") ;; FAIL) failed+=("${name%%:*}") ;; esac
    done < <(grep -E '^(PASS|FAIL) ' "$LOG/lab")
    grep -qE '^(PASS|FAIL) ' "$LOG/lab" || fail "package lab ran" "no result lines"
else
    fail "package lab" "$LAB_PYTHON missing (run .ci/install, or set LAB_PYTHON)"
fi

echo "== purge"
check "apt-get purge backupmx" apt-get purge -y -q backupmx
for path in /etc/backupmx /var/lib/backupmx /var/spool/postfix/backupmx \
        /usr/lib/python3/dist-packages/backupmx /usr/bin/backupmx-policyd \
        /lib/systemd/system/backupmx-policyd.service; do
    check "purge removed $path" test ! -e "$path"
done
check "purge keeps the system user backupmx (Debian practice)" getent passwd backupmx

echo "== reinstall"
check "apt-get install again" apt-get install -y -q "$DEB"
check "reinstall: shipped configuration back and valid" \
    runuser -u backupmx -- /usr/bin/backupmx-policyd -c /etc/backupmx/backupmx.conf --check-config
check "reinstall: socket folder back" \
    test "$(stat -c '%a %U:%G' /var/spool/postfix/backupmx)" = "2750 backupmx:postfix"
check "purge after reinstall" purge
check "nothing left after the second purge" sh -c \
    "test ! -e /etc/backupmx -a ! -e /var/lib/backupmx -a ! -e /var/spool/postfix/backupmx"

# ---- the rpm ------------------------------------------------------------------------------
echo "== make rpm"
check "make rpm (rpmbuild)" make -s rpm
if [ -f "$RPM" ]; then
    rpm -qlp "$RPM" >"$LOG/files" 2>&1
    for file in /etc/backupmx/backupmx.conf /etc/backupmx/relay_recipients \
            /etc/backupmx/sender_networks /usr/bin/backupmx /usr/bin/backupmx-policyd \
            /usr/bin/backupmx-milter /usr/lib/systemd/system/backupmx-policyd.service \
            /usr/lib/systemd/system/backupmx-milter.service \
            /usr/lib/systemd/system/backupmx-flush.service \
            /usr/lib/systemd/system/backupmx-flush.timer /usr/lib/sysusers.d/backupmx.conf \
            /usr/lib/tmpfiles.d/backupmx.conf /var/lib/backupmx /var/spool/postfix/backupmx \
            /usr/share/backupmx/prometheus/backupmx-rules.yml /usr/lib/backupmx/policyd-reload; do
        check "rpm has $file" grep -qx "$file" "$LOG/files"
    done
    for page in man5/backupmx.conf.5 man8/backupmx.8 man8/backupmx-policyd.8 man8/backupmx-milter.8; do
        check "rpm has the manual page $page" grep -q "^/usr/share/man/$page" "$LOG/files"
    done
    check "rpm has backupmx/policyd/*.py" grep -q "site-packages/backupmx/policyd/main.py$" "$LOG/files"
    check "rpm has backupmx/milter/*.py" grep -q "site-packages/backupmx/milter/main.py$" "$LOG/files"
    check "rpm has backupmx/admin/*.py" grep -q "site-packages/backupmx/admin/restrictions.py$" "$LOG/files"
    check "rpm: /etc/backupmx files are %config(noreplace)" sh -c \
        "test \$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' '$RPM' | grep -c '^cn /etc/backupmx/') -eq 3"
    rpm -qp --requires "$RPM" >"$LOG/requires" 2>&1
    for requirement in python3-twisted python3-pymilter python3-cachetools python3-prometheus_client \
            postfix shadow-utils; do
        check "rpm requires $requirement" grep -qx "$requirement" "$LOG/requires"
    done
    rpm -qp --scripts "$RPM" >"$LOG/scripts" 2>&1
    check "rpm %pre creates the user" grep -q "useradd -r -g backupmx" "$LOG/scripts"
    check "rpm %post enables the units" grep -q "preset backupmx-policyd.service" "$LOG/scripts"
    check "rpm %preun stops the units" grep -q "disable --now backupmx-policyd.service" "$LOG/scripts"
    if command -v rpmlint >/dev/null; then
        check "rpmlint without errors" rpmlint -r packaging/rpm/backupmx.rpmlintrc "$RPM"
    else
        echo "(rpmlint not installed: skipped)"
    fi
else
    fail "dist/backupmx-${VERSION}-1.noarch.rpm built"
fi
