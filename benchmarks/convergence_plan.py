"""bench_convergence's plan: the presets, the runs of each (most telling first) and the time estimate.

Nothing here runs anything; `python benchmarks/bench_convergence.py --full --dry-run` prints what it plans.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

LR, HEAD_LR = 4e-3, 1e-2  # the run defaults (the demo's); see benchmarks/README.md for the one-process optimum
DRIFT_RULES = ("kgt", "qgm", "nesterov", "ffa")  # issue 15: gossip-<topology>-<rule> runs `--drift <rule>`
DRIFT_METHODS = tuple(f"gossip-{t}-{d}" for t in ("exp", "ring") for d in DRIFT_RULES)
GOSSIP_METHODS = ("gossip-ring", "gossip-exp", "stack", "svd", "zeropad", *DRIFT_METHODS)  # decentralized, no server
SERVER_METHODS = ("fedit", "flora", "flexlora", "scaffold")  # scaffold = --server fedit --drift kgt
EQUAL_RANKS_ONLY = ("gossip-ring", "gossip-exp", "fedit", *DRIFT_METHODS)  # skipped at heterogeneous ranks (see plan())
LABELS = {"centralized": "centralized", "centralized-large-batch": "centralized, batch N x 32",
          "gossip-ring": "gossip ring", "gossip-exp": "gossip exp", "stack": "stack (ring)", "svd": "svd (ring)",
          "zeropad": "zeropad (ring)", "fedit": "server fedit", "flora": "server flora", "flexlora": "server flexlora",
          "scaffold": "server SCAFFOLD (fedit + kgt)",
          **{m: f"gossip {m.split('-')[1]} + {m.split('-')[2]}" for m in DRIFT_METHODS}}

# Cost model for the time estimate, in core-seconds per unit (measured on the development machine with 1 torch
# thread per process; benchmarks/README.md): one MiniLM step of 32 with length-grouped batches, evaluating one dev
# example, starting a peer process; OVERHEAD scales the sum.
STEP_CORE_S, EVAL_CORE_S_PER_EXAMPLE, START_CORE_S, OVERHEAD = 0.35, 0.009, 7.0, 1.15
UNSORTED_STEP_FACTOR = 2.8  # a step without length-grouped batches (more padding), relative to one with them
SERVER_START_CORE_S = 3.0  # the server process of a server run
AVG_MODEL_CORE_S_PER_PEER = 0.1  # reading one peer's checkpoint into the average model


@dataclass(frozen=True)
class Preset:
    name: str
    peers: int
    rounds: int
    local_steps: int
    eval_examples: int  # 0 = the whole dev set
    peer_eval_every: int  # peers evaluate every this many rounds (and at the last); centralized every round
    avg_eval_every: int = 1  # the average model is evaluated after round 1, every this many rounds, and the last
    holdout: int = 0  # --holdout: training examples no peer trains on; the curves and model selection use them


PRESETS = {
    "quick": Preset("quick", peers=4, rounds=4, local_steps=5, eval_examples=256, peer_eval_every=2, holdout=256),
    "full": Preset("full", peers=8, rounds=20, local_steps=8, eval_examples=0, peer_eval_every=20, avg_eval_every=2,
                   holdout=1000),
    # Issue 15's drift-correction comparison at a budget that fits 3 seeds in about an hour on 2 cores: the full
    # preset's 8 peers and 8 local steps per round (the drift), half its rounds.
    "drift": Preset("drift", peers=8, rounds=10, local_steps=8, eval_examples=0, peer_eval_every=10, avg_eval_every=5,
                    holdout=500),
}
SEEDS = (0, 1, 2)  # every method runs with each (--seeds): mean and 95% interval, paired comparisons
# Torch threads of every process of every run, whatever the machine: `declora simulate` would otherwise take cores /
# processes, and another thread count sums in another order, so the same seed would give other bits on a machine
# with more cores (benchmarks/README.md, convergence: determinism).
THREADS = 1


@dataclass(frozen=True)
class Spec:
    """One run: a method with its ranks, codec and partition."""

    method: str  # centralized | gossip-ring | gossip-exp | stack | svd | zeropad | fedit | flora | flexlora
    ranks: str = "8"
    codec: str = "fp32"
    error_feedback: bool = False
    partition: str = "dirichlet:0.5"
    group: str = "r=8"
    seed: int = 0  # the run's --seed (split, holdout, init, batches, dropout); the seeds of a method give its spread
    head_codec: str = "fp32"  # --head-codec: the classifier head as fp32 or through the factors' codec ("same")
    block: int = 64  # --block-size of the int codecs' absmax scales
    by_length: bool = True  # --group-by-length; False measures what length-grouped batches cost in accuracy
    independent: bool = False  # --independent-init: every peer its own adapter init (peers joining with their own)
    rounds: int = 0  # 0: the preset's rounds; else this many rounds with the same samples (more local steps each)
    keep_moments: bool = False  # --keep-moments: FLoRA's AdamW moments kept across the merge into the base

    @property
    def name(self) -> str:
        ranks = "r" + self.ranks if "," not in self.ranks else "rhet" if self.ranks != WIDE_RANKS else "rwide"
        part = self.partition.replace("dirichlet:", "dir").replace(":", "")
        return (f"{self.method}-{ranks}-{self.codec_tag}-{part}" + ("" if self.by_length else "-shuffled")
                + ("-indep" if self.independent else "") + (f"-R{self.rounds}" if self.rounds else "")
                + ("-moments" if self.keep_moments else "")
                + (f"-seed{self.seed}" if self.seed else ""))

    @property
    def codec_tag(self) -> str:
        return (self.codec + ("+ef" if self.error_feedback else "") + ("+head" if self.head_codec == "same" else "")
                + (f"-b{self.block}" if self.block != 64 else ""))

    @property
    def codec_label(self) -> str:
        head = ", head too" if self.head_codec == "same" else ""
        block = f", block {self.block}" if self.block != 64 else ""
        return self.codec + (" + EF" if self.error_feedback else "") + head + block

    @property
    def centralized(self) -> bool:
        """One process, no peers: its own evaluation is the average model's."""
        return self.method.startswith("centralized")

    def flags(self, peers: int) -> list[str]:
        """The simulate flags of this run; they come after the preset's, so they win (argparse: the last one)."""
        if self.method == "centralized":
            what = ["--mode", "centralized"]
        elif self.method == "centralized-large-batch":  # 1 shard = all the data, batch peers x 32, a peer's steps
            what = ["--mode", "centralized", "--peers", "1", "--batch-size", str(32 * peers)]
        elif self.method == "scaffold":  # K-GT's correction behind the server is SCAFFOLD (declora/core/drift.py)
            what = ["--server", "fedit", "--drift", "kgt"]
        elif self.method in SERVER_METHODS:
            what = ["--server", self.method]
        elif self.method.startswith("gossip-"):
            _, topology, *drift = self.method.split("-")
            what = ["--mode", "gossip", "--topology", topology] + (["--drift", drift[0]] if drift else [])
        else:
            what = ["--mode", self.method, "--topology", "ring"]
        codec = ["--codec", self.codec, "--error-feedback" if self.error_feedback else "--no-error-feedback"]
        codec += (["--head-codec", self.head_codec] if self.head_codec != "fp32" else []) + (
            ["--block-size", str(self.block)] if self.block != 64 else [])
        order = [] if self.by_length else ["--no-group-by-length"]
        order += (["--independent-init"] if self.independent else []) + (["--keep-moments"] if self.keep_moments else [])
        return what + codec + order + ["--ranks", self.ranks, "--partition", self.partition]


WIDE_RANKS = "64,32,16,8,8,4,4,2"  # issue 15 part 4 (8 peers)


def for_spec(preset: Preset, spec: Spec) -> Preset:
    """The preset a run actually follows: a run with its own number of rounds takes the same samples in fewer,
    longer rounds (FLoRA's schedule: local epochs per round), evaluated after every one of them."""
    if not spec.rounds:
        return preset
    steps = preset.rounds * preset.local_steps // spec.rounds
    return replace(preset, rounds=spec.rounds, local_steps=steps, avg_eval_every=1,
                   peer_eval_every=min(preset.peer_eval_every, spec.rounds))


def hetero_ranks(peers: int) -> str:
    """16,16,8,8,4,4,2,2 at 8 peers; the same ladder stretched or cut to other counts (4 peers: 16,8,4,2)."""
    ladder = [16, 8, 4, 2]
    return ",".join(str(ladder[min(3, i * 4 // peers)]) for i in range(peers))


def plan(preset: Preset) -> tuple[list[Spec], list[Spec]]:
    """(runs before the codec runs, runs after them), most telling first, so that a suite cut short by time still
    answers the main question. The codec runs depend on the best decentralized method of the first list."""
    if preset.name.startswith("quick"):
        return [Spec(m) for m in ("centralized", "gossip-ring", "svd")], [Spec(m) for m in ("fedit", "flora")]
    if preset.name.startswith("drift"):
        first = [Spec(m) for m in ("centralized", "gossip-exp", *(f"gossip-exp-{d}" for d in DRIFT_RULES))]
        # Issue 15 parts 5 and 1: the byte-lean codecs at the settings that reach the byte goals
        # (benchmarks/README.md, int8h / int4h), and plain gossip without length-grouped batches, each beside
        # plain fp32 gossip of the same seeds.
        rest = [Spec("gossip-exp", codec="int8h", head_codec="same", block=128, group="codecs"),
                Spec("gossip-exp", codec="int4h", error_feedback=True, head_codec="same", group="codecs"),
                Spec("gossip-exp", by_length=False, group="batches")]
        # Issue 15 part 3: the server baselines on the same samples; FLoRA also in 2 rounds of 40 local steps (the
        # paper's few long rounds), with and without its AdamW moments kept across the merge.
        rest += [Spec("flora", group="server")]
        rest += [Spec("flora", rounds=2, keep_moments=k, group="server") for k in (False, True)]
        # Where the gap to centralized comes from: plain gossip on IID shards (no drift to correct), and one process
        # taking a peer's number of steps with the peers' batches merged (what perfect averaging would reach).
        rest += [Spec("gossip-exp", partition="iid", group="iid"), Spec("centralized-large-batch")]
        rest += [Spec(m, group="server") for m in ("fedit", "scaffold")]
        # Issue 15 part 4: where exact aggregation should matter, peers that start from their own inits with ranks
        # from 64 down to 2 (their subspaces differ; with the shared init gossip keeps them close).
        rest += [Spec(m, ranks=WIDE_RANKS, independent=True, group="independent") for m in ("zeropad", "svd", "stack")]
        rest += [Spec("flexlora", group="server")]
        return first, rest
    het = hetero_ranks(preset.peers)
    first = [Spec(m) for m in ("centralized", "gossip-ring", "svd", "stack", "gossip-exp")]
    rest = [Spec(m) for m in ("fedit", "flora", "flexlora")]
    rest += [Spec(m, ranks=het, group="heterogeneous") for m in ("zeropad", "svd", "stack", "flora", "flexlora")]
    rest += [Spec(m, partition="iid", group="iid") for m in ("centralized", "gossip-ring", "fedit")]
    # What perfect averaging would give: one process taking a peer's number of steps with the N peers' batches
    # merged into one (the same samples). Gossip's average model at best behaves like this, not like N x more steps.
    rest += [Spec("centralized-large-batch")]
    return first, rest


def codec_specs(preset: Preset, best: str) -> list[Spec]:
    """The codecs on the best decentralized method (each with every seed, compared with its fp32 runs); in the drift
    preset, the best rule again on the ring and on a one-class-per-peer split, each with plain gossip beside it."""
    if preset.name.startswith("drift"):  # not the codecs here: the best rule on the ring and on one class per peer
        rule = best.split("-", 2)[2] if best.count("-") == 2 else None
        ring = [Spec("gossip-ring", group="ring")] + ([Spec(f"gossip-ring-{rule}", group="ring")] if rule else [])
        skew = [Spec(m, partition="labelskew:1", group="labelskew:1") for m in dict.fromkeys(("gossip-exp", best))]
        return ring + skew
    quick = preset.name.startswith("quick")
    variants = [("int4", True)] if quick else [("int8", False), ("int4", False), ("int4", True)]
    return [Spec(best, codec=c, error_feedback=ef, group="codecs") for c, ef in variants]


def with_seeds(specs: list[Spec], seeds: tuple[int, ...]) -> list[Spec]:
    """Every spec with every seed, seed-major: all methods at the first seed come first, so that a suite stopped
    part-way has compared the methods once before it measures their spread."""
    return [replace(s, seed=seed) for seed in seeds for s in specs]



# ---- time estimate ------------------------------------------------------------------------------------------------
def estimate_seconds(spec: Spec, preset: Preset, eval_examples: int, cores: int) -> float:
    """With --holdout the rounds' evaluations are on the holdout, and the last round's also on the dev set."""
    n, r, k = preset.peers, preset.rounds, preset.local_steps
    train = n * k * r * STEP_CORE_S * (1.0 if spec.by_length else UNSORTED_STEP_FACTOR)
    per_eval = (preset.holdout or eval_examples) * EVAL_CORE_S_PER_EXAMPLE
    dev_at_end = eval_examples * EVAL_CORE_S_PER_EXAMPLE if preset.holdout else 0.0
    if spec.centralized:
        core_s = START_CORE_S + train + len(avg_eval_rounds(preset)) * per_eval + dev_at_end
        processes = 1
    else:
        peer_evals = len(peer_eval_rounds(preset))
        core_s = (START_CORE_S * n + (SERVER_START_CORE_S if spec.method in SERVER_METHODS else 0.0) + train
                  + n * (peer_evals * per_eval + dev_at_end) + dev_at_end
                  + len(avg_eval_rounds(preset)) * (per_eval + AVG_MODEL_CORE_S_PER_PEER * n))
        processes = n
    # THREADS torch threads per process: one process alone keeps only that many cores busy.
    return core_s * OVERHEAD / max(1, min(cores, processes * THREADS))


def peer_eval_rounds(preset: Preset) -> list[int]:
    return [t for t in range(preset.rounds) if (t + 1) % preset.peer_eval_every == 0 or t == preset.rounds - 1]


def avg_eval_rounds(preset: Preset) -> list[int]:
    return [t for t in range(preset.rounds)
            if t == 0 or (t + 1) % preset.avg_eval_every == 0 or t == preset.rounds - 1]

