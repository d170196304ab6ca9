"""The run config's fields: one frozen dataclass whose fields are the command-line flags and the TOML keys, each
declared once with its default and its help string, and the values derived from them (ranks, topology)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from declora.core.attacks import ATTACKS
from declora.core.codecs import CODEC_NAMES
from declora.core.drift import DRIFT_RULES
from declora.core.mixing import MIXING_RULES
from declora.core.robust import ROBUST_RULES
from declora.core.strategies import SERVER_ALIASES, STRATEGIES
from declora.learn.metrics import METRICS

# The choices come from the modules that own them: a new strategy, codec or mixing rule is a new choice here.
MODES = (*STRATEGIES, "centralized")
SERVER_AGGREGATIONS = tuple(SERVER_ALIASES)
DEFAULT_RANK = 8  # LoRA rank when neither --ranks nor the topology file gives one
HEAD_CODECS = ("fp32", "same")  # the dense tensors' (classifier head's) codec: fp32, or the factors' own


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class RunConfig:
    # What to train, on what.
    model: str = _opt("", "local Hugging Face checkpoint folder; empty = the pretrained MiniLM-L6 of the demo extra")
    task: str = _opt("auto", "classification | causal_lm | regression | auto (from the data's first rows)")
    data: str = _opt("", "training data (TSV/CSV/JSON(L)/Parquet/save_to_disk folder, or a folder of per-peer files)")
    eval_data: str = _opt("", "evaluation data; empty = shipped SST-2 dev (or a held-out slice of --data)")
    text_columns: str = _opt("", "text column(s), names or 0-based indices (two: a pair); empty = by usual names")
    label_column: str = _opt("", "label column, a name or 0-based index; empty = by usual names (label, score ...)")
    label_names: str = _opt("", "comma list: label i is the i-th name (string labels map to their position)")
    header: str = _opt("auto", "TSV/CSV header row: auto | yes | no (README: Bring your own data)")
    tsv_quoting: str = _opt("auto", "TSV fields: auto | csv (quoted, as pandas to_csv writes) | none (raw GLUE)")
    mc_eval: str = _opt("", "causal LM: multiple-choice questions scored by the model's likelihood of each option, "
                            "besides the eval loss: an MMLU CSV, a folder of them, or FLoRA's evaluation JSON")
    mc_scoring: str = _opt("letter", "multiple-choice scoring: letter (likelihood of A/B/C/D) | text (mean "
                                     "likelihood per token of each option's text)", choices=("letter", "text"))
    num_labels: int = _opt(2, "number of classes for classification")
    target_modules: str = _opt("", "comma-separated LoRA target modules; empty = the architecture's default")
    max_length: int = _opt(64, "tokens per example (truncation)")
    # The network.
    peers: int = _opt(4, "number of peers")
    topology: str = _opt("ring", "topology spec (ring, ring:8, torus:4x4, exp:16, er:16:0.3:1 ...) or a topology file; "
                                 "a bare kind gets the peer count")
    mixing: str = _opt("metropolis", "mixing weights: metropolis | maxdegree | laplacian", choices=MIXING_RULES)
    mode: str = _opt("gossip", "aggregation: gossip | stack | svd | zeropad | centralized", choices=MODES)
    server: str = _opt("", "run the parameter-server baseline instead of gossip: fedit | flora | flexlora | zeropad")
    # drift correction of gossip with local steps (issue 15): declora.core.drift
    drift: str = _opt("none", "drift correction: none | kgt (gradient tracking; sends the round's displacement too: "
                              "2x bytes) | qgm (quasi-global momentum) | nesterov (outer Nesterov on the mixed "
                              "pseudo-gradient) | ffa (A frozen, only B trained and sent); gossip mode, or --server "
                              "fedit (kgt is then SCAFFOLD)",
                      choices=DRIFT_RULES)
    # 1.0 / 0.5, not DiLoCo's 0.7 / 0.9: with 8 local steps per round DiLoCo's values lost 13 points of holdout
    # accuracy to plain gossip on SST-2, these gained 3 (benchmarks/README.md, drift sweep).
    outer_lr: float = _opt(1.0, "--drift nesterov: outer learning rate (1 with --outer-momentum 0 is plain gossip)")
    outer_momentum: float = _opt(0.5, "--drift nesterov: outer Nesterov momentum")
    qgm_beta: float = _opt(0.5, "--drift qgm: how much of the quasi-global momentum every local step adds")
    qgm_mu: float = _opt(0.9, "--drift qgm: decay of the quasi-global momentum buffer per round")
    independent_init: bool = _opt(False, "each peer draws its own adapter init (and a missing head's) from its own seed, "
                                         "as peers that join with adapters of their own; default: the run's shared "
                                         "init, since averaging independently drawn A's shrinks them")
    keep_moments: bool = _opt(False, "stack and --server flora: the fresh adapter after each merge keeps the AdamW "
                                     "moments of the one it replaces (default: a fresh optimizer, as FLoRA)")
    codec: str = _opt("int8", "wire codec: fp32 | fp16 | bf16 | int8 | int4 | int8h | int4h (the h ones: 2-byte "
                              "block scales relative to one float32 scale per tensor)", choices=CODEC_NAMES)
    head_codec: str = _opt("fp32", "codec of the dense tensors (a classifier head): fp32 | same (as --codec, with "
                                   "--error-feedback if on)", choices=HEAD_CODECS)
    block_size: int = _opt(64, "block size of the int8/int4/int8h/int4h absmax scales")
    stochastic_rounding: bool = _opt(False, "stochastic rounding in int8/int4/int8h/int4h")
    error_feedback: bool = _opt(False, "keep what quantization lost and add it to the next message (CHOCO-SGD)")
    # Defence against hostile neighbours (declora.core.robust, declora.core.plausibility).
    robust: str = _opt("none", "robust mixing: none | clip (ClippedGossip, every mode) | trimmed-mean | median "
                               "(coordinate-wise, gossip only)", choices=ROBUST_RULES)
    robust_trim: int = _opt(1, "neighbours per round that robust mixing assumes may be hostile")
    plausible_ratio: float = _opt(10.0, "drop a received adapter whose norm is over this many times the larger of "
                                        "our own and the recent accepted ones (0 = off)")
    attack: str = _opt("none", "for robustness tests and benchmarks only: the --attackers send poison instead of "
                               "their adapter: none | huge | signflip | nan | noise | drift", choices=ATTACKS)
    attackers: str = _opt("", "comma-separated ids of the peers that --attack")
    # The adapter.
    ranks: str = _opt("", "LoRA rank, one value for every peer or a comma list per peer (e.g. 8,8,4,4); empty = the "
                          "topology file's per-node 'rank' where it gives one, else 8")
    alpha: float = _opt(16.0, "LoRA alpha (scaling alpha/r)")
    rslora: bool = _opt(False, "rank-stabilized scaling alpha/sqrt(r)")
    # Training.
    partition: str = _opt("dirichlet:0.5", "how the data is split: iid | dirichlet:ALPHA | labelskew:K | files")
    # The defaults are the demo run (4 peers x 150 steps of 32, Dirichlet(0.5) SST-2): few local steps per round keep
    # non-IID drift small, and gossip averages the peers' steps, so it takes a higher rate than one process would.
    # The measurements behind these choices are in benchmarks/README.md ("Figures measured during development").
    rounds: int = _opt(30, "communication rounds")
    local_steps: int = _opt(5, "local optimizer steps per round")
    batch_size: int = _opt(32, "examples per step")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    # On since issue 15: several times cheaper MiniLM steps on SST-2, and no accuracy difference that 3 seeds could
    # resolve (benchmarks/README.md, "Drift correction ... at one budget"). --no-group-by-length shuffles freely.
    group_by_length: bool = _opt(True, "batches of similar-length examples: less padding, faster steps (Hugging "
                                       "Face's group_by_length); --no-group-by-length for freely shuffled batches")
    lr: float = _opt(4e-3, "AdamW learning rate of the LoRA factors")
    head_lr: float = _opt(1e-2, "learning rate of the other trainable tensors (classifier head); 0 = same as --lr")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    schedule: str = _opt("cosine", "learning-rate schedule: constant | linear | cosine")
    warmup_steps: int = _opt(0, "linear warm-up steps")
    max_grad_norm: float = _opt(1.0, "gradient clipping (0 = off)")
    eval_every: int = _opt(5, "evaluate every E rounds (the last round is always evaluated)")
    # 256, not all: on 2 cores the demo's four evaluations of the whole SST-2 dev set every 5 rounds took half its
    # wall time (24 s each); the progress lines need no more, and the last round always evaluates every example.
    eval_samples: int = _opt(256, "evaluate on the first N eval examples during the run (0 = all); the final eval uses "
                                  "all")
    seed: int = _opt(0, "random seed (data split, initialisation, batches)")
    # model selection (issue 15)
    holdout: int = _opt(0, "N training examples, drawn with --seed before the split, that no peer trains on: the "
                           "per-round evaluations (curves, model selection) use them, the eval set is then evaluated "
                           "at the last round only, for the final report (dev_* keys); 0 = none")
    # Processes and devices.
    gpus: str = _opt("", "comma-separated CUDA device ids, peers round-robin over them; empty = all visible")
    cpu: bool = _opt(False, "force CPU even when CUDA is present")
    # GPUs (issue 12)
    base_4bit: bool = _opt(False, "load the frozen base in 4 bits (QLoRA: NF4, bf16 compute; needs CUDA and "
                                  "bitsandbytes: pip install -e .[gpu4bit]); the LoRA factors and the wire are "
                                  "unchanged; not with modes that merge into the base (stack, --server flora)")
    peers_per_process: int = _opt(1, "simulate: peers per OS process, on threads, sharing one copy of the frozen base "
                                     "model (each keeps its own adapter, optimizer, data, endpoint, checkpoints)")
    threads: int = _opt(0, "torch threads per peer process (0 = cores / peers on this host, at least 1)")
    deadline_s: float = _opt(300.0, "the most seconds a round waits for its neighbours before mixing what arrived "
                                     "(with --adaptive-deadline, the cap and the first round's deadline)")
    # timing of a round (issue 10): declora.core.deadlines
    adaptive_deadline: bool = _opt(True, "gossip: wait at most twice a high percentile of the time the first half of "
                                         "the neighbours recently took (floors below), not always --deadline-s")
    deadline_floor_s: float = _opt(2.0, "adaptive deadline: never below this many seconds (nor below a quarter of "
                                        "the peer's own training time per round)")
    stale_rounds: int = _opt(2, "bounded staleness: a neighbour's message up to this many rounds late is still mixed, "
                                "at a weight scaled by --stale-decay per round late (0 = on-time messages only)")
    stale_decay: float = _opt(0.5, "bounded staleness: the weight a late message keeps per round it is late")
    slow_peers: str = _opt("", "fault injection for tests and benchmarks: ID:FACTOR,... makes those peers' local "
                               "training FACTOR times slower (e.g. 3:3)")
    start_timeout_s: float = _opt(300.0, "seconds a peer waits for its neighbours to come up before round 0")
    heartbeat_s: float = _opt(2.0, "liveness: a quiet neighbour gets a ping after this many seconds")
    missed_heartbeats: int = _opt(10, "liveness: missed intervals before a neighbour counts as down")
    fault_tolerant: bool = _opt(False, "keep going when a peer dies (the others renormalize); else stop and fail")
    # restart (issue 10)
    restart_dead: bool = _opt(False, "simulate: restart a peer process that dies, with --resume (it rejoins through "
                                     "catch-up); implies --fault-tolerant; gossip, svd and zeropad modes only")
    max_restarts: int = _opt(3, "with --restart-dead: restarts per process before it stays dead")
    # fault injection (issue 10)
    chaos: str = _opt("", "tests and benchmarks: message chaos on every link, e.g. drop=0.05,delay=0.2,jitter=0.1,"
                          "dup=0.02,reorder=0.05 (probabilities; seconds or ms), with per-link parts such as "
                          "';0-3:drop=1' (both ways) or ';2>*:delay=1' (what 2 sends); README: Fault injection")
    cut: str = _opt("", "tests and benchmarks: partitions that heal, e.g. 0,1|2,3@5:10 (links between the sides lose "
                        "every message during the sender's rounds 5 to 9; 0-based as in the metrics), ';' for more")
    # Wire and security.
    hosts: str = _opt("", "multi-node address book: comma-separated host per node (peer i on node i // peers-per-node); "
                          "or, for simulate, netns:K: K emulated hosts (network namespaces, needs root), peer i on "
                          "host i mod K")
    host_mbit: float = _opt(0.0, "with --hosts netns:K: each emulated host's link in Mbit/s, each way (tc tbf; 0 = "
                                 "no cap)")
    base_port: int = _opt(0, "first TCP port; peer i listens on base_port + i (0 = free loopback ports)")
    peers_per_node: int = _opt(0, "peers per node for --hosts (0 = peers / number of hosts)")
    keys: str = _opt("", "folder made by `declora keys make`: enables CurveZMQ")
    insecure: bool = _opt(False, "plain text: simulate makes no CURVE keys for the run, and non-loopback addresses "
                                 "are allowed without keys (never on an untrusted network)")
    # Output.
    out: str = _opt("runs/latest", "output folder (config, metrics, adapters, plots, summary)")
    resume: bool = _opt(False, "continue from the checkpoints in --out")
    save_adapters: bool = _opt(True, "save every peer's final adapter with save_pretrained")
    metric: str = _opt("auto", "the metric that judges the run (progress, summary, plots, benchmarks); auto = accuracy "
                               "(f1 for paraphrase data, mcc for acceptability), pearson for regression, eval loss for "
                               "causal LM", choices=("auto", *METRICS))
    report_to: str = _opt("", "also log to: tensorboard (OUT/tensorboard; needs pip install -e .[tensorboard])")
    reference: str = _opt("", "a finished centralized run's folder whose final metric is drawn as a reference line and "
                              "reported next to this run's")
    keep_checkpoints: int = _opt(2, "rounds of checkpoints each peer keeps (0 = all, e.g. to evaluate the average "
                                    "model of every round afterwards; costs disk)")

    # ---- derived values -----------------------------------------------------------------------------------------
    def slow_factor(self, peer_id: int) -> float:
        """--slow-peers: how many times slower this peer trains (1.0 = normal speed)."""
        return self._memo("_slow", self._parse_slow).get(peer_id, 1.0)

    def _parse_slow(self) -> dict[int, float]:
        out = {}
        for part in self.slow_peers.split(","):
            if part.strip():
                peer, factor = part.split(":")
                out[int(peer)] = float(factor)
        return out

    def attacker_ids(self) -> list[int]:
        return [int(x) for x in self.attackers.split(",") if x.strip()]

    def rank_list(self) -> list[int]:
        """Every peer's LoRA rank: --ranks when given (it wins over a topology file), else the topology file's
        per-node `rank` (DEFAULT_RANK for nodes without one), else DEFAULT_RANK for all. Resolved once per config."""
        return list(self._memo("_ranks", self._resolve_ranks))

    def gossip_topology(self):
        """The gossip graph (core.topology.Topology), loaded once per config; raises TopologyError."""
        from declora.core.topology_files import load_topology

        return self._memo("_topology", lambda: load_topology(self.topology_spec()))

    def _memo(self, key: str, make):
        # A frozen dataclass: derived values are cached straight into the instance dict, outside the fields.
        if key not in self.__dict__:
            object.__setattr__(self, key, make())
        return self.__dict__[key]

    def _resolve_ranks(self) -> list[int]:
        values = [int(v) for v in str(self.ranks).split(",") if v.strip()]
        if not values:
            return self.topology_file_ranks() or [DEFAULT_RANK] * self.peers
        if len(values) == 1:
            return values * self.peers
        return values

    def topology_file_ranks(self) -> list[int] | None:
        """The ranks a topology file's nodes carry (None: not a file, unreadable, or no node has a rank; a bad file
        is reported by the topology check, with its own message)."""
        if not Path(self.topology).is_file():
            return None
        from declora.core.graphs import TopologyError
        from declora.core.topology_files import load_topology_file

        try:
            nodes = load_topology_file(self.topology).nodes
        except TopologyError:
            return None
        if all(node.rank is None for node in nodes):
            return None
        return [node.rank or DEFAULT_RANK for node in nodes]

    def ranks_origin(self) -> str:
        return "--ranks" if str(self.ranks).strip() else (
            f"the 'rank' of the nodes in {self.topology}" if self.topology_file_ranks() else "the default rank")

    def topology_spec(self) -> str:
        spec = self.topology
        if ":" not in spec and not Path(spec).exists() and "." not in spec:
            spec = f"{spec}:{self.peers}"
        return spec

    def gpu_list(self) -> list[int] | None:
        return [int(g) for g in self.gpus.split(",") if g.strip()] or None

    def emulated_hosts(self) -> int:
        """K of --hosts netns:K (0: real hosts, or none)."""
        kind, _, k = self.hosts.strip().partition(":")
        return int(k) if kind == "netns" and k.isdigit() else 0

    def host_list(self) -> list[str]:
        return [h.strip() for h in self.hosts.split(",") if h.strip()]

    @property
    def server_id(self) -> int:
        """The parameter server, when there is one, takes the id after the last client."""
        return self.peers

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A bad configuration value; the message says what is wrong and how to fix it."""
