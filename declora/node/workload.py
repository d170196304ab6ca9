"""From a run config to what one process trains on: the model spec, its share of the data, the trainer settings.

Keeps the peer loop and the server free of data-path rules: where the default data lives, which file is the
evaluation set, how a peer finds its shard.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from declora.config import ConfigError, RunConfig

log = logging.getLogger("declora.node.workload")


@dataclass
class Workload:
    train: object  # tokenize.TokenizedDataset
    eval: object  # tokenize.TokenizedDataset
    task: str
    description: str  # sample count and label histogram, for the peer's log
    holdout: object = None  # --holdout: the validation split no peer trains on (tokenize.TokenizedDataset)


def data_spec(cfg: RunConfig):
    """How to read the data files (learn.tables.DataSpec): the --text-columns, --label-column, --label-names,
    --header and --tsv-quoting of the run."""
    from declora.learn.tables import DataSpec

    return DataSpec.parse(cfg.text_columns, cfg.label_column, cfg.label_names, cfg.header, cfg.tsv_quoting)


def data_paths(cfg: RunConfig) -> tuple[Path, Path]:
    """(train, eval): the flags, else the shipped SST-2, else a pre-split folder's held-out file."""
    from declora.learn.examples import default_dataset, held_out_file

    if not cfg.data:
        default = default_dataset()
        return default.train, Path(cfg.eval_data) if cfg.eval_data else default.eval
    train = Path(cfg.data)
    if cfg.eval_data:
        return train, Path(cfg.eval_data)
    from declora.learn.data_files import is_shard_folder

    held_out = held_out_file(train) if is_shard_folder(train) else None
    if held_out is None:
        raise ConfigError(f"--data {train} has no evaluation set: pass --eval-data PATH")
    return train, held_out


def check_data(cfg: RunConfig) -> None:
    """Before any process starts: the user's training and evaluation files load. A bad file stops the launcher with
    one line, instead of every peer process dying with it after loading its model."""
    from declora.learn.data_files import is_shard_folder
    from declora.learn.examples import load_examples, presplit_files, task_of

    multiple_choice_set(cfg)
    check_holdout(cfg)
    if not cfg.data and not cfg.eval_data:
        return  # the shipped data
    train, evaluation = data_paths(cfg)
    spec = data_spec(cfg)
    try:
        shards = presplit_files(train) if is_shard_folder(train) else [train]
        loaded = [load_examples(path, spec) for path in shards + [evaluation]]
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    task = resolve_task(cfg)
    for path, examples in zip(shards + [evaluation], loaded):
        if examples and task == "classification" and task_of(examples) == "regression":
            raise ConfigError(f"{path}: the labels are non-integer numbers (scores), but the task is classification "
                              f"(from {'--task' if cfg.task != 'auto' else 'the first rows of --data'}); pass "
                              f"--task regression")


def check_holdout(cfg: RunConfig) -> None:
    """--holdout N leaves training data for every peer, and the split can hold some out (not 'files')."""
    if not cfg.holdout:
        return
    from declora.learn.partitions import holdout_indices, parse_scheme, pooled_examples

    try:
        if parse_scheme(cfg.partition)[0] == "files":
            raise ValueError(f"--holdout {cfg.holdout} with --partition files: a pre-split folder gives each peer "
                             f"its own file as it is; use --partition iid or dirichlet:ALPHA, or --holdout 0")
        total = len(pooled_examples(data_paths(cfg)[0], data_spec(cfg))) if cfg.holdout > 0 else 0
        holdout_indices(total, cfg.holdout, cfg.seed, cfg.peers)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def resolve_task(cfg: RunConfig) -> str:
    """--task, or with auto the task of --data's first rows: causal_lm for instruction records (any format),
    regression for non-integer numeric labels, else classification."""
    if cfg.task != "auto":
        return cfg.task
    if not cfg.data:
        return "classification"
    from declora.learn.examples import sniff_task

    return cfg._memo("_task", lambda: sniff_task(cfg.data, data_spec(cfg)))


def resolve_metric(cfg: RunConfig) -> str:
    """The metric that judges the run: --metric, or auto's choice for the task, and for classification the data's
    layout (GLUE's own metric: F1 for paraphrase pairs (MRPC, QQP), MCC for acceptability (CoLA), else accuracy)."""
    from declora.learn.examples import known_layout
    from declora.learn.metrics import metric_problem

    task = resolve_task(cfg)
    if cfg.metric != "auto":
        problem = metric_problem(cfg.metric, task, cfg.num_labels)  # with --task auto, first known here
        if problem:
            raise ConfigError(problem)
        return cfg.metric
    if task == "regression":
        return "pearson"
    if task == "causal_lm":
        return "mc-accuracy" if cfg.mc_eval else "loss"
    # The eval file: always one file (the training data may be a folder of shards); the shipped SST-2 is neither.
    layout = known_layout(data_paths(cfg)[1], data_spec(cfg)) if cfg.data or cfg.eval_data else None
    if layout == "paraphrase" and cfg.num_labels == 2:
        return "f1"
    return "mcc" if layout == "acceptability" else "accuracy"


def model_spec(cfg: RunConfig):
    from declora.learn.model import ModelSpec

    targets = tuple(t.strip() for t in cfg.target_modules.split(",") if t.strip()) or None
    return ModelSpec(path=cfg.model, task=resolve_task(cfg), num_labels=cfg.num_labels, target_modules=targets,
                     base_4bit=cfg.base_4bit)


def train_config(cfg: RunConfig, steps_per_round: int | None = None):
    from declora.learn.training import TrainConfig

    steps_per_round = steps_per_round or cfg.local_steps
    return TrainConfig(lr=cfg.lr, head_lr=cfg.head_lr or None, weight_decay=cfg.weight_decay,
                       warmup_steps=cfg.warmup_steps, schedule=cfg.schedule,
                       total_steps=cfg.rounds * steps_per_round, max_grad_norm=cfg.max_grad_norm,
                       grad_accum=cfg.grad_accum, batch_size=cfg.batch_size, local_steps=steps_per_round,
                       max_length=cfg.max_length, group_by_length=cfg.group_by_length)


def load_workload(cfg: RunConfig, tokenizer, peer_id: int, n_shards: int, union: bool = False) -> Workload:
    """This peer's shard of the training data (or, for the centralized reference, the union of all shards) and the
    shared evaluation set, tokenized."""
    from declora.learn.examples import load_examples
    from declora.learn.partitions import format_description, partition, pooled_examples, split_holdout
    from declora.learn.partitions import peer_examples, split_for_peers
    from declora.learn.tokenize import tokenize

    train_path, eval_path = data_paths(cfg)
    task = resolve_task(cfg)
    spec = data_spec(cfg)
    held: list = []
    try:
        if cfg.holdout:  # the whole set is loaded anyway to split it: take the held-out part from the same load
            held, rest = split_holdout(pooled_examples(train_path, spec), cfg.holdout, cfg.seed, n_shards)
            shards = partition(rest, n_shards, cfg.partition, cfg.seed)
            examples = [e for shard in shards for e in shard] if union else shards[peer_id]
        elif union:
            examples = [e for shard in split_for_peers(train_path, n_shards, cfg.partition, cfg.seed, spec=spec)
                        for e in shard]
        else:
            examples = peer_examples(train_path, n_shards, cfg.partition, cfg.seed, peer_id, spec=spec)
        eval_examples = load_examples(eval_path, spec)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    return Workload(
        train=tokenize(examples, tokenizer, task, cfg.max_length),
        eval=tokenize(eval_examples, tokenizer, task, cfg.max_length),
        task=task,
        description=format_description(examples),
        holdout=tokenize(held, tokenizer, task, cfg.max_length) if held else None,
    )


def build_learner(cfg: RunConfig, peer_id: int, alone: bool = False):
    """Peer `peer_id`'s learner: the model with a fresh adapter at the peer's rank and its share of the data. `alone`
    (the centralized reference): the union of every peer's share, with all peers' steps per round, so it gets the
    same compute and the same samples as the decentralized run it is compared with."""
    from declora.learn.learner import Learner
    from declora.learn.model import build_model, pick_device
    from declora.learn.training import LocalTrainer
    from declora.node.heap import trim_heap

    device = pick_device(cfg.gpu_list(), peer_id // cfg.peers_per_process, cfg.cpu)  # a process's peers: one GPU
    rank = cfg.rank_list()[peer_id]
    # Every peer starts from the same adapter init (the run's seed): averaging independently drawn A's shrinks them.
    # --independent-init: peers that join with adapters of their own (where the exact modes should matter).
    init_seed = cfg.seed * 1000 + peer_id + 1 if cfg.independent_init and not alone else cfg.seed
    model, tokenizer = build_model(model_spec(cfg), rank, cfg.alpha, rslora=cfg.rslora, device=device, seed=init_seed)
    work = load_workload(cfg, tokenizer, peer_id, cfg.peers, union=alone)
    trim_heap()  # the whole data file and the tokenizer's buffers were freed: return their pages
    log.info("peer %d on %s: rank %d, %s", peer_id, device, rank, work.description)
    steps_per_round = cfg.local_steps * cfg.peers if alone else cfg.local_steps
    seed = cfg.seed * 1000 + peer_id
    trainer = LocalTrainer(model, work.train, train_config(cfg, steps_per_round), seed=seed)
    # --holdout: the rounds' evaluations on the validation split, the eval set kept for the final report only.
    evals = (work.holdout, work.eval) if work.holdout is not None else (work.eval, None)
    learner = Learner(model, tokenizer, trainer, evals[0], work.task, rank, seed,
                      eval_batch_size=max(cfg.batch_size, 64), mc_set=multiple_choice_set(cfg),
                      mc_scoring=cfg.mc_scoring, dev_set=evals[1])
    if cfg.drift == "ffa" and not alone:  # FFA-LoRA: A keeps the shared init, so averaging the Bs is exact
        learner.freeze_A()
    return learner


def multiple_choice_set(cfg: RunConfig) -> list:
    """The --mc-eval questions (causal LM only: a classifier has no likelihood of an answer's text)."""
    if not cfg.mc_eval:
        return []
    from declora.learn.multiple_choice import load_multiple_choice

    if resolve_task(cfg) != "causal_lm":
        raise ConfigError(f"--mc-eval scores a causal LM's likelihood of each option, but this run's task is "
                          f"{resolve_task(cfg)}; drop --mc-eval or train on instruction data (--task causal_lm)")
    try:
        return load_multiple_choice(cfg.mc_eval)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def server_expectations(cfg: RunConfig):
    """What the parameter server knows from the config alone, so that no client can set it: the layout every update
    must have (the model's LoRA modules and dense tensors, any rank up to all ranks together: a FLoRA stack) and each
    client's number of training examples (its data-share weight). Builds the model once, on the CPU, to read the
    module shapes."""
    from declora.learn.model import build_model, read_adapter
    from declora.learn.partitions import split_for_peers
    from declora.node.neighbourhood import drift_rule
    from declora.wire.protocol import AdapterLayout

    spec = replace(model_spec(cfg), base_4bit=False)  # only the module shapes are read: no 4-bit base on the CPU
    model, _ = build_model(spec, 1, cfg.alpha, rslora=cfg.rslora, device="cpu", seed=cfg.seed)
    payload = drift_rule(cfg).payload_like(read_adapter(model))  # --drift: what clients send (e.g. K-GT's pair)
    layout = AdapterLayout.from_adapter(payload, max_rank=sum(cfg.rank_list()), same_alpha=False)
    train_path, _ = data_paths(cfg)
    try:
        shards = split_for_peers(train_path, cfg.peers, cfg.partition, cfg.seed, spec=data_spec(cfg),
                                 holdout=cfg.holdout)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    return layout, {i: len(shard) for i, shard in enumerate(shards)}
