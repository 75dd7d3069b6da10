"""Waking a sleeping render node: a Wake-on-LAN magic packet to its MAC address (six 0xFF bytes,
then the MAC sixteen times, as one UDP datagram, by default broadcast to port 9), or the farm's
wake command (an IPMI call, an ssh to a waker node on the node's LAN) with the node's name and MAC
put in. Also the MAC a worker advertises: FARM_WORKER_MAC, or its default route's interface."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
from pathlib import Path

from renderfarm.errors import ConfigError

MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
WAKE_COMMAND_TIMEOUT = 60.0  # seconds a wake command may run


def normal_mac(text: str, where: str = "mac") -> str:
    """A MAC address as lowercase colon-separated hex (`AA-BB-...` and `aabb.ccdd.eeff` accepted)."""
    digits = re.sub(r"[:\-.]", "", text.strip().lower()) if isinstance(text, str) else ""
    if not re.fullmatch(r"[0-9a-f]{12}", digits):
        raise ConfigError(f"{where}: {text!r} is not a MAC address (e.g. 52:54:00:12:34:56)")
    mac = ":".join(digits[i:i + 2] for i in range(0, 12, 2))
    if mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
        raise ConfigError(f"{where}: {text!r} is not a machine's MAC address")
    return mac


def magic_packet(mac: str) -> bytes:
    """The Wake-on-LAN magic packet for `mac`: 6 bytes of 0xFF, then the 6 bytes of the MAC 16 times."""
    return b"\xff" * 6 + bytes.fromhex(normal_mac(mac).replace(":", "")) * 16


def send_magic_packet(mac: str, address: str = "255.255.255.255", port: int = 9) -> bytes:
    """Send the magic packet for `mac` to `address`:`port` over UDP (broadcast allowed); returns it."""
    packet = magic_packet(mac)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(packet, (address, port))
    return packet


def wake_argv(template: str, node: str, mac: str | None) -> list[str]:
    """The wake command's argv: `template` split like a shell line (never run by one), with
    `{node}` and `{mac}` put into its words."""
    try:
        words = shlex.split(template)
    except ValueError as e:
        raise ConfigError(f"wake_command: {template!r} does not split into words ({e})") from None
    if not words:
        raise ConfigError("wake_command: empty")
    return [w.replace("{node}", node).replace("{mac}", mac or "") for w in words]


def run_wake_command(template: str, node: str, mac: str | None) -> subprocess.CompletedProcess:
    """Run the wake command for one node (the caller's thread waits for it)."""
    return subprocess.run(wake_argv(template, node, mac), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=WAKE_COMMAND_TIMEOUT, check=False)


def own_mac(configured: str | None = None, net: Path = Path("/sys/class/net")) -> str | None:
    """This machine's MAC to be woken at: `configured` (FARM_WORKER_MAC), else that of the
    interface of the default route, else of the first interface with one; None if none has."""
    if configured:
        return normal_mac(configured, "worker_mac")
    names = [_default_route_interface()] + sorted(p.name for p in net.iterdir()) if net.is_dir() else []
    for name in names:
        if not name or name == "lo":
            continue
        try:
            return normal_mac((net / name / "address").read_text())
        except (OSError, ConfigError):
            continue
    return None


def _default_route_interface() -> str | None:
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) > 1 and parts[1] == "00000000":
            return parts[0]
    return None
