"""Whether the Pi can reach what an update needs: a route, DNS, the git remote, Moonraker."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand
from typing_extensions import override

from .klipper import DEFAULT_URL
from .probe import as_dict, as_str, expand_hosts, json_document, probe_command


class NetworkReachabilityDict(TypedDict, total=False):
    default_route: bool
    dns: bool  # name resolution works: any name among the remote's host and ``hosts`` resolved
    resolved: dict[str, bool]  # each of those names -> resolved within the timeout
    reachable: dict[str, bool]  # "host:port" -> TCP connect succeeded within the timeout
    remote: str  # the Klipper git remote's "host:port" ("" without a remote)
    moonraker: bool


def parse_network_reachability(raw: Mapping[str, Any]) -> NetworkReachabilityDict:
    """The probe's checks (``remote.probe_reachability``) as reachability facts."""
    if "default_route" not in raw:
        return {}
    dns = as_dict(raw.get("dns"))
    tcp = as_dict(raw.get("tcp"))
    targets = [t for t in raw.get("targets") or [] if isinstance(t, str)]
    moonraker = as_str(raw.get("moonraker_target"))
    return {
        "default_route": raw.get("default_route") is True,
        "dns": any(value is True for value in dns.values()),
        "resolved": {name: value is True for name, value in dns.items()},
        "reachable": {target: tcp.get(target) is True for target in targets},
        "remote": as_str(raw.get("remote")),
        "moonraker": bool(moonraker) and tcp.get(moonraker) is True,
    }


class NetworkReachability(FactBase[NetworkReachabilityDict]):
    """
    Returns whether the Pi has a default route, resolves names, reaches the Klipper git remote
    (``remote.origin.url`` of ``klipper_path``) and every host of ``hosts`` over TCP
    (``"host"`` = port 443, or ``"host:port"``; from the CLI: ``hosts=a.com,b.com:9418``), and
    reaches Moonraker's port. All checks run in parallel within ``timeout`` seconds, so an
    offline Pi answers in a few seconds at most.

    .. code:: python

        {
            "default_route": True, "dns": True, "remote": "github.com:443",
            "resolved": {"github.com": True, "pypi.org": False},
            "reachable": {"github.com:443": True, "pypi.org:443": False},
            "moonraker": True,
        }
    """

    @override
    def command(
        self,
        hosts: str | Iterable[str] = (),
        klipper_path: str = "~/klipper",
        moonraker_url: str = DEFAULT_URL,
        timeout: float = 3.0,
    ) -> StringCommand:
        return probe_command("network", {
            "hosts": expand_hosts(hosts), "klipper_path": klipper_path,
            "moonraker_url": moonraker_url, "timeout": float(timeout),
        })

    @override
    def process(self, output: list[str]) -> NetworkReachabilityDict:
        return parse_network_reachability(json_document(output))

    @staticmethod
    def default() -> NetworkReachabilityDict:
        return {}
