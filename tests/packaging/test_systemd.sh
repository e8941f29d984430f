#!/usr/bin/env bash
# The deb under a real systemd: a Debian 12 system booted with systemd-nspawn (its own loopback-only
# network), Postfix installed and configured from etc/postfix-main.cf and etc/postfix-master.cf, and
# backupmx installed with apt, upgraded from the previous release, reloaded, restarted, rebooted,
# removed, purged and reinstalled, as an admin would. Everything is checked through systemctl,
# journalctl and SMTP on the container's loopback. Prints "PASS|FAIL name (seconds)" per check
# and exits 1 if any failed.
#
# Run as root on Debian 12 from anywhere: bash tests/packaging/test_systemd.sh
# Needs: systemd-container and debootstrap (.ci/install), the deb build tools, and the network to
# the apt mirror for the first run. The Debian tree is cached as a tarball in
# /var/cache/backupmx-tests/ (BACKUPMX_TEST_CACHE overrides) and reused while its package list
# and mirror are unchanged; so is the previous release's deb. The booted system has no network:
# every package it needs is downloaded beforehand.
# How and why (measured traps): the project's notes on systemd-nspawn; in short, --keep-unit
# because the host has no systemd to ask for a scope, --register=no for the same reason.
set -uo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive
VERSION=$(sed -n 's/^version *= *//p' setup.cfg)
PREVIOUS_COMMIT=8bcac96   # the 0.1.0 release
PREVIOUS_VERSION=0.1.0
CACHE=${BACKUPMX_TEST_CACHE:-/var/cache/backupmx-tests}
WORK=$(mktemp -d /var/tmp/backupmx-systemd.XXXXXX)
ROOT=$WORK/root
LOG=$WORK/log
MACHINE=backupmx-test-$$
MAX_EXPOSURE=1.7
DOMAIN=example.test
mkdir -p "$LOG"

passed=()
failed=()
NSPAWN_PID=
INIT_PID=
started_at=$(date +%s.%N)

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }
# check NAME COMMAND...: run COMMAND (output kept in $LOG/last), print PASS or FAIL with its time.
check() {
    local name=$1 start; shift
    start=$(date +%s.%N)
    if "$@" >"$LOG/last" 2>&1; then
        passed+=("$name"); echo "PASS $name ($(elapsed "$start"))"
    else
        failed+=("$name"); echo "FAIL $name ($(elapsed "$start"))"
        sed 's/^/    | /' "$LOG/last" | tail -25
    fi
}
# Run a command inside the booted container, as root, with a clean environment.
ct() {
    nsenter -t "$INIT_PID" -m -u -i -n -p -r -w -- \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
# Poll until COMMAND succeeds, at most SECONDS (no fixed sleeps for readiness).
until_ok() {
    local seconds=$1; shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# ---- the container ------------------------------------------------------------------------

container_running() {
    local state
    state=$(ct systemctl is-system-running 2>/dev/null)
    [ "$state" = running ] || [ "$state" = degraded ]
}

boot() {
    systemd-nspawn --boot --directory="$ROOT" --machine="$MACHINE" --register=no --keep-unit \
        --private-network --console=passive </dev/null >>"$LOG/nspawn" 2>&1 &
    NSPAWN_PID=$!
    INIT_PID=
    local deadline=$((SECONDS + 60)) child
    while ((SECONDS < deadline)); do
        kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$LOG/nspawn"; return 1; }
        child=$(pgrep -P "$NSPAWN_PID" | head -1)
        if [ -n "$child" ] && [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ]; then
            INIT_PID=$child
            break
        fi
        sleep 0.1
    done
    [ -n "$INIT_PID" ] || return 1
    until_ok 90 container_running || { ct systemctl --failed --no-pager; return 1; }
    ct systemctl --failed --no-legend --no-pager
}

poweroff() {
    [ -n "$NSPAWN_PID" ] || return 0
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
        ct systemctl poweroff >/dev/null 2>&1
        local deadline=$((SECONDS + 60))
        while kill -0 "$NSPAWN_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        kill -0 "$NSPAWN_PID" 2>/dev/null && kill -KILL "$NSPAWN_PID"
    fi
    wait "$NSPAWN_PID" 2>/dev/null
    NSPAWN_PID=
    # On a host whose PID 1 is not systemd, nspawn leaves these behind.
    rm -rf "/run/systemd/nspawn/propagate/$MACHINE"
    local cgroup
    for cgroup in $(find /sys/fs/cgroup -maxdepth 4 -type d -name payload 2>/dev/null); do
        find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    return 0
}

finish() {
    poweroff
    umount "$WORK/build/proc" 2>/dev/null  # if stopped while building the tree
    rm -rf --one-file-system "$WORK"
    echo
    echo "== systemd test: ${#passed[@]} passed, ${#failed[@]} failed in $(elapsed "$started_at")"
    for name in "${failed[@]}"; do echo "   FAIL $name"; done
    if ((${#failed[@]})); then echo "== FAIL"; exit 1; fi
    echo "== PASS"
}
trap finish EXIT

if [ "$(id -u)" != 0 ]; then echo "FAIL running as root (0.0s)"; failed+=(root); exit 1; fi
for tool in systemd-nspawn debootstrap nsenter; do
    command -v "$tool" >/dev/null || { failed+=("$tool installed"); echo "FAIL $tool installed (0.0s)"; exit 1; }
done

# ---- the Debian 12 tree, cached -------------------------------------------------------------

# Installed in the tree beforehand: what the deb depends on besides Postfix, and the fake
# primary's aiosmtpd. Postfix itself is only downloaded: it is installed in the booted system.
TREE_INCLUDE=systemd,systemd-sysv,dbus,libpam-systemd,iproute2,procps
TREE_PACKAGES="adduser python3 python3-twisted python3-cachetools python3-milter python3-prometheus-client python3-aiosmtpd"
TREE_DOWNLOADS="postfix"
SOURCES=/etc/apt/sources.list.d/debian.sources
MIRROR=$(awk '/^URIs:/ { print $2; exit }' "$SOURCES" 2>/dev/null)
TREE_KEY=$(printf '%s\n' 2 "$TREE_INCLUDE" "$TREE_PACKAGES" "$TREE_DOWNLOADS" "$(cat "$SOURCES")" \
    | sha256sum | cut -c1-12)
TREE_TAR=$CACHE/bookworm-$TREE_KEY.tar

build_tree() {
    local tree=$WORK/build
    [ -n "$MIRROR" ] || { echo "no URIs: line in $SOURCES"; return 1; }
    debootstrap --variant=minbase --include="$TREE_INCLUDE" bookworm "$tree" "$MIRROR" \
        >"$LOG/debootstrap" 2>&1 || { tail -20 "$LOG/debootstrap"; return 1; }
    # The same sources as the host's apt, so the packages are those the host would install.
    rm -f "$tree/etc/apt/sources.list"
    cp "$SOURCES" "$tree/etc/apt/sources.list.d/"
    mount -t proc proc "$tree/proc" || return 1
    local status=0
    chroot "$tree" apt-get update -q && \
        chroot "$tree" apt-get install -y -q --no-install-recommends $TREE_PACKAGES && \
        chroot "$tree" apt-get install -y -q --no-install-recommends --download-only $TREE_DOWNLOADS \
        || status=1
    umount "$tree/proc"
    ((status == 0)) || return 1
    echo "$MACHINE" >"$tree/etc/hostname"
    mkdir -p "$CACHE"
    tar --numeric-owner -C "$tree" -cf "$TREE_TAR.part" . && mv "$TREE_TAR.part" "$TREE_TAR" || return 1
    # Trees of other package lists or mirrors are stale now (about 500 MB each).
    find "$CACHE" -maxdepth 1 -name 'bookworm-*.tar' ! -name "$(basename "$TREE_TAR")" -delete
    rm -rf "$tree"
}

prepare_tree() {
    if [ ! -f "$TREE_TAR" ]; then
        build_tree || return 1
    fi
    mkdir -p "$ROOT" && tar --numeric-owner -C "$ROOT" -xf "$TREE_TAR"
}

# ---- the debs -------------------------------------------------------------------------------

DEB=$WORK/dist/backupmx_${VERSION}-1_all.deb
PREVIOUS_DEB=$CACHE/$PREVIOUS_COMMIT/backupmx_${PREVIOUS_VERSION}-1_all.deb

build_current() { make -s deb DIST="$WORK/dist" >"$LOG/make" 2>&1 || { tail -30 "$LOG/make"; return 1; }; test -f "$DEB"; }

build_previous() {
    [ -f "$PREVIOUS_DEB" ] && return 0
    local source=$WORK/previous
    mkdir -p "$source" "$(dirname "$PREVIOUS_DEB")"
    git -C "$REPO" archive "$PREVIOUS_COMMIT" | tar -x -C "$source" || return 1
    make -s -C "$source" deb DIST="$WORK/previous-dist" >"$LOG/make-previous" 2>&1 \
        || { tail -30 "$LOG/make-previous"; return 1; }
    cp "$WORK/previous-dist/backupmx_${PREVIOUS_VERSION}-1_all.deb" "$PREVIOUS_DEB"
}

echo "== the debs and the Debian 12 tree"
check "make deb ($VERSION)" build_current
check "deb of the previous release ($PREVIOUS_VERSION, commit $PREVIOUS_COMMIT)" build_previous
check "Debian 12 tree (debootstrap from $MIRROR, cached as $(basename "$TREE_TAR"))" prepare_tree
[ -d "$ROOT/etc" ] && [ -f "$DEB" ] || exit 1

# Files the booted system uses: the debs, the Postfix snippets, an SMTP client.
mkdir -p "$ROOT/root/test"
cp "$DEB" "$ROOT/root/test/"
[ -f "$PREVIOUS_DEB" ] && cp "$PREVIOUS_DEB" "$ROOT/root/test/"
cp "$REPO/etc/postfix-main.cf" "$REPO/etc/postfix-master.cf" "$ROOT/root/test/"
cp "$REPO/tests/packaging/smtp_probe.py" "$ROOT/root/test/"

echo "== boot"
check "boot Debian 12 with systemd-nspawn (systemd running)" boot
[ -n "$INIT_PID" ] || exit 1

# ---- Postfix ---------------------------------------------------------------------------------

# The main.cf snippet as "name=value" lines (continuation lines joined), for postconf -e.
snippet_settings() {
    awk '
        function emit() { if (line != "") print line; line = "" }
        /^[ \t]*#/ || /^[ \t]*$/ { next }
        /^[ \t]/ { sub(/^[ \t]+/, " "); line = line $0; next }
        { emit(); line = $0 }
        END { emit() }' "$REPO/etc/postfix-main.cf" \
    | sed -e 's/[ \t]*=[ \t]*/=/' -e "s/example\.org, example\.net/$DOMAIN/"
}

install_postfix() {
    ct sh -c "echo 'postfix postfix/main_mailer_type select Internet Site' | debconf-set-selections && \
              echo 'postfix postfix/mailname string mx2.backupmx.test' | debconf-set-selections" || return 1
    ct apt-get install -y -q --no-install-recommends --no-download postfix || return 1
    local setting
    local -a settings=()
    # Not relay_recipient_maps: its table is written by backupmx 0.2.0 only when the admin sets
    # [postfix] recipient_table, and this test starts from 0.1.0 and keeps the admin's edited
    # backupmx.conf through the upgrade (the table itself is tested in
    # tests/integration/sources/test_recipients_postfix.py).
    while IFS= read -r setting; do settings+=("$setting"); done \
        < <(snippet_settings | grep -v '^relay_recipient_maps=')
    # Loopback only; mynetworks of one address, so test clients (127.0.0.10) meet the policy.
    ct postconf -e "${settings[@]}" "inet_interfaces = loopback-only" "inet_protocols = ipv4" \
        "mynetworks = 127.0.0.1/32" "transport_maps = inline:{ $DOMAIN=smtp:[127.0.0.1]:2526 }" \
        "smtp_connect_timeout = 2s" || return 1
    local service
    service=$(grep -v '^#' "$REPO/etc/postfix-master.cf" | grep -v '^[[:space:]]*$')
    if [ -z "$(ct postconf -M flush/unix)" ]; then ct postconf -Me "flush/unix=$service" || return 1; fi
    ct systemctl restart postfix@-.service && ct systemctl is-active postfix@-.service
}
check "Postfix installed and configured from etc/postfix-main.cf and etc/postfix-master.cf" install_postfix
snippet_applied() {
    ct postconf -h smtpd_recipient_restrictions | tee /dev/stderr | grep -q 'backupmx/policyd.sock, timeout=10s }'
}
check "Postfix applied the snippet (policy service without default_action)" snippet_applied

# ---- helpers on the installed system ---------------------------------------------------------

smtp() { ct python3 /root/test/smtp_probe.py "$@"; }
# RCPT answer for ADDRESS from a client that is not in mynetworks: "250", "550", "450", "451".
rcpt_code() { smtp rcpt "$1" | cut -c1-3; }
expect_rcpt() { local code; code=$(rcpt_code "$1"); echo "RCPT TO:<$1> -> $code (want $2)"; [ "$code" = "$2" ]; }
held() {  # held messages of the domain in the ledger
    ct backupmx status --json | python3 -c "import json,sys; d=json.load(sys.stdin); \
        print(next((x.get('held_messages', 0) for x in d['domains'] if x['domain']=='$DOMAIN'), 0))"
}
unit_prop() { ct systemctl show -P "$2" "$1"; }
configure_backupmx() {
    # What an admin edits: the relay domain and its primary, a faster probe, the recipients.
    ct sed -i -e '/^\[policyd\]/a probe_interval = 1' /etc/backupmx/backupmx.conf &&
    ct sh -c "echo '$DOMAIN = [127.0.0.1]:2526' >>/etc/backupmx/backupmx.conf" &&
    ct sh -c "echo 'alice@$DOMAIN OK' >>/etc/backupmx/relay_recipients" &&
    ct systemctl restart backupmx-policyd.service backupmx-milter.service
}
SOCKETS=/var/spool/postfix/backupmx
LOCK=/var/lib/backupmx/ledger.sqlite3.flush.lock
UNITS="backupmx-policyd.service backupmx-milter.service backupmx-flush.timer"
# Every record of the ledger, in a stable order (what an upgrade must keep).
LEDGER_DUMP="import sqlite3; c = sqlite3.connect('file:/var/lib/backupmx/ledger.sqlite3?mode=ro', uri=True)
for row in c.execute('SELECT m.queue_id, m.received_at, m.sender, m.size, m.client_addr, d.domain, d.recipients FROM messages m JOIN message_domains d ON d.message_id = m.id ORDER BY m.id, d.domain'): print(*row)"
ledger_dump() { ct python3 -c "$LEDGER_DUMP"; }
milter_listening() { smtp connect "$SOCKETS/milter.sock" >/dev/null; }
policyd_listening() { smtp connect "$SOCKETS/policyd.sock" >/dev/null; }
send_mail() {  # send_mail COUNT: messages to alice, each accepted
    local i
    for ((i = 1; i <= $1; i++)); do smtp send "alice@$DOMAIN" || return 1; done
}
held_is() { local count; count=$(held); echo "held in the ledger: $count (want $1)"; [ "$count" = "$1" ]; }
units_active_enabled() {
    local unit
    for unit in $UNITS; do
        echo "$unit: $(ct systemctl is-active "$unit") $(ct systemctl is-enabled "$unit")"
        ct systemctl is-active -q "$unit" && ct systemctl is-enabled -q "$unit" || return 1
    done
}

# ---- the previous release, mail, the upgrade ------------------------------------------------
# --no-install-recommends: the booted container has no network, and what backupmx recommends
# (the fleet and callout drivers) is optional and not downloaded beforehand.
echo "== backupmx $PREVIOUS_VERSION, mail held, then the upgrade to $VERSION"
check "apt-get install backupmx $PREVIOUS_VERSION" \
    ct apt-get install -y -q --no-install-recommends "/root/test/$(basename "$PREVIOUS_DEB")"
check "$PREVIOUS_VERSION: the admin edits the conffiles (relay domain, recipient)" configure_backupmx
until_ok 30 milter_listening && until_ok 30 policyd_listening
check "$PREVIOUS_VERSION: 2 messages accepted while the primary is down" send_mail 2
check "$PREVIOUS_VERSION: the messages are recorded in the ledger" until_ok 20 held_is 2
root_flush_previous() { ct backupmx flush --auto && ct stat -c '%U' "$LOCK" | tee /dev/stderr | grep -qx root; }
check "$PREVIOUS_VERSION: root's 'backupmx flush --auto' leaves a lock only root can open" root_flush_previous
ledger_dump >"$LOG/ledger-before" 2>&1
ct md5sum /etc/backupmx/backupmx.conf /etc/backupmx/relay_recipients >"$LOG/conffiles-before"
check "upgrade to $VERSION with apt (keeping edited conffiles, as unattended-upgrades does)" \
    ct apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "/root/test/$(basename "$DEB")"
check "upgrade: backupmx $VERSION-1 installed" \
    test "$(ct dpkg-query -W -f='${Version}' backupmx)" = "$VERSION-1"
ledger_kept() { test -s "$LOG/ledger-before" && ledger_dump | diff "$LOG/ledger-before" -; }
check "upgrade: every ledger record kept ($(wc -l <"$LOG/ledger-before") rows)" ledger_kept
conffiles_kept() {
    ct md5sum /etc/backupmx/backupmx.conf /etc/backupmx/relay_recipients | diff "$LOG/conffiles-before" - &&
    ct grep -qx "$DOMAIN = \[127.0.0.1\]:2526" /etc/backupmx/backupmx.conf &&
    ct grep -q 'man backupmx.conf' /etc/backupmx/backupmx.conf.dpkg-dist  # the new version beside it
}
check "upgrade: the edited conffiles kept (the new backupmx.conf as .dpkg-dist)" conffiles_kept
lock_repaired() { ct stat -c '%U:%G' "$LOCK" | tee /dev/stderr | grep -qx backupmx:backupmx; }
check "upgrade: the lock left to root by $PREVIOUS_VERSION given back to backupmx" lock_repaired
check "upgrade: the daemons run the new units (milter Type=notify)" \
    test "$(unit_prop backupmx-milter.service Type)" = notify

# ---- the installed daemons under systemd ----------------------------------------------------
echo "== $VERSION under systemd"
check "units active and enabled ($UNITS)" units_active_enabled
ready() {  # ready UNIT STATUS-PREFIX
    local type status
    type=$(unit_prop "$1" Type) status=$(unit_prop "$1" StatusText)
    echo "$1: Type=$type StatusText=$status"
    [ "$type" = notify ] && [[ $status == "$2"* ]]
}
check "policyd ready: Type=notify, STATUS=serving 1 domains" ready backupmx-policyd.service "serving 1 domains"
check "milter ready: Type=notify, STATUS=listening on its socket" \
    ready backupmx-milter.service "listening on unix:$SOCKETS/milter.sock"
socket_modes() {
    ct stat -c '%n %U:%G %a %F' "$SOCKETS" "$SOCKETS/policyd.sock" "$SOCKETS/milter.sock" | tee /dev/stderr \
        | diff - <(printf '%s\n' "$SOCKETS backupmx:postfix 2750 directory" \
            "$SOCKETS/policyd.sock backupmx:postfix 660 socket" "$SOCKETS/milter.sock backupmx:postfix 660 socket")
}
check "sockets backupmx:postfix 0660 in the setgid folder" socket_modes
ordered_before_postfix() {
    local after
    after=$(unit_prop postfix@-.service After); echo "postfix@-.service After=$after"
    [[ " $after " == *" backupmx-policyd.service "* && " $after " == *" backupmx-milter.service "* ]]
}
check "Postfix (postfix@-.service) is ordered after both daemons" ordered_before_postfix
documented() {  # every man: page a unit names is installed
    local unit page name section ok=0
    for unit in backupmx-policyd.service backupmx-milter.service backupmx-flush.service backupmx-flush.timer; do
        for page in $(unit_prop "$unit" Documentation); do
            page=${page//\"/}  # systemctl show quotes each entry
            [[ $page == man:* ]] || { echo "$unit: $page is not a manual page"; ok=1; continue; }
            name=${page#man:}; section=${name##*(}; section=${section%)}; name=${name%(*}
            if ct test -f "/usr/share/man/man$section/$name.$section.gz"; then echo "$unit: $page"
            else echo "$unit: $page not installed"; ok=1; fi
        done
    done
    return $ok
}
check "units' Documentation= names installed manual pages" documented
milter_ready_at_restart() {
    local i
    for i in 1 2; do  # no wait: the socket must listen when systemctl returns
        smtp restart "backupmx-milter.service:$SOCKETS/milter.sock" || return 1
    done
}
check "milter listens as soon as systemctl restart returns (2 restarts)" milter_ready_at_restart
check "RCPT known recipient, primary down: 250 (chrooted smtpd -> policyd)" expect_rcpt "alice@$DOMAIN" 250
check "RCPT unknown recipient: 550" expect_rcpt "nobody@$DOMAIN" 550
send_and_record() { send_mail 1 && until_ok 20 held_is 3; }
check "a message accepted and recorded in the ledger (3 held)" send_and_record
add_callout_source() {  # the primary will refuse bob: the flush learns that from the journal
    ct sh -c "printf '\n[recipients verify]\ntype = callout\ndomains = $DOMAIN\n' >>/etc/backupmx/backupmx.conf" &&
    ct sh -c "echo 'bob@$DOMAIN OK' >>/etc/backupmx/relay_recipients" &&
    ct systemctl restart backupmx-policyd.service && until_ok 30 policyd_listening
}
check "a callout source for $DOMAIN; bob listed" add_callout_source
send_to_bob() { smtp send "bob@$DOMAIN" && until_ok 20 held_is 4; }
check "a message to bob accepted and recorded (4 held)" send_to_bob

# ---- flush ------------------------------------------------------------------------------------
echo "== flush"
root_flush_keeps_lock() {
    ct rm -f "$LOCK" && ct backupmx flush --auto || return 1
    ct stat -c '%U:%G' "$LOCK" | tee /dev/stderr | grep -qx backupmx:backupmx
}
check "root's 'backupmx flush --auto' leaves the lock to backupmx" root_flush_keeps_lock
# The fake primary: aiosmtpd's Mailbox, knowing alice and postmaster only (refusing the others
# at RCPT, as a primary does: bob, and the random address policyd's callouts ask first).
FAKE_PRIMARY='from aiosmtpd.handlers import Mailbox


class Primary(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().split("@")[0] not in ("alice", "postmaster"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"
'
check "fake primary started (aiosmtpd via systemd-run)" \
    ct sh -c "printf '%s' '$FAKE_PRIMARY' >/var/tmp/fake_primary.py" && \
    ct systemd-run --unit=fake-primary --quiet --setenv=PYTHONPATH=/var/tmp python3 -m aiosmtpd \
    -n -l 127.0.0.1:2526 -c fake_primary.Primary /var/tmp/primary
until_ok 20 ct bash -c 'exec 3<>/dev/tcp/127.0.0.1/2526' 2>/dev/null
check "RCPT while the primary answers: 450 (deliver there)" until_ok 20 expect_rcpt "alice@$DOMAIN" 450
primary_refuses_strangers() {  # an unlisted recipient: policyd's callout asks a random one first
    expect_rcpt "carol@$DOMAIN" 450 || return 1
    ct backupmx recipients status --json | python3 -c "import json,sys; d=json.load(sys.stdin); \
        print(d['sources'][-1]['domains']); assert d['sources'][-1]['domains'][0]['accept_all'] is False"
}
check "callouts: the primary refuses a random address (its acceptances count)" \
    until_ok 30 primary_refuses_strangers
delivered() { local n; n=$(ct sh -c 'ls /var/tmp/primary/new 2>/dev/null | wc -l'); echo "at the primary: $n (want $1)"; [ "$n" = "$1" ]; }
flush_service() {
    ct systemctl start backupmx-flush.service || { ct journalctl -u backupmx-flush.service --no-pager | tail; return 1; }
    echo "Result=$(unit_prop backupmx-flush.service Result)"
    ct journalctl -u backupmx-flush.service --no-pager -o cat | tail -5
    test "$(unit_prop backupmx-flush.service Result)" = success
}
check "backupmx-flush.service succeeds as backupmx (postqueue: AF_NETLINK, postdrop)" flush_service
check "the held mail reached the primary (3 messages)" until_ok 30 delivered 3
check "the ledger holds nothing more for $DOMAIN" until_ok 20 held_is 0
flush_learned() {  # policyd's flush on return could not read the journal: the timer's does
    ct journalctl -u backupmx-flush.service --no-pager -o cat | tail -4 | tee /dev/stderr \
        | grep -q "learned 1 valid and 1 invalid recipients" && return 0
    ct systemctl start backupmx-flush.service; return 1
}
learned_from_journal() {
    until_ok 30 flush_learned &&
    ct backupmx query "bob@$DOMAIN" --no-probe | tee /dev/stderr | grep -q "callout: invalid" &&
    ct backupmx query "alice@$DOMAIN" --no-probe | grep -q "callout: valid"
}
check "the flush learned alice valid and bob invalid from Postfix's journal" learned_from_journal
drop_callout_source() {  # the checks below judge unknown recipients by the list alone
    ct sed -i '/^\[recipients verify\]/,$d' /etc/backupmx/backupmx.conf &&
    ct systemctl restart backupmx-policyd.service && until_ok 30 policyd_listening
}
check "the callout source removed again" drop_callout_source
timer_listed() { ct systemctl list-timers --all --no-legend backupmx-flush.timer | tee /dev/stderr | grep -q backupmx-flush.service; }
check "backupmx-flush.timer listed" timer_listed

# ---- reload, restart, configuration errors -----------------------------------------------------
echo "== reload and restart"
CONF=/etc/backupmx/backupmx.conf
ct cp "$CONF" /root/test/backupmx.conf.good
good_reload() {
    ct sed -i '/^\[policyd\]/a primary_up_action = ignore' "$CONF" || return 1
    ct systemctl reload backupmx-policyd.service || return 1
    unit_prop backupmx-policyd.service StatusText | tee /dev/stderr | grep -q '^reload #[0-9]*: ok' &&
    ct journalctl -u backupmx-policyd.service --no-pager -o cat | grep -q "^reloaded $CONF" &&
    expect_rcpt "alice@$DOMAIN" 250  # at once: primary_up_action = ignore is applied
}
check "systemctl reload (valid change): applied when it returns" good_reload
bad_reload() {
    ct sed -i '/^\[policyd\]/a no_such_key = 1' "$CONF" || return 1
    if ct systemctl reload backupmx-policyd.service; then echo "reload succeeded"; return 1; fi
    ct journalctl -u backupmx-policyd.service --no-pager -o cat | grep "no_such_key: unknown key" &&
    ct systemctl is-active backupmx-policyd.service && expect_rcpt "alice@$DOMAIN" 250
}
check "systemctl reload (invalid file) fails; the running configuration stays" bad_reload
no_restart_loop() {
    local unit state ok=0
    for unit in backupmx-policyd.service backupmx-milter.service; do
        if ct systemctl restart "$unit"; then echo "$unit started"; return 1; fi
        # Failed at once: with a restart loop it would be activating/auto-restart instead.
        state="$(unit_prop "$unit" ActiveState)/$(unit_prop "$unit" SubState) status=$(unit_prop "$unit" ExecMainStatus)"
        echo "$unit: $state"
        ct journalctl -u "$unit" --no-pager -o cat -n 2
        [ "$state" = "failed/failed status=2" ] || ok=1
    done
    return $ok
}
check "configuration error: both daemons exit 2 and stay failed (no restart loop)" no_restart_loop
restart_good() {
    ct cp /root/test/backupmx.conf.good "$CONF" &&
    ct systemctl reset-failed backupmx-policyd.service backupmx-milter.service &&
    ct systemctl restart backupmx-policyd.service backupmx-milter.service &&
    milter_listening && policyd_listening && expect_rcpt "nobody@$DOMAIN" 550
}
check "systemctl restart with the configuration fixed" restart_good
exposure() {
    local unit level ok=0
    for unit in backupmx-policyd.service backupmx-milter.service backupmx-flush.service; do
        level=$(ct systemd-analyze security --no-pager "$unit" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
        echo "$unit exposure $level"
        echo "   $unit: exposure $level" >>"$LOG/exposure"
        awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l != "" && l <= m) }' || ok=1
    done
    return $ok
}
check "systemd-analyze security: every unit at most $MAX_EXPOSURE" exposure
[ -f "$LOG/exposure" ] && cat "$LOG/exposure"

# ---- reboot -------------------------------------------------------------------------------------
echo "== reboot"
poweroff
check "boot again" boot
boot_order() {
    local postfix_start policyd_ready milter_ready
    postfix_start=$(unit_prop postfix@-.service InactiveExitTimestampMonotonic)
    policyd_ready=$(unit_prop backupmx-policyd.service ActiveEnterTimestampMonotonic)
    milter_ready=$(unit_prop backupmx-milter.service ActiveEnterTimestampMonotonic)
    echo "postfix@- starts at $postfix_start us; policyd ready at $policyd_ready, milter at $milter_ready"
    [ "$policyd_ready" -gt 0 ] && [ "$milter_ready" -gt 0 ] &&
        [ "$postfix_start" -ge "$policyd_ready" ] && [ "$postfix_start" -ge "$milter_ready" ]
}
check "after boot: units active and enabled" units_active_enabled
check "boot order: Postfix starts after policyd and the milter are ready" boot_order
after_boot_smtp() { expect_rcpt "alice@$DOMAIN" 250 && expect_rcpt "nobody@$DOMAIN" 550; }
check "after boot: RCPT known 250, unknown 550" after_boot_smtp

# ---- remove, purge, reinstall -------------------------------------------------------------------
echo "== remove, purge, reinstall"
removed() {
    ct apt-get remove -y -q backupmx || return 1
    ! ct systemctl is-active -q backupmx-policyd.service && ! ct systemctl is-active -q backupmx-milter.service &&
    ct test -f "$CONF" -a -f /var/lib/backupmx/ledger.sqlite3
}
check "apt-get remove: daemons stopped, conffiles and ledger kept" removed
check "policyd gone: Postfix answers 451 (no default_action=DUNNO), mail not lost" expect_rcpt "alice@$DOMAIN" 451
purged() {
    ct apt-get purge -y -q backupmx || return 1
    local path
    for path in /etc/backupmx /var/lib/backupmx "$SOCKETS" /lib/systemd/system/backupmx-policyd.service; do
        if ct test -e "$path"; then echo "$path left"; return 1; fi
    done
    ct getent passwd backupmx  # kept, as Debian keeps system users
}
check "apt-get purge: files gone, the system user kept" purged
reinstalled() {
    ct apt-get install -y -q --no-install-recommends "/root/test/$(basename "$DEB")" &&
        units_active_enabled &&
    milter_listening && policyd_listening
}
check "reinstall: units active and enabled, sockets listening" reinstalled
