"""Recipient sources with the real Postfix and policyd attached: policyd starts the syncs
itself (child processes), keeps the snapshot through the directory's outage and its own restart,
defers once the snapshot is stale, and Postfix's own table refuses unknown recipients while
policyd is stopped."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.harness.lab import BackupMxLab, eventually
from tests.harness.servers import HangingServer, Slapd, person_ldif, write_password

pytestmark = pytest.mark.integration


def people_subtree(slapd: Slapd, name: str, uids: list) -> str:
    base = f"ou={name},{slapd.suffix}"
    ldif = f"dn: {base}\nobjectClass: organizationalUnit\nou: {name}\n\n"
    ldif += "".join(person_ldif(base, {"uid": [uid], "mail": [f"{uid}@example.test"]})
                    for uid in uids)
    slapd.ldapmodify(ldif, add=True)
    return base


def ldap_section(slapd: Slapd, base: str, folder: Path, **keys: str) -> str:
    settings = {
        "type": "ldap", "uri": slapd.uri, "base": base, "bind_dn": slapd.reader_dn,
        "bind_password_file": write_password(folder, slapd.reader_password),
        "filter": "(objectClass=inetOrgPerson)", "attributes": "mail",
        "domains": "example.test", "interval": "0.5", "timeout": "5", **keys}
    return "[recipients directory]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


def code(lab: BackupMxLab, recipient: str) -> int:
    return lab.rcpt(recipient)[0]


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A slapd of this test alone (the test stops it)."""
    server = Slapd(tmp_path / "slapd").setup().start()
    yield server
    server.stop()


def make_lab(tmp_path: Path, section: str, **kwargs) -> BackupMxLab:
    return BackupMxLab(tmp_path / "lab", users=(), extra_config=section,
                       policyd_settings={"state_directory": str(tmp_path / "state")},
                       **kwargs).start()


def test_a_user_added_in_the_directory_is_accepted_and_one_removed_refused(
        slapd: Slapd, unique: str, tmp_path: Path) -> None:
    base = people_subtree(slapd, unique, ["alice", "bob"])
    lab = make_lab(tmp_path, ldap_section(slapd, base, tmp_path, max_shrink="50%"))
    try:
        # a domain no map covers yet accepts everyone: wait for the refusal, not for alice
        assert eventually(lambda: code(lab, "carol@example.test"), lambda c: c == 550) == 550
        assert code(lab, "alice@example.test") == 250
        slapd.ldapmodify(person_ldif(base, {"uid": ["carol"], "mail": ["carol@example.test"]}),
                         add=True)
        assert eventually(lambda: code(lab, "carol@example.test"), lambda c: c == 250) == 250
        slapd.delete(f"uid=bob,{base}")
        assert eventually(lambda: code(lab, "bob@example.test"), lambda c: c == 550) == 550
        assert code(lab, "alice@example.test") == 250
    finally:
        lab.close()


def test_directory_down_known_users_accepted_also_after_a_restart_then_450_when_stale(
        own_slapd: Slapd, tmp_path: Path) -> None:
    base = people_subtree(own_slapd, "people2", ["alice", "bob"])
    lab = make_lab(tmp_path, ldap_section(own_slapd, base, tmp_path, stale_after="6"))
    try:
        # a domain no map covers yet accepts everyone: wait for the refusal, not for alice
        assert eventually(lambda: code(lab, "nobody@example.test"), lambda c: c == 550) == 550
        assert code(lab, "alice@example.test") == 250
        own_slapd.stop()
        assert code(lab, "nobody@example.test") == 550  # still fresh: a definite answer
        assert code(lab, "bob@example.test") == 250
        assert lab.policyd is not None
        lab.policyd.stop()
        lab.start_policyd()  # the snapshot on disk is loaded before READY
        assert code(lab, "alice@example.test") == 250
        assert code(lab, "bob@example.test") == 250
        # after stale_after without a good sync, an unknown user may be new: 450, never 550
        reply = eventually(lambda: lab.rcpt("nobody@example.test"), lambda r: r[0] != 550,
                           timeout=30)
        assert reply[0] == 450 and reply[1].startswith("4.1.1 ") and "not verified" in reply[1]
        assert code(lab, "alice@example.test") == 250
        log = lab.policyd.log()
        assert "recipients of example.test are stale" in log
        assert log.count("sync failed") == 1  # once per state change, not per attempt
    finally:
        lab.close()


def test_a_hanging_directory_does_not_delay_policy_answers(tmp_path: Path) -> None:
    hanging = HangingServer()
    (tmp_path / "rr").write_text("")
    section = ("[recipients stuck]\ntype = ldap\n"
               f"uri = ldap://127.0.0.1:{hanging.port}\nbase = dc=example,dc=test\n"
               "interval = 0.5\ntimeout = 3\n")
    lab = BackupMxLab(tmp_path / "lab", extra_config=section,
                      policyd_settings={"state_directory": str(tmp_path / "state")}).start()
    try:
        # while the sync hangs (a child process waiting on the server), every RCPT is answered
        # from the file source as usual
        for _ in range(10):
            assert code(lab, "alice@example.test") == 250
            assert code(lab, "nobody@example.test") == 550
        assert lab.policyd is not None
        log = eventually(lab.policyd.log, lambda text: "sync failed" in text, timeout=30)
        assert "stuck: sync failed" in log and "3 s" in log
        assert code(lab, "alice@example.test") == 250
    finally:
        lab.close()
        hanging.close()


def test_postfix_refuses_unknown_recipients_itself_while_policyd_is_stopped(
        slapd: Slapd, unique: str, tmp_path: Path) -> None:
    base = people_subtree(slapd, unique, ["alice"])
    table = tmp_path / "state" / "relay_recipients"
    section = ldap_section(slapd, base, tmp_path) + "\n[recipients pushed]\ntype = push\n" \
        "domains = other.test\n"
    lab = BackupMxLab(tmp_path / "lab", domains=("example.test", "other.test"), users=(),
                      extra_config=section,
                      policyd_settings={"state_directory": str(tmp_path / "state")},
                      postfix_settings={"recipient_table": str(table)},
                      extra_main_cf={"relay_recipient_maps": f"hash:{table}"})
    lab.postfix.policy = None  # set below with default_action=DUNNO, as the shipped main.cf
    lab.postfix.extra_main_cf["smtpd_recipient_restrictions"] = (
        f"permit_mynetworks, reject_unauth_destination, check_policy_service "
        f"{{ inet:127.0.0.1:{lab.policy_port}, timeout=10s, default_action=DUNNO }}")
    lab.start()
    try:
        assert eventually(lambda: code(lab, "alice@example.test"), lambda c: c == 250) == 250
        assert eventually(lambda: table.with_suffix(".db").exists(), bool)
        assert lab.policyd is not None
        lab.policyd.stop()
        reply = lab.rcpt("nobody@example.test")
        assert reply[0] == 550 and "Recipient address rejected: User unknown in relay " \
            "recipient table" in reply[1]  # Postfix's own wording, not policyd's
        assert code(lab, "alice@example.test") == 250
        # a domain whose only source never delivered a list is "@domain" in the table: Postfix
        # does not bounce its recipients (policyd, when up, answers 450 for them)
        assert code(lab, "anyone@other.test") == 250
        assert "@other.test OK" in table.read_text()
        lab.start_policyd()
        assert code(lab, "anyone@other.test") == 450
    finally:
        lab.close()
