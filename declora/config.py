"""Run configuration: one frozen dataclass whose fields are the command-line flags and the TOML keys.

Every knob is declared once, here, with its default and its help string. `add_flags` turns the fields into argparse
flags, `load_toml` reads a file whose keys match the flags (`local-steps` or `local_steps`), and `resolve` applies the
precedence defaults < file < flags and checks the result, so a bad value stops the command with one clear line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from declora.core.attacks import ATTACKS
from declora.core.codecs import CODEC_NAMES
from declora.core.mixing import MIXING_RULES
from declora.core.robust import ROBUST_RULES, RobustRule
from declora.core.strategies import SERVER_ALIASES, STRATEGIES, get_strategy
from declora.learn.tables import flags_problem
from declora.learn.metrics import METRICS, metric_problem
from declora.learn.model import TASKS
from declora.learn.training import SCHEDULES

# The choices come from the modules that own them: a new strategy, codec or mixing rule is a new choice here.
MODES = (*STRATEGIES, "centralized")
SERVER_AGGREGATIONS = tuple(SERVER_ALIASES)
DEFAULT_RANK = 8  # LoRA rank when neither --ranks nor the topology file gives one


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
    codec: str = _opt("int8", "wire codec: fp32 | fp16 | bf16 | int8 | int4", choices=CODEC_NAMES)
    block_size: int = _opt(64, "block size of the int8/int4 absmax scales")
    stochastic_rounding: bool = _opt(False, "stochastic rounding in int8/int4")
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
    group_by_length: bool = _opt(False, "batches of similar-length examples: less padding, faster steps (Hugging "
                                        "Face's group_by_length)")
    lr: float = _opt(4e-3, "AdamW learning rate of the LoRA factors")
    head_lr: float = _opt(1e-2, "learning rate of the other trainable tensors (classifier head); 0 = same as --lr")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    schedule: str = _opt("cosine", "learning-rate schedule: constant | linear | cosine")
    warmup_steps: int = _opt(0, "linear warm-up steps")
    max_grad_norm: float = _opt(1.0, "gradient clipping (0 = off)")
    eval_every: int = _opt(5, "evaluate every E rounds (the last round is always evaluated)")
    eval_samples: int = _opt(0, "evaluate on the first N eval examples during the run (0 = all); the final eval uses all")
    seed: int = _opt(0, "random seed (data split, initialisation, batches)")
    # Processes and devices.
    gpus: str = _opt("", "comma-separated CUDA device ids, peers round-robin over them; empty = all visible")
    cpu: bool = _opt(False, "force CPU even when CUDA is present")
    threads: int = _opt(0, "torch threads per peer process (0 = cores / peers on this host, at least 1)")
    deadline_s: float = _opt(300.0, "seconds a round waits for its neighbours before mixing what arrived")
    start_timeout_s: float = _opt(300.0, "seconds a peer waits for its neighbours to come up before round 0")
    heartbeat_s: float = _opt(2.0, "liveness: a quiet neighbour gets a ping after this many seconds")
    missed_heartbeats: int = _opt(10, "liveness: missed intervals before a neighbour counts as down")
    fault_tolerant: bool = _opt(False, "keep going when a peer dies (the others renormalize); else stop and fail")
    # Wire and security.
    hosts: str = _opt("", "multi-node address book: comma-separated host per node (peer i on node i // peers-per-node)")
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


def validate(cfg: RunConfig) -> RunConfig:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.peers >= 1, f"--peers must be >= 1, got {cfg.peers}")
    need(cfg.mode == "centralized" or cfg.peers >= 2 or cfg.server, "--peers must be >= 2 for a decentralized run")
    need(cfg.rounds >= 1, f"--rounds must be >= 1, got {cfg.rounds}")
    need(cfg.local_steps >= 1, f"--local-steps must be >= 1, got {cfg.local_steps}")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(cfg.keep_checkpoints >= 0, f"--keep-checkpoints must be >= 0 (0 = all), got {cfg.keep_checkpoints}")
    need(cfg.eval_every >= 1, f"--eval-every must be >= 1, got {cfg.eval_every}")
    need(cfg.server in ("",) + SERVER_AGGREGATIONS,
         f"--server must be one of {', '.join(SERVER_AGGREGATIONS)} (or empty for gossip), got {cfg.server!r}")
    need(cfg.task in ("auto", *TASKS), f"--task must be auto, {' or '.join(TASKS)}, got {cfg.task!r}")
    problem = metric_problem(cfg.metric, cfg.task, cfg.num_labels)  # --report-to and --reference: node.report
    need(problem is None, problem or "")
    need(cfg.schedule in SCHEDULES, f"--schedule must be {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    for name, value, choices in (("mode", cfg.mode, MODES), ("codec", cfg.codec, CODEC_NAMES),
                                 ("mixing", cfg.mixing, MIXING_RULES)):
        need(value in choices, f"--{name} must be one of {', '.join(choices)}, got {value!r}")
    try:
        ranks = cfg.rank_list()
    except ValueError:
        raise ConfigError(f"--ranks must be integers like 8 or 8,8,4,4, got {cfg.ranks!r}") from None
    need(len(ranks) == cfg.peers, f"{cfg.ranks_origin()} gives {len(ranks)} ranks for {cfg.peers} peers; give one value "
                                  f"or one per peer (--ranks)")
    need(all(r >= 1 for r in ranks), f"--ranks must all be >= 1, got {cfg.ranks!r}")
    rule = cfg.server or (cfg.mode if cfg.mode != "centralized" else "")
    if rule and get_strategy(rule).equal_ranks and len(set(ranks)) > 1:
        others = [n for n in (SERVER_AGGREGATIONS if cfg.server else STRATEGIES) if not get_strategy(n).equal_ranks]
        what, flag = (f"--server {cfg.server}", "--server") if cfg.server else (cfg.mode, "--mode")
        raise ConfigError(f"{what} averages A and B, so ranks must match, but {cfg.ranks_origin()} gives "
                          f"{','.join(map(str, ranks))}; use {flag} {', '.join(others[:-1])} or {others[-1]} for "
                          f"heterogeneous ranks, or one --ranks value")
    need(cfg.robust in ROBUST_RULES, f"--robust must be one of {', '.join(ROBUST_RULES)}, got {cfg.robust!r}")
    need(cfg.robust_trim >= 0, f"--robust-trim must be >= 0, got {cfg.robust_trim}")
    need(cfg.plausible_ratio == 0 or cfg.plausible_ratio > 1,
         f"--plausible-ratio must be > 1, or 0 to turn the check off, got {cfg.plausible_ratio}")
    if cfg.robust != "none" and cfg.mode != "centralized" and not cfg.server:
        try:
            RobustRule(cfg.robust, cfg.robust_trim).check_mode(cfg.mode, get_strategy(cfg.mode).equal_ranks)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    need(cfg.attack in ATTACKS, f"--attack must be one of {', '.join(ATTACKS)}, got {cfg.attack!r}")
    try:
        hostile = cfg.attacker_ids()
    except ValueError:
        raise ConfigError(f"--attackers must be peer ids like 3 or 1,5, got {cfg.attackers!r}") from None
    need(all(0 <= i < cfg.peers for i in hostile), f"--attackers must be peer ids in 0..{cfg.peers - 1}, "
                                                   f"got {cfg.attackers!r}")
    need(cfg.attack == "none" or hostile, f"--attack {cfg.attack} needs --attackers (which peers attack)")
    need(1 <= cfg.block_size <= 1 << 20, f"--block-size must be in [1, 1048576], got {cfg.block_size}")
    need(cfg.partition.split(":")[0] in ("iid", "dirichlet", "labelskew", "files"),
         f"--partition must be iid, dirichlet:ALPHA, labelskew:K or files, got {cfg.partition!r}")
    if cfg.keys:
        need(Path(cfg.keys).is_dir(), f"--keys {cfg.keys}: no such folder; make keys with `declora keys make --peers "
                                      f"{cfg.peers + bool(cfg.server)} --out {cfg.keys}`")
    if cfg.mode != "centralized" and not cfg.server:
        _check_topology(cfg)
    problem = flags_problem(cfg.text_columns, cfg.label_column, cfg.label_names, cfg.header, cfg.tsv_quoting)
    need(problem is None, problem or "")
    need(cfg.mc_scoring in ("letter", "text"), f"--mc-scoring must be letter or text, got {cfg.mc_scoring!r}")
    for path_field in ("model", "data", "eval_data", "mc_eval"):
        value = getattr(cfg, path_field)
        if value and not value.startswith("tiny-") and not Path(value).exists():
            raise ConfigError(f"--{path_field.replace('_', '-')} {value}: no such file or folder")
    return cfg


def _check_topology(cfg: RunConfig) -> None:
    from declora.core.graphs import TopologyError

    try:
        n = cfg.gossip_topology().n
    except TopologyError as e:
        raise ConfigError(str(e)) from None
    if n != cfg.peers:
        raise ConfigError(f"the topology {cfg.topology} has {n} nodes but --peers is {cfg.peers}")


# ---- flags and files -------------------------------------------------------------------------------------------------
def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per field; defaults are None so that `resolve` can tell 'not given' from 'given'."""
    parser.add_argument("--config", default=None, help="TOML file whose keys match these flags")
    for f in fields(RunConfig):
        if f.name in skip:
            continue
        kw = {"help": f.metadata["help"] + f" (default: {f.default!r})", "default": None, "dest": f.name}
        if f.type in ("bool", bool):
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            caster = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            parser.add_argument(flag_name(f.name), type=caster, **kw)


def add_peer_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of one peer process (`declora peer`, `python -m declora.node.peer`)."""
    parser.add_argument("--peer-id", type=int, required=True, help="this peer's id (0..peers-1)")
    parser.add_argument("--resume-round", type=int, default=None,
                        help="with --resume: the round whose checkpoint to load (default: the latest); give every "
                             "peer the same one")
    add_flags(parser)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the parameter-server process (`declora server`, `python -m declora.node.server`)."""
    parser.add_argument("--peer-id", type=int, default=None, help="ignored: the server's id is --peers")
    parser.add_argument("--resume-round", type=int, default=None,
                        help="with --resume: the clients resume after this round, so the server starts at the next")
    add_flags(parser)


def load_toml(path: str | Path) -> dict:
    """Read a run config file: TOML, or the config.json that a run writes (so a run can be repeated from it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    if path.suffix == ".json":
        try:
            return normalize_keys(json.loads(path.read_text()), source=str(path))
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    return normalize_keys(raw, source=str(path))


def normalize_keys(raw: dict, source: str) -> dict:
    known = {f.name: f for f in fields(RunConfig)}
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys are the flags of `declora simulate --help`")
        if name == "ranks" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        out[name] = _typed(known[name], value, source, key)
    return out


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _typed(f, value, source: str, key: str):
    """A file's value checked against the field's type (flags are typed by argparse; a file is not)."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]
    if not ok:
        raise ConfigError(f"{source}: {key} must be {_KIND_WORDS[kind]}, got {value!r}")
    return float(value) if kind == "float" else value


def make_out_dir(cfg: RunConfig) -> Path:
    """Create the output folder and make sure files can be written there."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".declora-write-test-"):
            pass  # a name of its own: peers of one run check the same folder at the same moment
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e}); choose a folder you can write to") \
            from None
    return out


def resolve(args: argparse.Namespace | None = None, file_values: dict | None = None, **overrides) -> RunConfig:
    """defaults < TOML file (--config) < flags < keyword overrides; then validate."""
    values: dict = {}
    if args is not None and getattr(args, "config", None):
        values.update(load_toml(args.config))
    if file_values:
        values.update(file_values)
    flags = {} if args is None else {f.name: getattr(args, f.name) for f in fields(RunConfig)
                                     if getattr(args, f.name, None) is not None}
    saved = _saved_run(args, values, flags)
    if saved is not None:
        values = {**saved, **values}
    values.update(flags)
    values.update(overrides)
    if saved is not None:
        _check_resume_changes(saved, values, Path(values.get("out", saved["out"])))
    try:
        cfg = RunConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
    return validate(cfg)


# What may change when a run is resumed: how long it goes on, how it waits, how it talks and what it writes. The
# rest (data, model, mode, topology, ranks, codec, optimizer, seed ...) defines the run that the checkpoints hold.
RESUMABLE = frozenset({"rounds", "deadline_s", "start_timeout_s", "heartbeat_s", "missed_heartbeats",
                       "fault_tolerant", "keys", "insecure", "eval_every", "eval_samples", "threads", "gpus", "cpu",
                       "save_adapters", "keep_checkpoints", "resume", "out",
                       "metric", "report_to", "reference"})


def _saved_run(args, values: dict, flags: dict) -> dict | None:
    """On `--resume` without --config: the run's own DIR/config.json, which the flags given now amend."""
    if not flags.get("resume") or getattr(args, "config", None):
        return None
    path = Path(flags.get("out", values.get("out", RunConfig.out))) / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume: {path} is not readable ({e}); fix or remove it") from None


def _check_resume_changes(saved: dict, values: dict, out: Path) -> None:
    changed = sorted(k for k, v in values.items() if k in saved and k not in RESUMABLE and saved[k] != v)
    if changed:
        what = ", ".join(f"{k} {saved[k]!r} -> {values[k]!r}" for k in changed)
        raise ConfigError(f"--resume: {what} differs from {out / 'config.json'}; only "
                          f"{', '.join(sorted(RESUMABLE - {'resume', 'out'}))} may change on resume: drop those flags "
                          f"or start a new run in another --out")


def load_run_config(path: str | Path) -> RunConfig:
    """Read a resolved config written by `write_run_config` (config.json) or a TOML file."""
    return validate(RunConfig(**load_toml(path)))


def write_run_config(cfg: RunConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    tmp.replace(path)
