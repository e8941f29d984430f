"""Does anything in Postfix's restriction lists accept relay mail before policyd is asked?

Pure rules over parsed restriction lists (no Postfix, no I/O); ``backupmx check`` calls
``review_restrictions`` with what ``postconf -x`` says. Sources of the rules:

- postconf(5), ``smtpd_relay_restrictions`` and ``smtpd_recipient_restrictions``: both lists are
  applied at RCPT time, the relay list first unless ``smtpd_relay_before_recipient_restrictions
  = no`` (the default below compatibility level 3.6).
- SMTPD_ACCESS_README, "Restriction list evaluation": a list is evaluated from left to right
  until a restriction answers PERMIT, REJECT or DEFER; PERMIT ends *that* list only (the next
  list is still evaluated); REJECT or DEFER ends the request. So only a restriction *earlier in
  the same list* as ``check_policy_service`` can let mail through without asking the policy
  service; what comes after it cannot undo a policyd 5xx, and a DEFER_IF_PERMIT from policyd
  still turns a later PERMIT into a 4xx.
- postconf(5) on each restriction: ``permit_auth_destination`` permits any recipient in
  ``relay_domains``; ``permit_mx_backup`` permits any recipient of a domain this host is MX
  for (deprecated in Postfix 3.9, to be removed); ``permit`` permits everything;
  ``permit_naked_ip_address`` permits any client whose HELO is an IP address (the client
  chooses it); ``permit_mynetworks``, ``permit_sasl_authenticated`` and
  ``permit_tls_clientcerts``/``permit_tls_all_clientcerts`` permit restricted clients only.
- access(5): a ``check_*_access`` table may answer OK, PERMIT or a permit_* restriction: for
  some key it bypasses policyd. backupmx cannot tell for which keys without reading the table
  with every possible key, so such a table is a warning, not a failure: client-keyed tables
  (``check_client_access`` and the like) usually list the organisation's own hosts, which is as
  safe as ``permit_mynetworks``; sender-, recipient- and HELO-keyed tables are keyed on what any
  client can choose, which the warning says. The same holds for another policy service and for
  restriction classes (smtpd_restriction_classes), whose contents may permit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, List, Mapping, Optional, Sequence, Tuple

OK, WARN, FAIL = "ok", "warn", "fail"
RELAY_LIST = "smtpd_relay_restrictions"
RECIPIENT_LIST = "smtpd_recipient_restrictions"
#: every restriction list where permit_mx_backup may be written (postconf(5))
ALL_LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions",
             "smtpd_sender_restrictions", RELAY_LIST, RECIPIENT_LIST,
             "smtpd_data_restrictions", "smtpd_end_of_data_restrictions",
             "smtpd_etrn_restrictions")

Restriction = Tuple[str, str]  # (name, argument): ("check_client_access", "hash:/etc/x")

#: restrictions that accept mail for a relay domain from any client
ANY_CLIENT_PERMITS = {
    "permit": "a bare permit accepts every request",
    "permit_auth_destination": "it accepts every recipient in relay_domains",
    "permit_mx_backup": "it accepts every recipient of a domain that lists this host as MX",
    "permit_naked_ip_address": "it accepts any client that says HELO with an IP address",
}
#: restrictions that permit only clients the admin trusts, or never permit
SAFE_PREFIXES = ("reject", "defer", "warn_if_reject", "sleep")
RESTRICTED_PERMITS = frozenset({
    "permit_mynetworks", "permit_sasl_authenticated", "permit_tls_clientcerts",
    "permit_tls_all_clientcerts", "permit_inet_interfaces",
})
#: access tables keyed on what the client itself presents
CLIENT_CHOSEN_KEYS = ("check_sender", "check_recipient", "check_helo", "check_etrn")


@dataclass(frozen=True)
class Verdict:
    """One row of the report: the check's name, ok|warn|fail, what was found, the fix."""

    check: str
    status: str
    message: str
    fix: str = ""


def evaluation_order(relay_before_recipient: str) -> Tuple[str, str]:
    """The order Postfix applies the two lists at RCPT (postconf(5)): "yes" -> relay first.

    ``relay_before_recipient`` is ``smtpd_relay_before_recipient_restrictions`` as postconf -x
    prints it; an empty value counts as "yes", Postfix 3.7's default at compatibility level 3.6.
    """
    if relay_before_recipient.strip().lower() == "no":
        return RECIPIENT_LIST, RELAY_LIST
    return RELAY_LIST, RECIPIENT_LIST


def _classify(name: str, argument: str, classes: Collection[str]) -> Optional[Tuple[str, str]]:
    """(status, why) when the restriction may accept mail before policyd; None when it cannot."""
    if name in ANY_CLIENT_PERMITS:
        return FAIL, ANY_CLIENT_PERMITS[name]
    if name in RESTRICTED_PERMITS or name.startswith(SAFE_PREFIXES):
        return None
    if name.startswith("check_") and name.endswith("_access"):
        if name.startswith(CLIENT_CHOSEN_KEYS):
            return WARN, (f"the table {argument} may answer OK for a key any client chooses "
                          "(OK there accepts the mail unchecked)")
        return WARN, (f"the table {argument} may answer OK for some clients (fine if it lists "
                      "only your own hosts)")
    if name == "check_policy_service":
        return WARN, f"the policy service {argument} may answer OK"
    if name in ("permit_dnswl_client", "permit_rhswl_client"):
        return WARN, f"it accepts clients that {argument} lists"
    if name in classes:
        return WARN, "a restriction class (smtpd_restriction_classes) that may permit"
    return WARN, "backupmx does not know whether it can permit"


def _fix(name: str, list_name: str, policy: str) -> str:
    if name == "permit_mx_backup":
        return (f"remove permit_mx_backup from {list_name}: relay_domains with "
                "reject_unauth_destination already accepts the relay domains, and policyd does "
                "the recipient and primary checks")
    if name == "permit_naked_ip_address":
        return f"remove permit_naked_ip_address from {list_name}"
    if name == "permit_auth_destination":
        return (f"replace permit_auth_destination in {list_name} by reject_unauth_destination "
                f"placed before check_policy_service {policy}")
    return f"move check_policy_service {policy} before {name} in {list_name}"


def _occurrence_findings(pairs: Sequence[Restriction], stop: int, list_name: str, policy: str,
                         classes: Collection[str]) -> List[Verdict]:
    findings = []
    for name, argument in pairs[:stop]:
        classified = _classify(name, argument, classes)
        if classified is None:
            continue
        status, why = classified
        shown = f"{name} {argument}".strip()
        findings.append(Verdict(
            "policy bypass", status,
            f"{shown} comes before check_policy_service {policy} in {list_name}: {why}, and "
            "then Postfix never asks policyd (no recipient check, no deferral to the primary)",
            _fix(name, list_name, policy)))
    return findings


def review_restrictions(lists: Mapping[str, Sequence[Restriction]], relay_before_recipient: str,
                        is_our_policy: Callable[[str], bool], policy: str,
                        classes: Collection[str] = ()) -> List[Verdict]:
    """Rows about what may accept relay mail before policyd, and deprecated restrictions.

    ``lists``: list name -> (name, argument) pairs in written order, names lower-case (any of
    ALL_LISTS; missing lists are empty). ``is_our_policy(argument)`` tells whether a
    check_policy_service argument (``inet:h:p`` or a ``{ ... }`` group) is backupmx-policyd.
    ``policy`` is how to name it in messages. ``classes``: smtpd_restriction_classes names.

    When policyd is listed in several places, the occurrence with the fewest problems counts
    (it is asked there). No row about the policy service itself when it is in neither list:
    check_policy_service's own check reports that.
    """
    order = evaluation_order(relay_before_recipient)
    best: Optional[List[Verdict]] = None
    best_list = ""
    for list_name in order:
        pairs = list(lists.get(list_name, ()))
        for index, (name, argument) in enumerate(pairs):
            if name != "check_policy_service" or not is_our_policy(argument):
                continue
            findings = _occurrence_findings(pairs, index, list_name, policy, classes)
            rank = (sum(f.status == FAIL for f in findings), len(findings))
            if best is None or rank < (sum(f.status == FAIL for f in best), len(best)):
                best, best_list = findings, list_name
    rows: List[Verdict] = []
    if best is not None:
        rows.extend(best)
        if not best:
            rows.append(Verdict("policy bypass", OK, f"nothing before check_policy_service "
                                f"{policy} in {best_list} accepts mail from an arbitrary client "
                                f"(Postfix applies {order[0]}, then {order[1]})"))
    for list_name in ALL_LISTS:
        if any(name == "permit_mx_backup" for name, _ in lists.get(list_name, ())):
            rows.append(Verdict("permit_mx_backup", WARN, f"permit_mx_backup in {list_name} is "
                                "deprecated since Postfix 3.9 and will be removed",
                                f"remove permit_mx_backup from {list_name}"))
    return rows
