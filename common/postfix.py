"""Every call backupmx makes to Postfix's own tools goes through here.

It knows which Postfix instance to talk to: ``[postfix] config_directory`` when set, else the
``MAIL_CONFIG`` environment variable (Postfix's own convention), else Postfix's default. These
calls block (they run programs): daemons call them off the reactor thread.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

#: Postfix's compiled-in config_directory on Debian and Fedora (postconf -d config_directory)
DEFAULT_CONFIG_DIRECTORY = "/etc/postfix"


class PostfixError(RuntimeError):
    """A Postfix tool failed or could not be run; the message says which and why."""


@dataclass(frozen=True)
class Postfix:
    """A handle on one Postfix instance, chosen by its configuration directory."""

    config_directory: Optional[str] = None
    timeout: float = 60.0

    @classmethod
    def from_setting(cls, config_directory: Optional[str]) -> "Postfix":
        return cls(config_directory or os.environ.get("MAIL_CONFIG") or None)

    def directory(self) -> str:
        """The configuration directory this handle names (Postfix's default: /etc/postfix)."""
        return self.config_directory or DEFAULT_CONFIG_DIRECTORY

    def _config_args(self) -> List[str]:
        return ["-c", self.config_directory] if self.config_directory else []

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Postfix command (postconf, postqueue, ...) against this instance."""
        command = [tool, *self._config_args(), *args]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError:
            raise PostfixError(f"{tool}: not found; is Postfix installed?") from None
        except subprocess.TimeoutExpired:
            raise PostfixError(f"{' '.join(command)}: no answer in {self.timeout:.0f} s") from None
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            reason = detail[-1] if detail else f"exit status {result.returncode}"
            raise PostfixError(f"{' '.join(command)}: {reason}")
        return result

    def postconf(self, *names: str, defaults: bool = False, expand: bool = False) -> Dict[str, str]:
        """Values of main.cf parameters (``postconf [-d] [-x] NAME...``) as a dict.

        ``expand`` asks Postfix to expand ``$name`` references (``-x``), as its daemons would.
        """
        args = (["-d"] if defaults else []) + (["-x"] if expand else []) + list(names)
        output = self.run("postconf", *args).stdout
        return parse_postconf(output.splitlines())

    def parameter(self, name: str) -> str:
        return self.postconf(name)[name]

    def master_services(self) -> List[str]:
        """master.cf service lines (``postconf -M``), one string per service."""
        return [line for line in self.run("postconf", "-M").stdout.splitlines() if line.strip()]

    def queue_json(self) -> str:
        """The live queue, one JSON object per line (``postqueue -j``)."""
        return self.run("postqueue", "-j").stdout

    def flush_domain(self, domain: str) -> subprocess.CompletedProcess:
        """Ask Postfix to deliver the deferred mail of one domain (``postqueue -s DOMAIN``)."""
        return self.run("postqueue", "-s", domain, check=False)


    def sendmail(self, recipient: str, message: str) -> None:
        """Submit a message (RFC 5322 text, LF line ends) to one recipient through Postfix's
        ``sendmail`` (``-C`` config_directory, ``-i``: a lone dot is no end). PostfixError when
        it cannot be run or refuses the message."""
        command = ["sendmail", *(["-C", self.config_directory] if self.config_directory
                                 else []), "-i", "--", recipient]
        try:
            result = subprocess.run(command, input=message, capture_output=True, text=True,
                                    timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise PostfixError("sendmail: not found; is Postfix installed?") from None
        except subprocess.TimeoutExpired:
            raise PostfixError(f"{' '.join(command)}: no answer in {self.timeout:.0f} s") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            reason = detail[-1] if detail else f"exit status {result.returncode}"
            raise PostfixError(f"{' '.join(command)}: {reason}")


def parse_postconf(lines: Sequence[str]) -> Dict[str, str]:
    """Parse ``name = value`` lines as postconf prints them."""
    values: Dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values
