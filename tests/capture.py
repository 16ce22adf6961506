"""Capture what really crosses the loopback interface: tcpdump, and TCP streams out of its pcap.

The privacy tests read these bytes rather than fedtl's own message log: what a network
attacker (or the coordinator's host) could see. Skipped where tcpdump is missing, unless
FEDTL_REQUIRE_CAPTURE=1 (CI installs Debian's tcpdump and sets it).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.waiting import wait_until


def require_tcpdump() -> str:
    path = shutil.which("tcpdump")
    if path is None:
        if os.environ.get("FEDTL_REQUIRE_CAPTURE") == "1":
            pytest.fail("tcpdump is required (FEDTL_REQUIRE_CAPTURE=1): apt-get install tcpdump")
        pytest.skip("tcpdump not installed")
    return path


class Capture:
    """``with Capture(port, out):`` records every TCP packet to or from ``port`` on ``lo``."""

    def __init__(self, port: int, pcap: Path):
        self.port, self.pcap = port, Path(pcap)
        self.log = self.pcap.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Capture:
        tcpdump = require_tcpdump()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([tcpdump, "-i", "lo", "-U", "-s", "0", "-w", str(self.pcap),
                                          f"tcp port {self.port}"], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: b"listening on" in self.log.read_bytes() or self.proc.poll() is not None, 20,
                   "tcpdump did not start")
        assert self.proc.poll() is None, self.log.read_text(errors="replace")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # flushes the file
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def streams(self) -> dict[tuple[str, int, str, int], bytes]:
        return tcp_streams(self.pcap)


def tcp_streams(pcap: Path) -> dict[tuple[str, int, str, int], bytes]:
    """Each TCP flow's payload bytes in capture order (loopback: no loss, no reordering).

    Reads classic pcap with Ethernet (``lo``'s link type 1) or Linux cooked (113) framing.
    """
    data = Path(pcap).read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    link = struct.unpack(order + "I", data[20:24])[0]
    link_header = {1: 14, 113: 16}[link]
    flows: dict[tuple[str, int, str, int], bytearray] = defaultdict(bytearray)
    at = 24
    while at + 16 <= len(data):
        incl = struct.unpack(order + "I", data[at + 8:at + 12])[0]
        frame = data[at + 16:at + 16 + incl]
        at += 16 + incl
        ip = frame[link_header:]
        if not ip:
            continue
        version = ip[0] >> 4
        if version == 4 and ip[9] == 6:
            ihl = (ip[0] & 0x0F) * 4
            src, dst, tcp = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20])), ip[ihl:]
        elif version == 6 and ip[6] == 6:
            src, dst, tcp = ip[8:24].hex(), ip[24:40].hex(), ip[40:]
        else:
            continue
        sport, dport = struct.unpack(">HH", tcp[:4])
        offset = (tcp[12] >> 4) * 4
        flows[(src, sport, dst, dport)] += tcp[offset:]
    return {flow: bytes(payload) for flow, payload in flows.items()}
