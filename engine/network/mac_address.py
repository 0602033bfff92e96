"""A container's own MAC address (docker's ``--mac-address``, the API's ``Config.MacAddress``
and ``EndpointsConfig.<net>.MacAddress``), checked as dockerd checks it.

It is the container's on its first network (``service.Membership.mac_address``): the bridge
plugin sets it on the container's interface at every start (the ``mac`` capability, see
``NetworkStore.conflist``).
"""

from __future__ import annotations

import re

from engine.errors import InvalidArgument

# dockerd's words (the CLI's opts.ValidateMACAddress; the daemon's network-mode check)
CONFLICTING_MODE = "conflicting options: mac-address and the network mode"
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


def parse(text: str) -> str:
    """The address as ``aa:bb:cc:dd:ee:ff`` (Go's net.ParseMAC forms with ':' or '-'); ""
    for none."""
    text = text.strip()
    if not text:
        return ""
    if not _MAC_RE.match(text):
        raise InvalidArgument(f"{text} is not a valid mac address")
    mac = text.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:
        # the kernel refuses it on an interface ("cannot assign requested address")
        raise InvalidArgument(f"{text} is not a valid mac address: it is a multicast address (the "
                              "first octet is odd); a unicast one has an even first octet, e.g. 02:42:…")
    return mac
