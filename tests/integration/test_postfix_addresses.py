"""policyd reads addresses as Postfix does: every expected value is measured on the real Postfix.

- Map keys: ``postmap -s hash:FILE`` lists the keys Postfix reads from a map; policyd's parser
  must read the same keys, and ``postmap -q KEY texthash:FILE`` must find each of them.
- Lookups: a private Postfix with ``relay_recipient_maps = texthash:FILE`` (the classic recipe)
  answers RCPT for a table of addresses; policyd's decision on the same map must agree. The
  recipient policyd would receive (Postfix's internal, unquoted form) is read from Postfix
  itself: in a second session, whose sender selects a restriction class rejecting every
  recipient, Postfix's reply names it.
- Sender networks: ``postmap -q ADDRESS cidr:FILE`` skips a rule with host bits set; policyd
  refuses it, naming the network Postfix suggests.
- A byte-order mark: Postfix makes it part of the first key (that user is lost); policyd drops
  it with a warning. The one place policyd knowingly differs.
"""
from __future__ import annotations

import re
import smtplib
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

from backupmx.common.decision import Policy, decide
from backupmx.common.recipient_map import MapError, load_recipient_map, parse_recipient_lines
from backupmx.common.sender_networks import parse_sender_networks
from tests.harness.lab import BackupMxLab, eventually
from tests.harness.postfix import PostfixInstance, free_port
from tests.harness.primary_states import States
from tests.integration.conftest import require_postfix

DOMAIN = "example.test"

#: map lines in the forms admins write, odd ones included
MAP_TEXT = """\
# quoted local parts, as Postfix 3.2+ reads them
"odd user"@example.test OK
"Mixed Case"@Example.TEST OK
"sp ace"@example.test\tOK
"with\\"quote"@example.test OK
"dot."@example.test OK
"cont user"@example.test
    OK continued
"a@b"@example.test OK
"jö e"@example.test OK
# quoted where Postfix does not quote: never matched as the address it seems to name
"plain"@example.test OK
"q+tag"@example.test OK
"x y"+z@example.test OK
# a trailing dot in the key's domain
trail@example.test. OK
# unquoted local parts that are no RFC 822 dot-string
.lead@example.test OK
a..b@example.test OK
# plain keys, an extension key, case, Unicode case folding
user@example.test OK
list+news@example.test OK
Upper@EXAMPLE.test OK
straße@example.test OK
"tab\tsep"@example.test OK
"esc\\\\"@example.test OK
h\\@x@example.test OK
"""

#: RCPT TO addresses as an SMTP client writes them
RECIPIENTS = [
    '"odd user"@example.test', '"Odd User"@Example.TEST', '"odd user"@example.test.',
    '"odd user+ext"@example.test', '"\\"odd user\\""@example.test', "odd.user@example.test",
    '"mixed case"@example.test', '"sp ace"@example.test', '"sp ace+x"@example.test',
    '"with\\"quote"@example.test', '"dot."@example.test', "dot.@example.test",
    '"cont user"@example.test', '"a@b"@example.test', '"jö e"@example.test', '"JÖ E"@example.test',
    '"plain"@example.test', "plain@example.test", '"\\"plain\\""@example.test',
    '"q+tag"@example.test', "q@example.test", '"x y+z"@example.test', '"x y"@example.test',
    "trail@example.test", "trail@example.test.",
    ".lead@example.test", '".lead"@example.test', "a..b@example.test",
    "user@example.test", '"user"@example.test', "user+x@example.test", '"user+x"@example.test',
    "list+news@example.test", "list@example.test", "upper@example.test",
    "STRASSE@example.test", "straße@example.test", '"esc\\\\"@example.test',
    "nobody@example.test",
]


def postmap(config_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["postmap", "-c", str(config_dir), *args], capture_output=True,
                          text=True, timeout=60)


def postmap_query(config_dir: Path, key: str, table: str) -> Optional[str]:
    """Postfix's answer to ``postmap -q KEY TABLE``: the value, or None when not found."""
    result = postmap(config_dir, "-q", key, table)
    if result.returncode == 1:
        return None
    assert result.returncode == 0, result.stderr
    return result.stdout.rstrip("\n")


def postmap_keys(config_dir: Path, path: Path) -> Set[str]:
    """The keys Postfix reads from a map file: ``postmap hash:FILE`` then ``postmap -s``."""
    assert postmap(config_dir, f"hash:{path}").returncode == 0
    listing = postmap(config_dir, "-s", f"hash:{path}")
    assert listing.returncode == 0, listing.stderr
    # key TAB value; a key may hold a tab inside quotes, the values here hold none
    return {line.rpartition("\t")[0] for line in listing.stdout.splitlines()}


def parsed_keys(users: Dict[str, Set[str]], catch_all: Set[str]) -> Set[str]:
    return ({f"{local}@{domain}" for domain, locals_ in users.items() for local in locals_}
            | {f"@{domain}" for domain in catch_all})


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A main.cf for postmap -c (the system's /etc/postfix may have none)."""
    require_postfix()
    folder = tmp_path_factory.mktemp("postmap")
    (folder / "main.cf").write_text("compatibility_level = 3.6\n")
    return folder


@pytest.fixture(scope="module")
def map_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("map") / "relay_recipients"
    path.write_text(MAP_TEXT, encoding="utf-8")
    path.parent.chmod(0o755)
    return path


def test_map_keys_are_the_keys_postfix_reads(config_dir: Path, map_file: Path) -> None:
    users, catch_all = parse_recipient_lines(MAP_TEXT.splitlines(keepends=True))
    ours = parsed_keys(users, catch_all)
    assert ours == postmap_keys(config_dir, map_file)
    for key in sorted(ours):  # and texthash, the table type read without postmap, agrees
        assert postmap_query(config_dir, key, f"texthash:{map_file}") is not None, key


@pytest.mark.parametrize("line", [
    '"unbalanced user@example.test OK\n',
    'x"unbalanced@example.test OK\n',
])
def test_a_line_postfix_skips_for_an_unbalanced_quote_is_refused(config_dir: Path,
                                                                 tmp_path: Path,
                                                                 line: str) -> None:
    path = tmp_path / "map"
    path.write_text("ok@example.test OK\n" + line, encoding="utf-8")
    built = postmap(config_dir, f"hash:{path}")
    assert "unbalanced '\"'" in built.stderr and "ignoring this line" in built.stderr
    with pytest.raises(MapError, match=f"^{path}:line 2: unbalanced '\"'"):
        load_recipient_map([str(path)])


# ---- RCPT lookups: relay_recipient_maps on a private Postfix against policyd's decision ------

@pytest.fixture(scope="module")
def postfix(tmp_path_factory: pytest.TempPathFactory, map_file: Path
            ) -> Iterator[PostfixInstance]:
    require_postfix()
    root = tmp_path_factory.mktemp("postfix-addresses")
    senders = root / "senders"
    senders.write_text("internal@probe.test show_internal\n")
    everything = root / "everything.regexp"
    everything.write_text("/^/ REJECT\n")
    root.chmod(0o755)
    instance = PostfixInstance(root / "postfix", free_port(), {DOMAIN: free_port()},
                               extra_main_cf={
        "relay_recipient_maps": f"texthash:{map_file}",
        "recipient_delimiter": "+",
        "smtpd_restriction_classes": "show_internal",
        "show_internal": f"check_recipient_access regexp:{everything}",
        "smtpd_soft_error_limit": "1000",
        "smtpd_hard_error_limit": "1000",
        "smtpd_error_sleep_time": "0",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination, "
                                        f"check_sender_access texthash:{senders}",
    })
    instance.start()
    yield instance
    instance.stop()


def rcpt_replies(postfix: PostfixInstance, sender: str) -> List[Tuple[int, str]]:
    """Postfix's reply to RCPT TO for each of RECIPIENTS, in one SMTPUTF8 session."""
    with smtplib.SMTP("127.0.0.1", postfix.smtpd_port, timeout=60) as client:
        client.ehlo("client.test")
        client.command_encoding = "utf-8"
        client.mail(sender, ["SMTPUTF8"])
        replies = []
        for recipient in RECIPIENTS:
            code, text = client.rcpt(recipient)
            replies.append((code, text.decode("utf-8", errors="replace")))
        return replies


def policyd_outcome(internal: str, map_file: Path) -> str:
    recipients = load_recipient_map([str(map_file)], "+")
    policy = Policy(domains=frozenset({DOMAIN}), recipients=recipients, networks=None)
    request = {"protocol_state": "RCPT", "recipient": internal, "sender": "x@sender.test",
               "client_address": "198.51.100.1"}
    return decide(request, policy, States(), 0.0).outcome


def test_recipient_lookups_agree_with_relay_recipient_maps(postfix: PostfixInstance,
                                                           map_file: Path) -> None:
    internal_forms = []
    for (code, text), recipient in zip(rcpt_replies(postfix, "internal@probe.test"), RECIPIENTS):
        match = re.match(r"\d\.\d\.\d <(.*)>: ", text)
        assert code >= 500 and match, (recipient, code, text)
        internal_forms.append(match.group(1))
    assert internal_forms[0] == "odd user@example.test"  # what policyd receives for it
    verdicts = {}
    for (code, text), recipient, internal in zip(rcpt_replies(postfix, "x@sender.test"),
                                                 RECIPIENTS, internal_forms):
        if code == 250:
            postfix_says = "accept"
        elif code == 550 and "User unknown in relay recipient table" in text:
            postfix_says = "unknown_user"
        elif code == 554 and "Relay access denied" in text:
            postfix_says = "relay_denied"
        else:
            raise AssertionError(f"unexpected reply to {recipient}: {code} {text}")
        outcome = policyd_outcome(internal, map_file)
        ours = {"primary_unknown": "accept", "unknown_user": "unknown_user",
                "routing": "relay_denied"}.get(outcome, outcome)
        verdicts[recipient] = (internal, postfix_says, ours)
    disagreements = {r: v for r, v in verdicts.items() if v[1] != v[2]}
    assert disagreements == {}
    # the examples of the issue, as Postfix answered them
    assert verdicts['"odd user"@example.test'][1] == "accept"
    assert verdicts['"plain"@example.test'][1] == "unknown_user"
    assert verdicts["trail@example.test"][1] == "unknown_user"
    assert verdicts["nobody@example.test"][1] == "unknown_user"


# ---- sender networks: cidr tables ----------------------------------------------------------

@pytest.mark.parametrize("network,inside", [
    ("10.1.2.77/16", "10.1.5.5"),
    ("192.0.2.77/24", "192.0.2.200"),
    ("2001:db8::1/32", "2001:db8::5"),
])
def test_network_with_host_bits_is_refused_as_postfix_skips_it(config_dir: Path, tmp_path: Path,
                                                               network: str,
                                                               inside: str) -> None:
    table = tmp_path / "clients.cidr"
    table.write_text(f"{network} OK\n198.51.100.0/24 OK\n")
    result = postmap(config_dir, "-q", inside, f"cidr:{table}")
    assert result.returncode == 1  # not found: the rule was skipped, not widened
    suggestion = re.search(
        rf'line 1: non-null host address bits in "{re.escape(network)}", perhaps you should '
        r'use "([^"]+)" instead: skipping this rule', result.stderr)
    assert suggestion, result.stderr
    assert postmap_query(config_dir, "198.51.100.7", f"cidr:{table}") == "OK"
    with pytest.raises(MapError) as caught:
        parse_sender_networks([f"* {network}\n"], str(table))
    assert str(caught.value).startswith(
        f"{table}:line 1: non-null host address bits in {network!r}, perhaps you should use "
        f"{suggestion.group(1)!r} instead")
    good = parse_sender_networks(["* 198.51.100.0/24\n"])
    assert good.allows("a@b.test", "198.51.100.7")


# ---- the one deliberate difference: a byte-order mark -----------------------------------------

def test_byte_order_mark_loses_the_first_user_in_postfix_but_not_here(config_dir: Path,
                                                                       tmp_path: Path) -> None:
    path = tmp_path / "bom"
    path.write_bytes("\ufefffirst@example.test OK\nsecond@example.test OK\n".encode("utf-8"))
    assert postmap_query(config_dir, "first@example.test", f"texthash:{path}") is None
    assert postmap_query(config_dir, "second@example.test", f"texthash:{path}") == "OK"
    recipients = load_recipient_map([str(path)])
    assert recipients.accepts("first", DOMAIN) and recipients.accepts("second", DOMAIN)
    assert len(recipients.warnings) == 1 and "byte-order mark" in recipients.warnings[0]


# ---- the real daemon behind the real Postfix ----------------------------------------------------

@pytest.fixture(scope="module")
def odd_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupMxLab]:
    """A backup MX whose recipient map starts with a quoted local part; primary stopped."""
    require_postfix()
    instance = BackupMxLab(tmp_path_factory.mktemp("odd-lab"),
                           users=("alice", '"odd user"')).start()
    yield instance
    instance.close()


def test_quoted_key_is_accepted_and_the_same_edit_applies_whole(odd_lab: BackupMxLab) -> None:
    assert odd_lab.recipients_path.read_text().count('"odd user"@example.test OK') == 1
    assert odd_lab.rcpt('"odd user"@example.test')[0] == 250
    assert odd_lab.rcpt('"Odd User"@example.test')[0] == 250
    assert odd_lab.rcpt("odd@example.test")[0] == 550
    assert odd_lab.rcpt("carol@example.test")[0] == 550
    with open(odd_lab.recipients_path, "a", encoding="utf-8") as handle:
        handle.write('"new user"@example.test OK\ncarol@example.test OK\n')
    code, text = eventually(lambda: odd_lab.rcpt("carol@example.test"), lambda r: r[0] == 250)
    assert code == 250, f"the edit was not applied: {text}\n{odd_lab.policyd.log()}"
    assert odd_lab.rcpt('"new user"@example.test')[0] == 250
    assert odd_lab.rcpt('"odd user"@example.test')[0] == 250
    assert odd_lab.rcpt("user@example.test")[0] == 550
    assert odd_lab.policyd is not None and "reload failed" not in odd_lab.policyd.log()
