"""The wire protocol: message kinds, the header schema, frames <-> messages, and validation. No sockets here.

A message is a list of frames (DESIGN.md section 2):

    frame 0     msgpack header: {"v", "kind", "sender", "round", "body", "frames", "tensors"}
    frame 1..n  raw payload buffers (codec output), sent without copying

`frames` lists the byte length of frames 1..n, so a truncated or padded multipart message is caught before any
payload is read. Each entry of `tensors` names one encoded tensor:

    {"key": module or dense key, "role": "A" | "B" | "dense", "codec": "int8", "dtype": "float32" (what it decodes
     to), "shape": [...], "r": rank, "alpha": lora alpha, "rslora": bool, "meta": codec meta,
     "bufs": [[frame index, byte offset, byte length], ...]}

Buffers of at least `PACK_BELOW` (128 KiB) get a frame of their own, zero-copy; smaller ones are copied, 16-byte
aligned, into one shared frame: a zero-copy frame costs more than copying a small buffer (pyzmq copies frames under
64 KiB anyway), and packing big ones means filling a fresh large buffer per message (bench_transport measures both).

Everything a receiver gets is hostile until checked: `from_frames` validates every header field against `Limits`
and (optionally) the receiver's `AdapterLayout`, checks every buffer's exact length against its codec, and decodes
(NaN/Inf rejected). Any problem raises `ProtocolError` whose `reason` is a short counter name and whose message says
what was wrong. msgpack only, with strict map keys and length limits; never pickle.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Sequence

import msgpack
import torch

from declora.core.checks import is_int
from declora.core.codecs import CODEC_NAMES, Codec, Encoded, make_codec
from declora.core.factors import Adapter

PROTOCOL_VERSION = 1
PACK_BELOW = 128 * 1024  # buffers under this share one frame (why: see the module docstring)
PACK_ALIGN = 16  # offsets inside the packed frame, so numpy/torch views of it are aligned
ROLES = ("A", "B", "dense")
WIRE_DTYPE = "float32"  # every codec decodes to float32
HEADER_KEYS = frozenset({"v", "kind", "sender", "round", "body", "frames", "tensors"})
TENSOR_KEYS = frozenset({"key", "role", "codec", "dtype", "shape", "r", "alpha", "rslora", "meta", "bufs"})


class Kind(str, Enum):
    HELLO = "hello"  # body: endpoint, protocol version, adapter layout
    FACTORS = "factors"  # a gossip round's adapter
    PING = "ping"
    PONG = "pong"
    BYE = "bye"  # the sender is leaving: treat it as down until it speaks again
    UPDATE = "update"  # parameter-server baseline: client -> server
    AGGREGATE = "aggregate"  # parameter-server baseline: server -> client
    STATE_REQUEST = "state_request"  # catch-up: a peer that is behind asks for a neighbour's STATE
    STATE = "state"  # catch-up: the neighbour's adapter after its last finished round (round = that round)


TENSOR_KINDS = frozenset({Kind.FACTORS, Kind.UPDATE, Kind.AGGREGATE, Kind.STATE})
_KIND_BY_VALUE = {k.value: k for k in Kind}


class ProtocolError(ValueError):
    """A message that breaks the protocol. `reason` is a short name for counters (e.g. "version", "shape")."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts. The defaults fit a 7B-class model with LoRA on every linear layer."""

    max_message_bytes: int = 256 << 20  # whole message, header included; also ZeroMQ's MAXMSGSIZE per frame
    max_tensors: int = 4096
    max_rank: int = 1024
    max_header_bytes: int = 4 << 20
    max_key_len: int = 512
    max_peer_id: int = (1 << 31) - 1
    max_round: int = (1 << 53) - 1  # rounds stay exact as JSON numbers too


# ---- the receiver's adapter layout --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModuleLayout:
    """What a module's factors must look like: A (r, in), B (out, r) with min_rank <= r <= max_rank."""

    in_features: int
    out_features: int
    min_rank: int = 1
    max_rank: int | None = None  # None: only Limits.max_rank applies
    alpha: float | None = None  # None: any finite positive alpha
    rslora: bool | None = None


@dataclass
class AdapterLayout:
    """Per module key the factor shapes and allowed ranks; per dense key the exact shape.

    Heterogeneous ranks are normal (stack/svd/zeropad modes), so by default a rank only has to lie in [1, max_rank];
    gossip, which averages A and B directly, asks for `equal_rank=True`.
    """

    modules: dict[str, ModuleLayout] = field(default_factory=dict)
    dense: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def from_adapter(cls, adapter: Adapter, max_rank: int | None = None, *, equal_rank: bool = False,
                     same_alpha: bool = True) -> "AdapterLayout":
        modules = {}
        for key, f in adapter.factors.items():
            lo, hi = (f.r, f.r) if equal_rank else (1, max_rank)
            modules[key] = ModuleLayout(f.in_features, f.out_features, lo, hi,
                                        float(f.alpha) if same_alpha else None, bool(f.rslora) if same_alpha else None)
        return cls(modules, {k: tuple(int(d) for d in t.shape) for k, t in adapter.dense.items()})

    def check(self, message: "Message") -> None:
        """Raise ProtocolError unless the message's tensors are exactly this layout's modules and dense tensors."""
        _check_against_layout([_Spec(t.key, t.role, tuple(t.encoded.shape), t.r, t.alpha, t.rslora)
                               for t in message.tensors], self)

    def to_body(self) -> dict:
        """A msgpack-able form for HELLO bodies."""
        return {"modules": {k: [m.in_features, m.out_features, m.min_rank, m.max_rank, m.alpha, m.rslora]
                            for k, m in self.modules.items()},
                "dense": {k: list(s) for k, s in self.dense.items()}}

    @classmethod
    def from_body(cls, body: Any) -> "AdapterLayout":
        """Inverse of to_body, for a layout a neighbour sent; raises ProtocolError on anything malformed."""
        try:
            modules = {}
            for k, (i, o, lo, hi, alpha, rs) in body["modules"].items():
                _need(all(is_int(v) and v > 0 for v in (i, o, lo)) and (hi is None or is_int(hi)), "layout",
                      lambda: f"bad module layout for {k!r}")
                modules[str(k)] = ModuleLayout(i, o, lo, hi, None if alpha is None else float(alpha),
                                               None if rs is None else bool(rs))
            dense = {str(k): tuple(int(d) for d in s) for k, s in body["dense"].items()}
            return cls(modules, dense)
        except ProtocolError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError("layout", f"malformed adapter layout: {e}") from None


# ---- messages -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WireTensor:
    """One tensor of a message: where it goes (key, role), its encoding, LoRA's r/alpha/rslora, and once decoded
    on the receiving side, its float32 value."""

    key: str
    role: str  # "A" | "B" | "dense"
    encoded: Encoded
    r: int = 0
    alpha: float = 0.0
    rslora: bool = False
    value: torch.Tensor | None = field(default=None, repr=False, compare=False)


@dataclass
class Message:
    kind: Kind
    sender: int  # as the header claims; the transport checks it against the authenticated identity
    round: int
    body: dict = field(default_factory=dict)
    tensors: list[WireTensor] = field(default_factory=list)
    nbytes: int = 0  # bytes on the wire: header and every payload frame
    version: int = PROTOCOL_VERSION
    _frames: list | None = field(default=None, repr=False, compare=False)


def make_message(kind: Kind | str, sender: int, round: int, tensors: Iterable[WireTensor] = (),
                 body: dict | None = None, *, pack_below: int = PACK_BELOW) -> Message:
    """Build a message and its frames once (a broadcast reuses them); `nbytes` is exact.

    The payload frames reference the codec's buffers without copying: do not change them until sent.
    `pack_below=0` gives every buffer its own frame (for measuring what packing buys).
    """
    kind = Kind(kind)
    tensors = list(tensors)
    if tensors and kind not in TENSOR_KINDS:
        raise ValueError(f"{kind.value} messages carry no tensors, got {len(tensors)}")
    msg = Message(kind, int(sender), int(round), dict(body or {}), tensors)
    msg._frames = _build_frames(msg, pack_below)
    msg.nbytes = sum(memoryview(f).nbytes for f in msg._frames)
    return msg


def to_frames(message: Message) -> list:
    """Frame 0 is the msgpack header, then the raw buffers (not copied). A fresh list each call."""
    if message._frames is None:
        message._frames = _build_frames(message, PACK_BELOW)
        message.nbytes = sum(memoryview(f).nbytes for f in message._frames)
    return list(message._frames)


def _build_frames(msg: Message, pack_below: int) -> list:
    pack: list = []  # small buffers, with alignment padding between them
    pack_len = 0
    own: list = []  # big buffers, one frame each
    entries = []
    for t in msg.tensors:
        refs = []
        for buf in t.encoded.buffers:
            n = memoryview(buf).nbytes
            if n < pack_below:
                pad = -pack_len % PACK_ALIGN
                if pad:
                    pack.append(bytes(pad))
                refs.append(("pack", pack_len + pad, n))
                pack.append(buf)
                pack_len += pad + n
            else:
                own.append(buf)
                refs.append(("own", len(own) - 1, n))
        entries.append((t, refs))
    first_own = 2 if pack else 1
    payload = ([b"".join(memoryview(b).cast("B") for b in pack)] if pack else []) + own
    tensors = []
    for t, refs in entries:
        bufs = [[1, off, n] if where == "pack" else [first_own + off, 0, n] for where, off, n in refs]
        tensors.append({"key": t.key, "role": t.role, "codec": t.encoded.codec, "dtype": WIRE_DTYPE,
                        "shape": list(t.encoded.shape), "r": int(t.r), "alpha": float(t.alpha),
                        "rslora": bool(t.rslora), "meta": dict(t.encoded.meta), "bufs": bufs})
    header = {"v": msg.version, "kind": msg.kind.value, "sender": msg.sender, "round": msg.round,
              "body": msg.body, "frames": [memoryview(p).nbytes for p in payload], "tensors": tensors}
    return [msgpack.packb(header, use_bin_type=True), *payload]


# ---- decoding and validation ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """The layout-relevant part of one tensor entry."""

    key: str
    role: str
    shape: tuple[int, ...]
    r: int
    alpha: float
    rslora: bool


def from_frames(frames: Sequence, *, layout: AdapterLayout | None = None, limits: Limits = Limits(),
                expected_version: int = PROTOCOL_VERSION, decode: bool = True) -> Message:
    """Parse and validate a received multipart message; with `decode`, decode every tensor too.

    `frames` are bytes-like objects (bytes, memoryview, zmq.Frame). Raises ProtocolError and nothing else.
    Without `decode`, payload values are not read (call `decode_message` later); sizes are checked either way.
    """
    views = _frame_views(frames, limits)
    header = _unpack_header(views[0], limits)
    version, kind, sender, round_ = _check_envelope(header, expected_version, limits)
    body = header["body"]
    _need(isinstance(body, dict) and all(isinstance(k, str) for k in body), "body", "body must be a map with str keys")
    sizes = header["frames"]
    _need(isinstance(sizes, list) and all(is_int(n) for n in sizes), "frames", "'frames' must be a list of ints")
    _need(len(sizes) == len(views) - 1, "frames",
          lambda: f"header lists {len(sizes)} payload frames but {len(views) - 1} arrived")
    for i, (want, got) in enumerate(zip(sizes, views[1:]), start=1):
        _need(want == got.nbytes, "frames", lambda: f"frame {i} has {got.nbytes} bytes, header says {want}")
    entries = header["tensors"]
    _need(isinstance(entries, list), "bad_header", "'tensors' must be a list")
    _need(len(entries) <= limits.max_tensors, "limits", lambda: f"{len(entries)} tensors, more than {limits.max_tensors}")
    _need(kind in TENSOR_KINDS or not entries, "kind", lambda: f"{kind.value} messages carry no tensors, got {len(entries)}")
    tensors = [_parse_tensor(i, e, views, limits) for i, e in enumerate(entries)]
    specs = [_Spec(t.key, t.role, tuple(t.encoded.shape), t.r, t.alpha, t.rslora) for t in tensors]
    _check_structure(specs, kind)
    if layout is not None and kind in TENSOR_KINDS:
        _check_against_layout(specs, layout)
    nbytes = sum(v.nbytes for v in views)
    msg = Message(kind, sender, round_, body, tensors, nbytes, version)
    return decode_message(msg) if decode else msg


def decode_message(message: Message) -> Message:
    """Decode every tensor that has no value yet (in place, also returned). NaN/Inf -> ProtocolError."""
    for i, t in enumerate(message.tensors):
        if t.value is None:
            message.tensors[i] = dataclasses.replace(t, value=_decode(t))
    return message


_DECODERS: dict[str, Codec] = {}
_NONFINITE = re.compile(r"\b(nan|inf|non-?finite)\b", re.IGNORECASE)  # how codecs word a NaN/Inf refusal


def _decoder(name: str) -> Codec:
    # Decoding reads block sizes from the received meta, so one stateless codec per name serves every message.
    if name not in _DECODERS:
        _DECODERS[name] = make_codec(name)
    return _DECODERS[name]


def _decode(t: WireTensor) -> torch.Tensor:
    try:
        return _decoder(t.encoded.codec).decode(t.encoded.shape, t.encoded.meta, t.encoded.buffers)
    except Exception as e:  # noqa: BLE001 - whatever a codec makes of hostile bytes is the sender's fault
        reason = "nonfinite" if _NONFINITE.search(str(e)) else "payload"
        raise ProtocolError(reason, f"tensor {t.key!r} ({t.role}): {e}") from None


def _need(ok: bool, reason: str, message) -> None:
    """Raise ProtocolError(reason, message) unless ok; `message` may be a callable, so that the happy path (every
    field of every tensor of every message) does not pay for formatting an error that is not raised."""
    if not ok:
        raise ProtocolError(reason, message() if callable(message) else message)


def _short(v: Any, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def _frame_views(frames: Sequence, limits: Limits) -> list[memoryview]:
    try:
        frames = list(frames)
    except TypeError:
        raise ProtocolError("frames", "frames must be a sequence of bytes-like objects") from None
    _need(len(frames) >= 1, "frames", "empty multipart message")
    _need(len(frames) <= 2 * limits.max_tensors + 2, "frames", lambda: f"{len(frames)} frames, more than the limit")
    views = []
    for i, f in enumerate(frames):
        try:
            v = memoryview(f)
            views.append(v if v.format == "B" and v.ndim == 1 else v.cast("B"))
        except (TypeError, ValueError):
            raise ProtocolError("frames", f"frame {i} is not a contiguous bytes-like object") from None
    _need(views[0].nbytes <= limits.max_header_bytes, "oversize",
          lambda: f"header of {views[0].nbytes} bytes, more than {limits.max_header_bytes}")
    total = sum(v.nbytes for v in views)
    _need(total <= limits.max_message_bytes, "oversize", lambda: f"message of {total} bytes, more than {limits.max_message_bytes}")
    return views


def _unpack_header(raw: memoryview, limits: Limits) -> dict:
    n = limits.max_tensors
    try:
        header = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True, max_str_len=limits.max_header_bytes,
            max_bin_len=64 * 1024, max_array_len=4 * n + 64, max_map_len=n + 64, max_ext_len=0,
        )
    except Exception as e:  # noqa: BLE001 - msgpack raises several types on garbage; all mean the same here
        raise ProtocolError("bad_header", f"header is not valid msgpack: {type(e).__name__}: {_short(str(e))}") from None
    _need(isinstance(header, dict), "bad_header", lambda: f"header must be a map, got {type(header).__name__}")
    keys = set(header)
    _need(keys == HEADER_KEYS, "bad_header",
          lambda: f"header fields: missing {sorted(HEADER_KEYS - keys)}, unknown {sorted(map(str, keys - HEADER_KEYS))[:5]}")
    return header


def _check_envelope(h: dict, expected_version: int, limits: Limits) -> tuple[int, Kind, int, int]:
    v = h["v"]
    _need(is_int(v), "version", lambda: f"version must be an int, got {_short(v)}")
    _need(v == expected_version, "version", lambda: f"protocol version {v}, expected {expected_version}")
    kind = _KIND_BY_VALUE.get(h["kind"]) if isinstance(h["kind"], str) else None
    _need(kind is not None, "kind", lambda: f"unknown message kind {_short(h['kind'])}")
    s = h["sender"]
    _need(is_int(s) and 0 <= s <= limits.max_peer_id, "sender", lambda: f"bad sender id {_short(s)}")
    r = h["round"]
    _need(is_int(r) and 0 <= r <= limits.max_round, "round", lambda: f"bad round {_short(r)}")
    return v, kind, s, r


def _parse_tensor(i: int, e: Any, views: list[memoryview], limits: Limits) -> WireTensor:
    _need(isinstance(e, dict) and set(e) == TENSOR_KEYS, "bad_header",
          lambda: f"tensor {i}: fields must be exactly {sorted(TENSOR_KEYS)}")
    key, role, codec = e["key"], e["role"], e["codec"]
    _need(isinstance(key, str) and 0 < len(key) <= limits.max_key_len, "key", lambda: f"tensor {i}: bad key {_short(key)}")
    where = f"tensor {i} ({_short(key, 80)})"
    _need(role in ROLES, "role", lambda: f"{where}: role must be A, B or dense, got {_short(role)}")
    _need(codec in CODEC_NAMES, "codec", lambda: f"{where}: unknown codec {_short(codec)}")
    _need(e["dtype"] == WIRE_DTYPE, "dtype", lambda: f"{where}: dtype must be {WIRE_DTYPE}, got {_short(e['dtype'])}")
    shape = e["shape"]
    _need(isinstance(shape, list) and all(is_int(d) and d >= 0 for d in shape) and len(shape) <= 8, "shape",
          lambda: f"{where}: bad shape {_short(shape)}")
    shape = tuple(shape)
    r, alpha, rslora = e["r"], e["alpha"], e["rslora"]
    _need(isinstance(rslora, bool), "bad_header", lambda: f"{where}: rslora must be a bool")
    _need(isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha), "alpha",
          lambda: f"{where}: alpha must be a finite number, got {_short(alpha)}")
    _need(is_int(r), "rank", lambda: f"{where}: r must be an int, got {_short(r)}")
    if role == "dense":
        _need(r == 0, "rank", lambda: f"{where}: a dense tensor has r 0, got {r}")
    else:
        _need(len(shape) == 2, "shape", lambda: f"{where}: a LoRA factor is 2-D, got shape {list(shape)}")
        _need(1 <= r <= limits.max_rank, "rank", lambda: f"{where}: rank {r} outside [1, {limits.max_rank}]")
        rank_dim = shape[0] if role == "A" else shape[1]
        _need(rank_dim == r, "shape", lambda: f"{where}: shape {list(shape)} does not have rank {r} for role {role}")
        _need(alpha > 0, "alpha", lambda: f"{where}: alpha must be positive, got {alpha}")
    meta = e["meta"]
    _need(isinstance(meta, dict) and all(isinstance(k, str) for k in meta), "bad_header", lambda: f"{where}: meta must be a map")
    try:
        expected = _decoder(codec).buffer_nbytes(shape, meta)
    except Exception as err:  # noqa: BLE001 - the codec's own check of a hostile shape/meta
        raise ProtocolError("payload", f"{where}: {err}") from None
    bufs = e["bufs"]
    _need(isinstance(bufs, list) and len(bufs) == len(expected), "payload",
          lambda: f"{where}: {codec} needs {len(expected)} buffers, header lists {_short(bufs)}")
    buffers = []
    for j, (ref, want) in enumerate(zip(bufs, expected)):
        _need(isinstance(ref, list) and len(ref) == 3 and all(is_int(x) for x in ref), "bad_header",
              lambda: f"{where}: buffer ref {j} must be [frame, offset, length]")
        fi, off, n = ref
        _need(1 <= fi < len(views), "frames", lambda: f"{where}: buffer {j} names frame {fi}, have 1..{len(views) - 1}")
        _need(0 <= off and 0 <= n and off + n <= views[fi].nbytes, "frames",
              lambda: f"{where}: buffer {j} [{off}, {off + n}) runs past frame {fi} of {views[fi].nbytes} bytes")
        _need(n == want, "payload", lambda: f"{where}: buffer {j} has {n} bytes, {codec} needs {want} for shape {list(shape)}")
        buffers.append(views[fi][off: off + n])
    enc = Encoded(codec, shape, meta, tuple(buffers))
    return WireTensor(key, role, enc, r, float(alpha) if role != "dense" else 0.0, rslora)


def _check_structure(specs: list[_Spec], kind: Kind) -> None:
    """Each module has exactly one A and one B of the same rank, alpha and rslora; keys are unique per role."""
    seen: dict[tuple[str, str], _Spec] = {}
    for s in specs:
        _need((s.key, s.role) not in seen, "duplicate", lambda: f"tensor {s.key!r} role {s.role} appears twice")
        seen[(s.key, s.role)] = s
    for (key, role), s in seen.items():
        if role == "dense":
            continue
        other = seen.get((key, "B" if role == "A" else "A"))
        _need(other is not None, "layout", lambda: f"module {key!r} has {role} but no {'B' if role == 'A' else 'A'}")
        _need((other.r, other.alpha, other.rslora) == (s.r, s.alpha, s.rslora), "rank",
              lambda: f"module {key!r}: A and B disagree on r/alpha/rslora")


def _check_against_layout(specs: list[_Spec], layout: AdapterLayout) -> None:
    got_modules = {s.key for s in specs if s.role != "dense"}
    got_dense = {s.key for s in specs if s.role == "dense"}
    for what, got, want in (("module", got_modules, set(layout.modules)), ("dense tensor", got_dense, set(layout.dense))):
        missing, unknown = sorted(want - got), sorted(got - want)
        _need(not missing and not unknown, "layout",
              lambda: f"{what}s do not match the layout: missing {_short(missing[:3])}, unknown {_short(unknown[:3])}")
    for s in specs:
        if s.role == "dense":
            want = layout.dense[s.key]
            _need(s.shape == want, "shape", lambda: f"dense {s.key!r}: shape {list(s.shape)}, expected {list(want)}")
            continue
        m = layout.modules[s.key]
        want = (s.r, m.in_features) if s.role == "A" else (m.out_features, s.r)
        _need(s.shape == want, "shape", lambda: f"{s.key!r} {s.role}: shape {list(s.shape)}, expected {list(want)}")
        hi = m.max_rank if m.max_rank is not None else s.r
        _need(m.min_rank <= s.r <= hi, "rank", lambda: f"{s.key!r}: rank {s.r} outside [{m.min_rank}, {hi}]")
        _need(m.alpha is None or s.alpha == m.alpha, "alpha", lambda: f"{s.key!r}: alpha {s.alpha}, expected {m.alpha}")
        _need(m.rslora is None or s.rslora == m.rslora, "alpha", lambda: f"{s.key!r}: rslora {s.rslora}, expected {m.rslora}")
