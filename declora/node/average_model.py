"""The average model of a run at round t: what the peers agree on, evaluated as one model.

Peer i computes with `W0 + M_i + s_i B_i A_i` on every LoRA module (M_i: the deltas stack/flora merged into its
base so far, zero in the other modes) and its own dense tensors (the classifier head). The average model is

    W0 + (1/n) sum_i (M_i + s_i B_i A_i)    per module,    mean_i dense_i    for the dense tensors,

the exact mean of the peers' effective weight deltas whatever their ranks (not the product of averaged factors).
Under doubly stochastic gossip it is the quantity mixing preserves; behind a server that has just aggregated, every
client holds it. It is read from the peers' round-t checkpoints (declora.node.checkpoint, written after the round's
mixing), so a run must keep the rounds it is to be evaluated at (`--keep-checkpoints 0` keeps all).

How far the peers are from it is reported too:
- `consensus_distance`: declora.core.aggregate.consensus_distance of the adapters, (1/n) sum_i ||P_i - mean P||^2 over the
  LoRA products P_i = s_i B_i A_i and the dense tensors;
- `merged_spread`: (1/n) sum_i ||M_i - mean M||^2 over the merged deltas: the drift of stack mode's bases on a
  sparse graph (zero for flora behind a server, whose clients all merge the same stack);
- `weight_spread`: the same over the whole effective deltas M_i + P_i plus the dense tensors: the total
  disagreement, in the units of the two above;
- `mean_delta_norm2`: ||mean effective delta||^2, to read the spreads against.

The base model is built once (`AverageModel`), and each evaluation restores its pristine target weights, adds the
mean delta with `adapter.merge_delta_and_reset` (which leaves a fresh adapter with B = 0: it adds nothing) and writes
the averaged dense tensors; so one object evaluates every round of every run that shares the model and eval set.

    from declora.node.average_model import AverageModel
    avg = AverageModel.for_run("runs/x")
    for t in avg.rounds("runs/x"):
        print(t, avg.evaluate_round("runs/x", t))   # {"accuracy", "loss", "samples", "consensus_distance", ...}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from declora.core import aggregate
from declora.node.checkpoint import adapter_from_state, checkpoint_dir, common_rounds, load_checkpoint, run_peers
from declora.config import RunConfig, load_run_config
from declora.core.factors import Adapter

# A tensor's effective delta is formed in float64: spreads are small differences of large quantities.
WORK_DTYPE = torch.float64


@dataclass
class PeerState:
    """What one peer's checkpoint says about the model it computes with: its adapter and, in stack/flora runs,
    the sum of the deltas merged into its base (module key -> delta (out, in)); empty otherwise."""

    peer: int
    round: int
    adapter: Adapter
    merged: dict[str, torch.Tensor] = field(default_factory=dict)

    def effective_delta(self, key: str) -> torch.Tensor:
        """M_i + s_i B_i A_i of one module, (out, in), in WORK_DTYPE."""
        f = self.adapter.factors[key]
        delta = f.scaling * (f.B.to(WORK_DTYPE) @ f.A.to(WORK_DTYPE))
        if key in self.merged:
            delta = delta + self.merged[key].to(WORK_DTYPE)
        return delta


# ---- reading a run ------------------------------------------------------------------------------------------------
def load_peer_states(run_dir: str | Path, t: int, peers: Sequence[int] | None = None) -> list[PeerState]:
    """Every peer's round-t checkpoint (default peers: all that have checkpoints)."""
    peers = run_peers(run_dir) if peers is None else list(peers)
    if not peers:
        raise FileNotFoundError(f"{checkpoint_dir(run_dir, 0).parent} holds no peer checkpoints")
    states = []
    for p in peers:
        state = load_checkpoint(run_dir, p, t)
        if state is None:
            raise FileNotFoundError(f"peer {p} has no checkpoints in {run_dir}")
        states.append(PeerState(p, int(state["round"]), adapter_from_state(state["adapter"]),
                                dict(state.get("merged_delta") or {})))
    return states


# ---- the arithmetic (pure torch) ----------------------------------------------------------------------------------
def _check_states(states: Sequence[PeerState]) -> list[str]:
    if not states:
        raise ValueError("the average model needs at least one peer")
    keys = sorted(states[0].adapter.factors)
    dense = sorted(states[0].adapter.dense)
    for s in states[1:]:
        if sorted(s.adapter.factors) != keys or sorted(s.adapter.dense) != dense:
            raise ValueError(f"peer {s.peer}'s adapter has other modules or dense tensors than peer {states[0].peer}'s")
    for s in states:
        extra = set(s.merged) - set(keys)
        if extra:
            raise ValueError(f"peer {s.peer} merged deltas into modules without an adapter: {sorted(extra)[:3]}")
    return keys


def mean_delta(states: Sequence[PeerState]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(module key -> mean effective delta (out, in), dense name -> mean tensor), float32: the average model is
    the base plus the first and with the second as its dense tensors."""
    keys = _check_states(states)
    n = len(states)
    deltas = {}
    for key in keys:
        total = states[0].effective_delta(key)
        for s in states[1:]:
            total += s.effective_delta(key)
        deltas[key] = (total / n).to(torch.float32)
    dense = {name: (sum(s.adapter.dense[name].to(WORK_DTYPE) for s in states) / n).to(torch.float32)
             for name in sorted(states[0].adapter.dense)}
    return deltas, dense


def spreads(states: Sequence[PeerState]) -> dict[str, float]:
    """How far the peers are from their average (see the module docstring); one module at a time, so memory stays
    at two (out, in) matrices whatever the number of peers."""
    keys = _check_states(states)
    n = len(states)
    merged_spread = weight_spread = mean_norm2 = 0.0
    for key in keys:
        mean_eff = sum(s.effective_delta(key) for s in states) / n
        mean_norm2 += float((mean_eff ** 2).sum())
        weight_spread += sum(float(((s.effective_delta(key) - mean_eff) ** 2).sum()) for s in states)
        merged = [s.merged.get(key) for s in states]
        if any(m is not None for m in merged):
            shape = next(m for m in merged if m is not None).shape
            merged = [torch.zeros(shape, dtype=WORK_DTYPE) if m is None else m.to(WORK_DTYPE) for m in merged]
            mean_m = sum(merged) / n
            merged_spread += sum(float(((m - mean_m) ** 2).sum()) for m in merged)
    for name in sorted(states[0].adapter.dense):
        D = torch.stack([s.adapter.dense[name].to(WORK_DTYPE) for s in states])
        weight_spread += float(((D - D.mean(dim=0)) ** 2).sum())
    adapters = [s.adapter for s in states]
    return {
        "consensus_distance": aggregate.consensus_distance(adapters) if n > 1 else 0.0,
        "merged_spread": merged_spread / n,
        "weight_spread": weight_spread / n,
        "mean_delta_norm2": mean_norm2,
    }


# ---- the model ------------------------------------------------------------------------------------------------------
class AverageModel:
    """A base model, built once, that takes the average of any set of peers' states and evaluates it.

    `cfg` says which model, target modules and eval set (`load_workload` tokenizes it); its ranks do not matter.
    `eval_limit` > 0 evaluates on the first that many eval examples only.
    """

    def __init__(self, cfg: RunConfig, device: str | torch.device = "cpu", eval_limit: int = 0):
        from declora.learn.model import build_model, lora_layers
        from declora.node.workload import load_workload, model_spec

        self.spec = model_spec(cfg)
        self.eval_source = _eval_source(cfg)
        self.cfg = cfg
        self.model, self.tokenizer = build_model(self.spec, 1, cfg.alpha, rslora=cfg.rslora, device=device,
                                                 seed=cfg.seed)
        work = load_workload(cfg, self.tokenizer, 0, max(1, cfg.peers))
        self.eval_set = work.eval.head(eval_limit) if eval_limit > 0 else work.eval
        self.holdout_set = work.holdout  # --holdout: the validation split (None without)
        self.task = work.task
        self.eval_limit = eval_limit
        self._layers = lora_layers(self.model)
        # The pretrained target weights, restored before each evaluation: deltas are never stacked on each other.
        self._pristine = {k: layer.get_base_layer().weight.detach().clone() for k, layer in self._layers.items()}

    @classmethod
    def for_run(cls, run_dir: str | Path, device: str | torch.device = "cpu", eval_limit: int = 0) -> "AverageModel":
        return cls(load_run_config(Path(run_dir) / "config.json"), device=device, eval_limit=eval_limit)

    def compatible(self, cfg: RunConfig) -> bool:
        """Whether this object can evaluate a run of `cfg`: same model, modules, eval set and tokenization."""
        from declora.node.workload import model_spec

        return (model_spec(cfg) == self.spec and _eval_source(cfg) == self.eval_source
                and cfg.max_length == self.cfg.max_length and cfg.alpha == self.cfg.alpha
                and cfg.rslora == self.cfg.rslora and _holdout_of(cfg) == _holdout_of(self.cfg))

    def load(self, states: Sequence[PeerState]) -> None:
        """Make the model compute as the average of `states`."""
        from declora.learn.model import merge_delta_and_reset, read_adapter, write_adapter

        deltas, dense = mean_delta(states)
        with torch.no_grad():
            for key, layer in self._layers.items():
                layer.get_base_layer().weight.copy_(self._pristine[key])
        merge_delta_and_reset(self.model, deltas, rank=1, seed=0)  # fresh adapter: B = 0, adds nothing
        current = read_adapter(self.model)
        current.dense.update(dense)
        write_adapter(self.model, current)

    def evaluate(self, states: Sequence[PeerState], batch_size: int = 64, holdout: bool = False) -> dict:
        """Eval metrics of the average of `states` (every metric of the task, as `learn.evaluation.evaluate`
        reports them: accuracy, f1, mcc ... and loss for classification) plus the spreads. `holdout`: on the run's
        --holdout validation split instead of the eval set."""
        from declora.learn.evaluation import evaluate

        if holdout and self.holdout_set is None:
            raise ValueError("this run has no --holdout validation split")
        self.load(states)
        result = evaluate(self.model, self.holdout_set if holdout else self.eval_set, self.task, batch_size=batch_size)
        result.update(spreads(states))
        result["peers"] = len(states)
        return result

    def evaluate_round(self, run_dir: str | Path, t: int, batch_size: int = 64, holdout: bool = False) -> dict:
        """The average model of `run_dir` at round t (0-based), from every peer's round-t checkpoint."""
        cfg = load_run_config(Path(run_dir) / "config.json")
        if not self.compatible(cfg):
            raise ValueError(f"{run_dir} uses another model, eval set or tokenization than this AverageModel was "
                             f"built for; build one with AverageModel.for_run({str(run_dir)!r})")
        states = load_peer_states(run_dir, t)
        if len(states) != cfg.peers:
            raise FileNotFoundError(f"{run_dir}: {len(states)} of {cfg.peers} peers have checkpoints")
        return {"round": t, **self.evaluate(states, batch_size=batch_size, holdout=holdout)}

    def rounds(self, run_dir: str | Path) -> list[int]:
        return common_rounds(run_dir)


def evaluate_average_model(run_dir: str | Path, t: int | None = None, device: str | torch.device = "cpu",
                           eval_limit: int = 0) -> dict:
    """One-shot: the average model of `run_dir` at round t (default: the latest round every peer kept)."""
    avg = AverageModel.for_run(run_dir, device=device, eval_limit=eval_limit)
    if t is None:
        rounds = avg.rounds(run_dir)
        if not rounds:
            raise FileNotFoundError(f"{run_dir}: no round of which every peer kept a checkpoint")
        t = rounds[-1]
    return avg.evaluate_round(run_dir, t)


def _holdout_of(cfg: RunConfig) -> tuple:
    """What decides the validation split's examples (besides the training data, which _eval_source does not see)."""
    return (cfg.holdout, cfg.seed, cfg.data) if cfg.holdout else (0,)


def _eval_source(cfg: RunConfig) -> str:
    from declora.node.workload import data_paths

    _, dev = data_paths(cfg)
    return str(Path(dev).resolve())


__all__ = ["AverageModel", "PeerState", "evaluate_average_model", "load_peer_states", "mean_delta",
           "spreads"]
