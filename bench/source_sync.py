"""Recipient sources at scale: fetch a million addresses from a real PostgreSQL and a real slapd.

1. Starts the tests' private servers (tests/harness/servers.py): PostgreSQL 15 and slapd, in a
   temporary folder, never the system's services.
2. Loads N addresses over 50 domains into each: PostgreSQL with one ``INSERT ... SELECT`` from
   ``generate_series`` (a table ``users(id, address, active)``), slapd offline with ``slapadd
   -q`` from a generated LDIF (one inetOrgPerson entry with one ``mail`` per address under
   ou=people). Prints how long loading took.
3. In a fresh interpreter per run (so the figures are the fetching process's own), calls the
   driver exactly as a sync does: ``backupmx.sources.pgsql.fetch`` (server-side cursor, read-only
   transaction, ``SELECT address FROM users WHERE active``) and ``backupmx.sources.ldap.fetch``
   (bind as a reader DN, filter ``(objectClass=inetOrgPerson)``, paged results, 1000 a page).
   Prints the fetch time, rows/s, and the peak resident memory (VmHWM) of that process, also
   minus its RSS before the fetch (the growth the addresses cost).

    .venv/bin/python bench/source_sync.py [--addresses 1000000] [--ldap-addresses N]
        [--repeats 3] [--python .venv-debian/bin/python] [--only pgsql|ldap] [--sync]

``--sync`` times the whole sync instead (``sync_source``: fetch, normalise and group the
addresses, write the snapshot atomically), as ``backupmx recipients sync`` runs it.

Needs root (PostgreSQL runs as the postgres user) and the packages of .ci/install.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.servers import Postgres, Slapd  # noqa: E402

DOMAINS = 50
PASSWORD = "reader-secret"  # the PostgreSQL reader's, and Slapd.reader_password

CHILD = r"""
import json, sys, time
from backupmx.common.source_settings import LdapSettings, PgsqlSettings

def rss_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])

kind, settings, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if kind == "pgsql":
    from backupmx.sources.pgsql import fetch
    settings = PgsqlSettings(**settings)
else:
    from backupmx.sources.ldap import fetch
    settings["attributes"] = tuple(settings["attributes"])
    settings = LdapSettings(**settings)
before = rss_kib("VmRSS")
started = time.perf_counter()
if mode == "sync":  # the whole "backupmx recipients sync": fetch, sort out, store the snapshot
    import tempfile
    from backupmx.common.source_settings import SourceSettings
    from backupmx.common.snapshots import SnapshotStore
    from backupmx.sources.sync import sync_source
    source = SourceSettings(name="bench", type=kind, driver=settings, timeout=600,
                            domains=tuple(f"d{n:02}.example.test" for n in range(50)))
    folder = tempfile.mkdtemp(prefix="sync-bench-")
    fetched = []
    def fetching(source):
        fetched.extend(fetch(source.driver, source.timeout))
        return fetched
    outcome = sync_source(source, SnapshotStore(folder), print, fetching)
    assert outcome.ok and not outcome.held_back, outcome
    addresses = fetched
else:
    addresses = fetch(settings, timeout=600)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rows": len(addresses), "distinct": len(set(addresses)),
                  "peak_mib": rss_kib("VmHWM") / 1024,
                  "growth_mib": (rss_kib("VmHWM") - before) / 1024}))
"""


def address(n: int) -> str:
    return f"user.{n}@d{n % DOMAINS:02}.example.test"


def load_postgres(server: Postgres, count: int) -> float:
    started = time.perf_counter()
    server.create_database("directory", "reader", PASSWORD)
    server.psql("CREATE TABLE users (id integer PRIMARY KEY, address text NOT NULL, "
                "active boolean NOT NULL DEFAULT true); "
                "INSERT INTO users SELECT n, 'user.' || n || '@d' || lpad((n % 50)::text, 2, '0') "
                f"|| '.example.test', true FROM generate_series(0, {count - 1}) AS n; "
                "ALTER TABLE users OWNER TO reader", database="directory", timeout=3600)
    server.psql("VACUUM ANALYZE users", database="directory", timeout=3600)
    return time.perf_counter() - started


def load_slapd(server: Slapd, count: int, folder: Path) -> float:
    """count people under ou=people, written as one LDIF and loaded offline with slapadd -q."""
    started = time.perf_counter()
    ldif = folder / "people.ldif"
    with ldif.open("w") as handle:
        for n in range(count):
            handle.write(f"dn: uid=u{n},{server.people}\nobjectClass: inetOrgPerson\n"
                         f"uid: u{n}\ncn: u{n}\nsn: u{n}\nmail: {address(n)}\n\n")
    server.slapadd_file(ldif)
    ldif.unlink()
    return time.perf_counter() - started


def fetch_in_child(python: str, kind: str, settings: Dict[str, Any],
                   mode: str = "fetch") -> Dict[str, float]:
    result = subprocess.run([python, "-c", CHILD, kind, json.dumps(settings), mode],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{kind} fetch failed:\n{result.stderr}")
    return json.loads(result.stdout)


def report(kind: str, runs: List[Dict[str, float]], expected: int) -> None:
    for run in runs:
        if run["rows"] != expected or run["distinct"] != expected:
            raise SystemExit(f"{kind}: fetched {run['rows']} rows ({run['distinct']} distinct), "
                             f"expected {expected}")
    seconds = statistics.median(run["seconds"] for run in runs)
    print(f"| {kind} | {expected:,} | {seconds:.2f} s | {expected / seconds:,.0f} | "
          f"{statistics.median(run['peak_mib'] for run in runs):.0f} MiB | "
          f"{statistics.median(run['growth_mib'] for run in runs):.0f} MiB | "
          f"{', '.join(format(run['seconds'], '.2f') for run in runs)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--ldap-addresses", type=int, help="default: --addresses")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs the fetch (e.g. .venv-debian/bin/python)")
    parser.add_argument("--only", choices=("pgsql", "ldap"))
    parser.add_argument("--sync", action="store_true",
                        help="time the whole sync (fetch, sort out, store the snapshot: "
                        "backupmx.sources.sync.sync_source), not the driver alone")
    options = parser.parse_args()
    mode = "sync" if options.sync else "fetch"
    ldap_count = options.ldap_addresses or options.addresses
    with tempfile.TemporaryDirectory(prefix="source-bench-") as temporary:
        folder = Path(temporary)
        password_file = folder / "reader.password"
        password_file.write_text(PASSWORD + "\n")
        print(f"fetching with {options.python}", flush=True)
        print("| source | addresses | fetch time (median) | rows/s | peak RSS of the fetching "
              "process | peak RSS growth during the fetch | each run (s) |")
        print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
        loads = []
        if options.only in (None, "pgsql"):
            postgres = Postgres(folder / "postgres").setup().start()
            try:
                loads.append(f"PostgreSQL: {options.addresses:,} rows inserted in "
                             f"{load_postgres(postgres, options.addresses):.1f} s")
                settings = {"dsn": postgres.dsn("reader", "directory"),
                            "password_file": str(password_file),
                            "query": "SELECT address FROM users WHERE active"}
                runs = [fetch_in_child(options.python, "pgsql", settings, mode)
                        for _ in range(options.repeats)]
                report("PostgreSQL (pgsql)", runs, options.addresses)
            finally:
                postgres.stop()
        if options.only in (None, "ldap"):
            slapd = Slapd(folder / "slapd").setup()
            try:
                loads.append(f"slapd: {ldap_count:,} entries loaded with slapadd -q in "
                             f"{load_slapd(slapd, ldap_count, folder):.1f} s")
                slapd.start()
                settings = {"uri": slapd.uri, "base": slapd.people, "bind_dn": slapd.reader_dn,
                            "bind_password_file": str(password_file),
                            "filter": "(objectClass=inetOrgPerson)", "attributes": ["mail"],
                            "page_size": 1000}
                runs = [fetch_in_child(options.python, "ldap", settings, mode)
                        for _ in range(options.repeats)]
                report("LDAP (ldap, paged)", runs, ldap_count)
            finally:
                slapd.stop()
        print()
        for line in loads:
            print(line)


if __name__ == "__main__":
    main()
