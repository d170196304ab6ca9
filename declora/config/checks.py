"""Checking a run config: every bad value stops the command with one line that says what is wrong and how to fix
it."""
from __future__ import annotations

from pathlib import Path

from declora.config.fields import HEAD_CODECS, MODES, SERVER_AGGREGATIONS, ConfigError, RunConfig
from declora.core.attacks import ATTACKS
from declora.core.codecs import CODEC_NAMES
from declora.core.drift import DRIFT_RULES
from declora.core.mixing import MIXING_RULES
from declora.core.robust import ROBUST_RULES, RobustRule
from declora.core.strategies import STRATEGIES, get_strategy
from declora.learn.metrics import metric_problem
from declora.learn.model import TASKS
from declora.learn.quantized import base_4bit_problem
from declora.learn.tables import flags_problem
from declora.learn.training import SCHEDULES
from declora.wire.chaos import ChaosSpecError, parse


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
                                 ("mixing", cfg.mixing, MIXING_RULES), ("head-codec", cfg.head_codec, HEAD_CODECS)):
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
    need(cfg.deadline_s > 0, f"--deadline-s must be > 0 seconds, got {cfg.deadline_s}")
    need(0 <= cfg.deadline_floor_s <= cfg.deadline_s,
         f"--deadline-floor-s must be in 0..--deadline-s ({cfg.deadline_s}), got {cfg.deadline_floor_s}")
    need(cfg.stale_rounds >= 0, f"--stale-rounds must be >= 0 (0 = on-time messages only), got {cfg.stale_rounds}")
    need(0 <= cfg.stale_decay <= 1, f"--stale-decay must be in [0, 1], got {cfg.stale_decay}")
    try:
        slow = {i: f for i, f in ((i, cfg.slow_factor(i)) for i in range(cfg.peers)) if f != 1.0}
    except ValueError:
        raise ConfigError(f"--slow-peers must be ID:FACTOR pairs like 3:3 or 1:2,5:1.5, got {cfg.slow_peers!r}") \
            from None
    need(all(f >= 1 for f in slow.values()) and set(cfg._parse_slow()) <= set(range(cfg.peers)),
         f"--slow-peers needs peer ids in 0..{cfg.peers - 1} and factors >= 1, got {cfg.slow_peers!r}")
    if cfg.hosts.strip().startswith("netns"):
        need(1 <= cfg.emulated_hosts() <= 200, f"--hosts netns:K needs K in 1..200 emulated hosts, got {cfg.hosts!r}")
    need(cfg.host_mbit >= 0, f"--host-mbit must be >= 0 (0 = no cap), got {cfg.host_mbit}")
    need(not cfg.host_mbit or cfg.emulated_hosts(), "--host-mbit caps emulated hosts' links: add --hosts netns:K")
    _check_chaos(cfg)
    _check_drift(cfg)
    need(not (cfg.independent_init and cfg.drift == "ffa"), "--drift ffa keeps the run's shared initial A frozen, "
                                                            "which --independent-init does away with; drop one")
    merges = cfg.server == "flora" or (not cfg.server and cfg.mode == "stack")
    need(not cfg.keep_moments or merges, "--keep-moments carries AdamW's moments across a merge into the base: it "
                                         "applies to --mode stack and --server flora only; drop it")
    need(cfg.peers_per_process >= 1, f"--peers-per-process must be >= 1, got {cfg.peers_per_process}")
    merging = cfg.server == "flora" or (not cfg.server and cfg.mode == "stack")
    need(cfg.peers_per_process == 1 or not merging,
         f"--peers-per-process {cfg.peers_per_process} shares one frozen base between peers, but "
         f"{'--server flora' if cfg.server else '--mode stack'} merges each peer's deltas into its base; use "
         f"gossip, svd or zeropad (or fedit behind a server), or one peer per process")
    if cfg.base_4bit:  # GPUs (issue 12)
        merger = "--server flora" if cfg.server else "--mode stack"
        need(not merging, f"--base-4bit keeps the base packed in 4 bits, but {merger} merges every round's deltas "
                          f"into the base, which would round each merge away; use gossip, svd or zeropad (or fedit "
                          f"behind a server), or drop --base-4bit")
        problem = base_4bit_problem(cfg.cpu, cfg.model)
        need(problem is None, problem or "")
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


def _check_chaos(cfg: RunConfig) -> None:
    """--chaos and --cut (fault injection, issue 10) parse, and name only peers of the run."""
    for flag, value in (("--chaos", cfg.chaos), ("--cut", cfg.cut)):
        try:
            spec = parse(**{flag[2:]: value})
        except ChaosSpecError as e:
            raise ConfigError(f"{flag} {value!r}: {e}") from None
        ids = spec.peer_ids()
        n = cfg.peers + bool(cfg.server)  # the parameter server takes the id after the last client
        if ids and max(ids) >= n:
            raise ConfigError(f"{flag} {value!r}: peer {max(ids)} is not in the run (ids 0..{n - 1})")


def _check_topology(cfg: RunConfig) -> None:
    from declora.core.graphs import TopologyError

    try:
        n = cfg.gossip_topology().n
    except TopologyError as e:
        raise ConfigError(str(e)) from None
    if n != cfg.peers:
        raise ConfigError(f"the topology {cfg.topology} has {n} nodes but --peers is {cfg.peers}")


def _check_drift(cfg: RunConfig) -> None:
    """Drift correction acts on A and B entry by entry (core.drift says why): factor averaging only."""
    if cfg.drift == "none":
        return
    if cfg.drift not in DRIFT_RULES:
        raise ConfigError(f"--drift must be one of {', '.join(DRIFT_RULES)}, got {cfg.drift!r}")
    where = f"--server {cfg.server}" if cfg.server else f"--mode {cfg.mode}"
    if (cfg.server and cfg.server != "fedit") or (not cfg.server and cfg.mode != "gossip"):
        raise ConfigError(f"--drift {cfg.drift} corrects the A and B factors entry by entry, which needs factor "
                          f"averaging, not {where}; use --mode gossip (or --server fedit) with equal ranks, or "
                          f"--drift none")
    if not (0 < cfg.outer_lr <= 2 and 0 <= cfg.outer_momentum < 1):
        raise ConfigError(f"--outer-lr must be in (0, 2] and --outer-momentum in [0, 1), got {cfg.outer_lr} and "
                          f"{cfg.outer_momentum}")
    if not (0 <= cfg.qgm_beta < 1 and 0 <= cfg.qgm_mu < 1):
        raise ConfigError(f"--qgm-beta and --qgm-mu must be in [0, 1), got {cfg.qgm_beta} and {cfg.qgm_mu}")
