"""Codec throughput, size and error on a Llama-2-7B-shaped LoRA adapter (r=16 on q_proj and v_proj).

The payload is what one peer sends per round: 32 layers x 2 modules x (A: 16 x 4096, B: 4096 x 16), i.e. 64 tensors
of each shape, Gaussian. For each codec: encode and decode throughput in MB of fp32 input per second (median over
repeats, one thread unless --threads), bytes on the wire vs fp32, and relative RMS error. fp32 is the baseline in the
same run. The goal from issue 2: int8 encode + decode >= 1 GB/s on one core.

Also measured: why int8/int4 scales are float32 and not fp16 (rel-RMS with either, at several magnitudes, and with
int8h/int4h's fp16 scales relative to one float32 scale per tensor), and the whole message's bytes at MiniLM-L6 size
(LoRA r=8 on query/value, 2-class head: 74,498 values) for each block codec, block 64 and 128, head fp32 or "same".

    python benchmarks/bench_codecs.py [--threads N] [--repeats R] [--block B]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows: page faults are then reported as 0
    resource = None

if __package__ in (None, ""):  # `python benchmarks/bench_codecs.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import llama7b_tensors, write_result  # noqa: E402
from declora.core.codecs import make_codec  # noqa: E402
from declora.core.factors import Adapter, LoraFactor  # noqa: E402
from declora.wire.adapter_messages import AdapterSender  # noqa: E402
from declora.wire.protocol import Kind, make_message  # noqa: E402

GOAL_INT8_GBPS = 1.0


def rel_rms(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    err = sum(float((x - y).double().pow(2).sum()) for x, y in zip(xs, ys))
    ref = sum(float(x.double().pow(2).sum()) for x in xs)
    return (err / ref) ** 0.5


def minor_faults() -> int:
    """Page faults so far (first touches of fresh memory): on a VM they can cost more than the arithmetic, and
    whether a decode's fresh output pages fault depends on the allocator's state, so they explain outliers."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def time_once(codec, xs: list[torch.Tensor], gen: torch.Generator) -> tuple[dict, list, list]:
    """One encode and one decode of the whole adapter: ({"enc"|"dec": (wall s, cpu s, faults)}, messages, decoded).

    Wall time is what a peer waits; this thread's CPU time leaves out time spent queued behind other processes on
    a shared machine. Decode reads immutable `bytes`, as a received ZeroMQ frame is, not the encoder's memoryviews."""
    f0, w0, c0 = minor_faults(), time.perf_counter(), time.thread_time()
    encs = [codec.encode(x, gen) for x in xs]
    f1, w1, c1 = minor_faults(), time.perf_counter(), time.thread_time()
    frames = [[bytes(b) for b in e.buffers] for e in encs]
    f2, w2, c2 = minor_faults(), time.perf_counter(), time.thread_time()
    decs = [codec.decode(e.shape, e.meta, f) for e, f in zip(encs, frames)]
    f3, w3, c3 = minor_faults(), time.perf_counter(), time.thread_time()
    return {"enc": (w1 - w0, c1 - c0, f1 - f0), "dec": (w3 - w2, c3 - c2, f3 - f2)}, encs, decs


def time_fresh_memory(xs: list[torch.Tensor]) -> float:
    """Seconds to allocate and fill one fresh float32 tensor per input: a floor for any decode that returns new
    tensors (on a VM, first touches of fresh pages can cost more than the arithmetic)."""
    t0 = time.perf_counter()
    outs = [torch.ones(x.shape) for x in xs]
    t1 = time.perf_counter()
    del outs
    return t1 - t0


def time_codecs(codecs: dict, xs: list[torch.Tensor], repeats: int, seed: int) -> dict:
    """Median seconds per codec; codecs take turns within each repeat, so a slow spell on a shared machine hits
    all of them alike and ratios to fp32 stay fair."""
    gen = torch.Generator().manual_seed(seed)
    samples = {label: [] for label in codecs}
    fresh = []
    for _ in range(repeats):
        fresh.append(time_fresh_memory(xs))
        for label, codec in codecs.items():
            t, encs, decs = time_once(codec, xs, gen)
            samples[label].append(t)
            del encs, decs
    out = {"fresh_memory_s": statistics.median(fresh)}
    for label, codec in codecs.items():
        _, encs, decs = time_once(codec, xs, gen)  # untimed: sizes and error
        assert all(e.nbytes == codec.encoded_nbytes(x.shape) for e, x in zip(encs, xs))
        ts = samples[label]

        def med(f):
            return statistics.median(f(t) for t in ts)

        out[label] = {
            "encode_s": med(lambda t: t["enc"][0]),
            "decode_s": med(lambda t: t["dec"][0]),
            "encode_plus_decode_s": med(lambda t: t["enc"][0] + t["dec"][0]),
            "encode_cpu_s": med(lambda t: t["enc"][1]),
            "decode_cpu_s": med(lambda t: t["dec"][1]),
            "encode_plus_decode_cpu_s": med(lambda t: t["enc"][1] + t["dec"][1]),
            "encode_page_faults": med(lambda t: t["enc"][2]),
            "decode_page_faults": med(lambda t: t["dec"][2]),
            "wire_bytes": sum(e.nbytes for e in encs),
            "rel_rms": rel_rms(xs, decs),
        }
    return out


def quantize_with_scale_dtype(x: torch.Tensor, qmax: int, block: int, scale_dtype: torch.dtype) -> torch.Tensor:
    """Block-absmax round trip with scales stored in `scale_dtype` (the codec's algorithm, scales rounded first)."""
    flat = x.reshape(-1)
    xb = torch.nn.functional.pad(flat, (0, -flat.numel() % block)).view(-1, block)  # zero-pad a partial block
    scale = (xb.abs().amax(dim=1) / qmax).to(scale_dtype).float()
    safe = torch.where(scale > 0, scale, 1.0)
    codes = (xb / safe[:, None]).round().clamp(-qmax, qmax)
    return (codes * scale[:, None]).reshape(-1)[: flat.numel()].reshape(x.shape)


def scale_dtype_experiment(seed: int, block: int) -> list[dict]:
    rows = []
    for sigma in (1.0, 1e-2, 1e-4, 1e-5, 1e-6, 1e-9):
        xs = llama7b_tensors(seed, sigma)[::8]  # 16 tensors are plenty for an error estimate
        for name, qmax in (("int8", 127), ("int4", 7)):
            row = {"codec": name, "sigma": sigma}
            for label, dt in (("fp32_scales", torch.float32), ("fp16_scales", torch.float16),
                              ("bf16_scales", torch.bfloat16)):
                row[label] = rel_rms(xs, [quantize_with_scale_dtype(x, qmax, block, dt) for x in xs])
            codec = make_codec(name + "h", block_size=block)  # the real int8h/int4h codec
            row["relative_fp16_scales"] = rel_rms(xs, [codec.decode(*_parts(codec.encode(x))) for x in xs])
            rows.append(row)
    return rows


def _parts(enc):
    return enc.shape, enc.meta, enc.buffers


def minilm_adapter(seed: int = 0) -> Adapter:
    """LoRA r=8 on query/value of all-MiniLM-L6-v2 (6 layers, hidden 384) and a 2-class head, as peft names them."""
    g = torch.Generator().manual_seed(seed)
    factors = {f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}":
               LoraFactor(torch.randn(8, 384, generator=g) * 0.02, torch.randn(384, 8, generator=g) * 1e-3, 16.0)
               for i in range(6) for m in ("query", "value")}
    dense = {"base_model.model.classifier.weight": torch.randn(2, 384, generator=g) * 0.05,
             "base_model.model.classifier.bias": torch.randn(2, generator=g) * 0.01}
    return Adapter(factors, dense)


def minilm_message_bytes() -> list[dict]:
    """One gossip message's bytes (header + frames, as the transport counts them) per codec, block and head codec;
    int4/int4h with error feedback, as they run. Sizes do not depend on the values."""
    adapter = minilm_adapter()

    def size(codec, block, ef, head):
        msg = make_message(Kind.FACTORS, 0, 0, AdapterSender(codec, block, False, ef, seed=0, head_codec=head)
                           .encode(adapter))
        return msg.nbytes, len(msg._frames[0]), sum(t.encoded.nbytes for t in msg.tensors)

    fp32, _, fp32_payload = size("fp32", 64, False, "fp32")
    rows = [{"codec": "fp32", "block": 0, "head": "fp32", "bytes": fp32, "payload": fp32_payload,
             "ratio": 1.0, "payload_ratio": 1.0}]
    for codec, ef in (("int8", False), ("int8h", False), ("int4", True), ("int4h", True)):
        for block in (64, 128):
            for head in ("fp32", "same"):
                n, header, payload = size(codec, block, ef, head)
                rows.append({"codec": codec + ("+EF" if ef else ""), "block": block, "head": head, "bytes": n,
                             "header": header, "payload": payload, "ratio": fp32 / n,
                             "payload_ratio": fp32_payload / payload})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the goal is stated for 1)")
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats per codec; the median is reported")
    ap.add_argument("--block", type=int, default=64, help="int8/int4 block size")
    ap.add_argument("--sigma", type=float, default=0.02, help="std of the Gaussian factors (LoRA-init scale)")
    ap.add_argument("--seed", type=int, default=0, help="data and stochastic-rounding seed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    xs = llama7b_tensors(args.seed, args.sigma)
    fp32_bytes = sum(x.numel() * 4 for x in xs)
    variants = [(n, False) for n in ("fp32", "fp16", "bf16", "int8", "int4", "int8h", "int4h")] + \
        [("int8", True), ("int4", True)]
    codecs = {name + ("+sr" if sr else ""): make_codec(name, block_size=args.block, stochastic=sr)
              for name, sr in variants}
    for codec in codecs.values():  # warm-up: first-call overheads
        e = codec.encode(xs[0])
        codec.decode(e.shape, e.meta, e.buffers)
    timed = time_codecs(codecs, xs, args.repeats, args.seed)
    rows = []
    for label in codecs:
        r = timed[label]
        rows.append({
            "codec": label,
            "encode_MBps": fp32_bytes / r["encode_s"] / 1e6,
            "decode_MBps": fp32_bytes / r["decode_s"] / 1e6,
            "enc_plus_dec_MBps": fp32_bytes / r["encode_plus_decode_s"] / 1e6,
            "enc_plus_dec_cpu_MBps": fp32_bytes / r["encode_plus_decode_cpu_s"] / 1e6,
            "bytes_vs_fp32": r["wire_bytes"] / fp32_bytes,
            **r,
        })
    fresh_MBps = fp32_bytes / timed["fresh_memory_s"] / 1e6

    load = os.getloadavg()[0]
    print(f"payload: {len(xs)} tensors, {fp32_bytes / 1e6:.1f} MB fp32; threads={args.threads}, block={args.block}, "
          f"median of {args.repeats}; load average {load:.2f} on {os.cpu_count()} cores")
    print(f"{'codec':8s} {'enc MB/s':>9s} {'dec MB/s':>9s} {'enc+dec':>9s} {'(cpu)':>9s} {'vs fp32':>8s} "
          f"{'rel RMS':>9s} {'dec faults':>10s}")
    for r in rows:
        print(f"{r['codec']:8s} {r['encode_MBps']:9.0f} {r['decode_MBps']:9.0f} {r['enc_plus_dec_MBps']:9.0f} "
              f"{r['enc_plus_dec_cpu_MBps']:9.0f} {r['bytes_vs_fp32']:8.4f} {r['rel_rms']:9.2e} "
              f"{r['decode_page_faults']:10.0f}")
    print("(MB of fp32 input per second, wall clock; '(cpu)': this thread's CPU time instead; 'dec faults': page "
          "faults per decode of the adapter, 8192 = every output page fresh)")
    print(f"floor: allocating + filling fresh fp32 outputs runs at {fresh_MBps:.0f} MB/s on this machine")
    int8 = next(r for r in rows if r["codec"] == "int8")
    wall_gbps, cpu_gbps = int8["enc_plus_dec_MBps"] / 1e3, int8["enc_plus_dec_cpu_MBps"] / 1e3
    # Wall clock is the strict reading; on a shared machine (load above the core count) it also counts time this
    # process spent queued, and CPU time is the fairer measure of what the codec costs one core. Both are recorded.
    met, met_cpu = wall_gbps >= GOAL_INT8_GBPS, cpu_gbps >= GOAL_INT8_GBPS
    print(f"goal int8 encode+decode >= {GOAL_INT8_GBPS} GB/s on one core: {wall_gbps:.2f} GB/s wall "
          f"({'met' if met else 'MISSED'}), {cpu_gbps:.2f} GB/s CPU time ({'met' if met_cpu else 'MISSED'})")

    scales = scale_dtype_experiment(args.seed, args.block)
    print("\nscale dtype (rel RMS):")
    print(f"{'codec':6s} {'sigma':>7s} {'fp32 scales':>12s} {'fp16 scales':>12s} {'bf16 scales':>12s} "
          f"{'int8h/int4h':>12s}")
    for s in scales:
        print(f"{s['codec']:6s} {s['sigma']:7.0e} {s['fp32_scales']:12.3e} {s['fp16_scales']:12.3e} "
              f"{s['bf16_scales']:12.3e} {s['relative_fp16_scales']:12.3e}")

    minilm = minilm_message_bytes()
    print("\nMiniLM-L6 r=8 q/v message (74,498 values), bytes incl. header; ratio = fp32 message / this one:")
    print(f"{'codec':9s} {'block':>5s} {'head':>5s} {'bytes':>7s} {'header':>6s} {'ratio':>6s} {'payload ratio':>13s}")
    for m in minilm:
        print(f"{m['codec']:9s} {m['block']:5d} {m['head']:>5s} {m['bytes']:7d} {m.get('header', 0):6d} "
              f"{m['ratio']:6.3f} {m['payload_ratio']:13.3f}")

    path = write_result("bench_codecs", {
        "config": vars(args) | {"tensors": len(xs), "fp32_bytes": fp32_bytes},
        "codecs": rows,
        "fresh_memory_MBps": fresh_MBps,
        "goal": {"int8_enc_plus_dec_GBps": GOAL_INT8_GBPS, "measured_wall_GBps": wall_gbps,
                 "measured_cpu_GBps": cpu_gbps, "met": met, "met_cpu_time": met_cpu},
        "load_average_1min": load,
        "scale_dtype": scales,
        "minilm_message_bytes": minilm,
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
