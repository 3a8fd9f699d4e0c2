#!/usr/bin/env python3
"""Writes the hand-written seeds under fuzz/seeds/<target>/ (committed; run.sh copies them into
the corpus). Run it again after changing a target's input type, then check a seed decodes as
meant with `cargo fuzz fmt <target> seeds/<target>/<name>`.

packet_parse takes raw datagrams. The other targets take `arbitrary` 1.x structures, written
here field by field in declaration order: integers little-endian, a bool or an Option's tag as
one byte (odd: true/Some), an enum's variant as a u32 `x` with `x * variants >> 32 == index`,
each element of a non-final Vec after a keep-going byte 1 and the list ended by a byte 0, a
final slice as the rest of the input, and a non-final slice's length taken from the *last*
bytes of the input (we only ever leave those empty, with one trailing 0 on inputs under 256
bytes).
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


def opts(*pairs):
    return b"".join(n.encode() + b"\0" + v.encode() + b"\0" for n, v in pairs)


def rrq(name, mode="octet", options=b"", op=1):
    return struct.pack(">H", op) + name.encode() + b"\0" + mode.encode() + b"\0" + options


# Option lists of real clients' RRQs.
EDK2 = opts(("tsize", "0"), ("blksize", "1468"), ("windowsize", "4"))
IPXE = opts(("blksize", "1432"), ("tsize", "0"))
UBOOT = opts(("timeout", "5"), ("tsize", "0"), ("blksize", "1468"), ("windowsize", "16"))
PXELINUX = opts(("tsize", "0"), ("blksize", "1408"))
GRUB = opts(("blksize", "1024"), ("tsize", "0"))
CURL = opts(("tsize", "0"), ("blksize", "512"), ("timeout", "6"))
HPA = opts(("utimeout", "500000"), ("tsize", "0"), ("blksize", "65464"))

# --- packet_parse: raw datagrams ----------------------------------------------------------
PACKETS = {
    "rrq_edk2": rrq("pxelinux.0", options=EDK2),
    "rrq_ipxe": rrq("undionly.kpxe", options=IPXE),
    "rrq_uboot": rrq("zImage", options=UBOOT),
    "rrq_pxelinux": rrq("pxelinux.cfg/01-52-54-00-12-34-56", options=PXELINUX),
    "rrq_grub": rrq("/grub/x86_64-efi/normal.mod", options=GRUB),
    "rrq_curl": rrq("boot/vmlinuz", options=CURL),
    "rrq_netascii_upper": rrq("boot.ipxe", mode="NETASCII"),
    "rrq_padded": rrq("bootx64.efi", mode="Octet", options=opts(("blksize", "1468")) + b"\0\0\0"),
    "wrq": rrq("upload.bin", op=2, options=opts(("tsize", "1234"))),
    "data": b"\x00\x03\x00\x01" + b"hello, world\n",
    "ack": b"\x00\x04\xff\xff",
    "error_tsize_probe": b"\x00\x05\x00\x08" + b"User aborted the transfer\0",
    "oack": b"\x00\x06" + opts(("blksize", "1468"), ("tsize", "1048576"), ("windowsize", "4")),
    "rrq_unterminated": b"\x00\x01pxelinux.0\x00octet",
    "rrq_utf8_name": rrq("d\u00e9mo/\u00fcber.cfg"),
    "unknown_opcode": b"\x00\x07\x00\x00",
}
for name, data in PACKETS.items():
    write("packet_parse", name, data)

# --- options_negotiate: Input { blksize_max: u16, windowsize_max: u16, tsize: Option<u64>,
#                               options: &[u8] (rest) } ----------------------------------
def negotiate(options, blksize_max=65464, windowsize_max=64, tsize=1048576):
    head = struct.pack("<HH", blksize_max, windowsize_max)
    head += b"\0" if tsize is None else b"\1" + struct.pack("<Q", tsize)
    return head + options


OPTIONS = {
    "edk2": negotiate(EDK2),
    "ipxe": negotiate(IPXE),
    "uboot": negotiate(UBOOT, blksize_max=1024, windowsize_max=8),
    "pxelinux_size_unknown": negotiate(PXELINUX, tsize=None),
    "grub": negotiate(GRUB),
    "curl": negotiate(CURL),
    "hpa_utimeout": negotiate(HPA),
    "fractional_timeout": negotiate(opts(("timeout", "0.25"), ("windowsize", "65535"))),
    "both_timeouts": negotiate(opts(("timeout", "3"), ("utimeout", "10000"))),
    "duplicates_mixed_case": negotiate(
        opts(("BLKSIZE", "9000"), ("blksize", "1400"), ("WindowSize", "4"), ("x-unknown", "1"))
    ),
    "huge_values": negotiate(
        opts(("blksize", "99999999999999999999999"), ("windowsize", "18446744073709551616"))
    ),
    "silly_blksize": negotiate(opts(("blksize", "7"))),
    "zero_window": negotiate(opts(("windowsize", "0"))),
    "tiny_limits": negotiate(EDK2, blksize_max=0, windowsize_max=0),
}
for name, data in OPTIONS.items():
    write("options_negotiate", name, data)

# --- netascii: Input { cuts: Vec<(u8, u8)>, data: &[u8] (rest) } ---------------------------
def netascii(cuts, data):
    out = b"".join(b"\1" + bytes(c) for c in cuts) + b"\0"
    return out + data


TEXT = b"#!ipxe\r\ndhcp\nchain http://boot/${mac}.ipxe\r\n\r\rlone CR\r\x00and NUL\n"
NETASCII = {
    "script_bytewise": netascii([], TEXT),
    "script_blocks": netascii([(7, 8), (255, 3), (0, 1), (2, 0)], TEXT),
    "crlf_runs": netascii([(3, 2)], b"\r\n" * 40 + b"\n\r" * 40),
    "binary": netascii([(255, 255)], bytes(range(256))),
}
for name, data in NETASCII.items():
    write("netascii", name, data)

# --- transfer_events ----------------------------------------------------------------------
# Input { request: Request, len: Len, settings: Settings, tsize: Option<u64>, events: Vec<Event> }
EVENTS = ["Datagram", "AckNearAcked", "AckNearSent", "Ack", "Error", "Timeout", "EarlyTimeout",
          "Advance", "Repeat", "Abort", "Drain", "PollOne", "Run"]


def variant(index, count):
    """The smallest u32 that derive(Arbitrary) maps to variant `index` of `count`."""
    x = -(-(index << 32) // count)
    assert (x * count) >> 32 == index and x < 1 << 32
    return struct.pack("<I", x)


def opt_u32(v):
    return b"\0" if v is None else b"\1" + struct.pack("<I", v)


def event(name, *args):
    body = variant(EVENTS.index(name), len(EVENTS))
    if name in ("AckNearAcked", "AckNearSent"):
        body += struct.pack("<b", args[0])
    elif name in ("Ack", "Run", "Abort"):
        body += struct.pack("<H", args[0])
    elif name == "Advance":
        body += struct.pack("<I", args[0])
    elif name == "Error":
        body += struct.pack("<HB", args[0], args[1])
    else:
        assert not args, name
    return b"\1" + body


def transfer(events, blksize=None, windowsize=None, timeout=None, tsize=False,
             blksize_max=65464, windowsize_max=64, length=("Bytes", 3000),
             retries=5, retries_unanswered=1, rto_initial=1000, rto=(20, 4000), patience=5000):
    req = opt_u32(blksize) + opt_u32(windowsize)
    if timeout is None:
        req += b"\0"
    else:  # (utimeout?, microseconds)
        req += b"\1" + bytes([1 if timeout[0] else 0]) + struct.pack("<I", timeout[1])
    req += bytes([1 if tsize else 0]) + struct.pack("<HH", blksize_max, windowsize_max)
    kind, *vals = length
    lens = variant(["Bytes", "Blocks", "Any"].index(kind), 3)
    lens += struct.pack({"Bytes": "<H", "Blocks": "<IH", "Any": "<Q"}[kind], *vals)
    settings = struct.pack("<BBIIII", retries, retries_unanswered, rto_initial, *rto, patience)
    data = req + lens + settings + b"\1" + struct.pack("<Q", 4096) + b"".join(events) + b"\0"
    # The trailing byte is the length of `request.extra`: 0 (inputs stay under 256 bytes).
    assert len(data) + 1 <= 256, len(data)
    return data + b"\0"


TRANSFERS = {
    # UEFI firmware: tsize, blksize 1468, windowsize 4, a clean run to the end.
    "edk2_clean": transfer([event("Run", 1000)], blksize=1468, windowsize=4, tsize=True,
                           length=("Blocks", 20, 100)),
    # UEFI's size probe: the OACK, then ERROR 8 from the client.
    "edk2_tsize_probe": transfer([event("Drain"), event("Error", 8, 1)], blksize=1468,
                                 tsize=True, length=("Bytes", 60000)),
    # Lock-step without options; an exact multiple of 512 ends with an empty block.
    "lockstep_exact_multiple": transfer([event("Run", 10)], length=("Blocks", 3, 0)),
    # An empty file: one empty DATA block.
    "empty_file": transfer([event("Run", 3)], length=("Bytes", 0)),
    # Crossing the block-number rollover: 70000 blocks of 8 bytes, windows of 64.
    "rollover": transfer([event("Run", 65535)], blksize=8, windowsize=64,
                         length=("Blocks", 70000, 3)),
    # A forged request: nobody ever answers; it gives up after the unanswered retries.
    "silent_client": transfer([event("Drain"), event("Timeout"), event("Drain"),
                               event("Timeout"), event("Drain"), event("Timeout")],
                              windowsize=16, length=("Bytes", 65000)),
    # Loss: a window times out twice (a retransmit, then a probe), the client catches up.
    "window_loss": transfer([event("Run", 2), event("Timeout"), event("Drain"),
                             event("Timeout"), event("Drain"), event("AckNearSent", 0),
                             event("Run", 100)], windowsize=8, length=("Blocks", 40, 7)),
    # Duplicate and stale ACKs (Sorcerer's Apprentice), then an ACK from far away.
    "duplicate_acks": transfer([event("Run", 3), event("AckNearAcked", 0),
                                event("AckNearAcked", -1), event("Drain"),
                                event("Ack", 40000), event("Drain")],
                               length=("Bytes", 5000)),
    # The client repeats its RRQ because the first reply was lost.
    "repeated_request": transfer([event("Drain"), event("Repeat"), event("Drain"),
                                  event("Advance", 1500000), event("Timeout"), event("Repeat"),
                                  event("Drain"), event("Run", 20)], length=("Bytes", 2000)),
    # tftp-hpa's utimeout: a fixed 10 ms interval, no adaptation, then a driver failure.
    "utimeout_abort": transfer([event("Run", 3), event("Timeout"), event("Abort", 3),
                                event("Drain")], timeout=(True, 10000), blksize=65464,
                               length=("Any", 1 << 40)),
    # Early timer calls and time passing in between.
    "early_timers": transfer([event("Drain"), event("EarlyTimeout"), event("Advance", 999999),
                              event("EarlyTimeout"), event("PollOne"), event("Advance", 2),
                              event("EarlyTimeout"), event("PollOne"), event("Run", 5)],
                             length=("Bytes", 1024)),
}
for name, data in TRANSFERS.items():
    write("transfer_events", name, data)
