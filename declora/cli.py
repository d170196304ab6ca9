"""`declora` and its subcommands.

Each subcommand has an `_add_<name>(sub)` that declares its flags and a `_run_<name>(args)` that does the work,
importing what it needs lazily so that `declora --help` stays fast. Bad input (flags, config files, topology, keys,
address book, output folder) becomes a `CliError`, which ends the command with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import sys


class CliError(Exception):
    """A user error: bad flag, bad spec, missing file. Printed as one line, exit status 2."""


# ---- topology --------------------------------------------------------------------------------------------------
def _add_topology(sub) -> None:
    p = sub.add_parser("topology", help="show and check a topology (graph, mixing weights, spectral gap)")
    actions = p.add_subparsers(dest="topology_command", metavar="{show,check}", required=True)
    mixing_help = "gossip weights: metropolis (default), maxdegree, or Dec-LoRA's laplacian I - 2L/(3 lambda_max)"
    from declora.core.mixing import MIXING_RULES as rules

    show = actions.add_parser("show", help="print nodes, degrees, each node's mixing row and the spectral gap")
    show.add_argument("topology", metavar="SPEC|FILE", help="e.g. ring:8, torus:4x4, er:16:0.25:1, or a file")
    show.add_argument("--mixing", choices=rules, default="metropolis", help=mixing_help)
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    show.add_argument("--png", metavar="FILE", help="also draw the graph to this PNG file")
    show.set_defaults(func=_run_topology_show)

    check = actions.add_parser("check", help="validate a topology and its mixing matrix; exit 2 if it is not valid")
    check.add_argument("topology", metavar="SPEC|FILE", help="e.g. topologies/ring-8.toml or ring:8")
    check.add_argument("--mixing", choices=rules, default="metropolis", help=mixing_help)
    check.set_defaults(func=_run_topology_check)


def _load_topology_and_mixing(args):
    from declora.core.graphs import TopologyError
    from declora.core.mixing import check_mixing, mixing_matrix
    from declora.core.topology_files import load_topology

    try:
        t = load_topology(args.topology)
    except TopologyError as e:
        raise CliError(str(e)) from None
    M = mixing_matrix(t.graph, args.mixing)
    check_mixing(M, t.graph)  # our own matrices must pass; a failure here is a bug, not bad input
    return t, M


def _run_topology_show(args) -> int:
    import json

    from declora.core.mixing import mixing_row, spectral_gap

    t, M = _load_topology_and_mixing(args)
    gap = spectral_gap(M)
    if args.png:
        _draw_topology(t, M, gap, args.mixing, args.png)
    if args.json:
        print(json.dumps(_topology_summary(t, M, gap, args.mixing)))
        return 0
    print(f"{t.spec}: {t.n} nodes, {len(t.edges)} edges, mixing {args.mixing}")
    if t.description:
        print(t.description)
    addresses = {node.id: _address_text(node) for node in t.nodes}
    width = max(len(a) for a in addresses.values())
    address_column = f"  {'address':<{width}}" if width else ""
    print(f"node{address_column}  degree  mixing row (peer:weight)")
    for i in range(t.n):
        row = mixing_row(M, i)
        cells = [f"self:{row.pop(i, 0.0):.4f}"] + [f"{j}:{w:.4f}" for j, w in sorted(row.items())]
        address = f"  {addresses[i]:<{width}}" if width else ""
        print(f"{i:>4}{address}  {t.graph.degree(i):>6}  {' '.join(cells)}")
    print(f"spectral gap: {gap:.4f}  (one gossip step multiplies disagreement by at most {1 - gap:.4f})")
    if args.png:
        print(f"wrote {args.png}")
    return 0


def _run_topology_check(args) -> int:
    from declora.core.mixing import spectral_gap

    t, M = _load_topology_and_mixing(args)
    gap = spectral_gap(M)
    print(f"ok: {t.spec}: {t.n} nodes, {len(t.edges)} edges, connected; {args.mixing} mixing is symmetric and "
          f"doubly stochastic on the edges; spectral gap {gap:.4f}")
    return 0


def _topology_summary(t, M, gap: float, rule: str) -> dict:
    return {
        "spec": t.spec,
        "description": t.description,
        "n": t.n,
        "edges": [list(e) for e in t.edges],
        "degrees": t.degrees,
        "mixing_rule": rule,
        "mixing": M.tolist(),
        "spectral_gap": gap,
        "nodes": [node.as_dict() for node in t.nodes],
    }


def _address_text(node) -> str:
    where = f"{node.host or '?'}:{node.port or '?'}" if node.host or node.port else ""
    rank = f"r={node.rank}" if node.rank else ""
    return " ".join(part for part in (where, rank) if part)


def _passes_through_a_node(pos, i: int, j: int) -> bool:
    (xi, yi), (xj, yj) = pos[i], pos[j]
    length2 = (xj - xi) ** 2 + (yj - yi) ** 2
    for k, (xk, yk) in pos.items():
        if k in (i, j):
            continue
        along = ((xk - xi) * (xj - xi) + (yk - yi) * (yj - yi)) / length2
        off2 = (xk - xi - along * (xj - xi)) ** 2 + (yk - yi - along * (yj - yi)) ** 2
        if 0 < along < 1 and off2 < 1e-3 * length2:
            return True
    return False


def _draw_topology(t, M, gap: float, rule: str, path: str) -> None:
    # Figure + Agg canvas, not pyplot: no global backend state, no display needed.
    import networkx as nx
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    kind = t.spec.split(":", 1)[0]
    if kind == "torus":
        cols = int(t.spec.split(":")[1].lower().split("x")[1])
        pos = {i: (i % cols, -(i // cols)) for i in range(t.n)}
    elif kind in ("ring", "exp", "complete", "star", "smallworld"):
        pos = nx.circular_layout(t.graph)
    else:
        pos = nx.spring_layout(t.graph, k=2 / t.n**0.5, iterations=200, seed=0)  # spread out, deterministic
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, j in t.edges:
        # An edge drawn straight through a third node (a torus wrap-around) would be invisible: bend it.
        bend = 0.3 if _passes_through_a_node(pos, i, j) else 0.0
        ax.add_patch(FancyArrowPatch(pos[i], pos[j], arrowstyle="-", connectionstyle=f"arc3,rad={bend}",
                                     linewidth=0.5 + 6 * M[i, j], color="0.6", zorder=1))  # width = gossip weight
    xs, ys = zip(*(pos[i] for i in range(t.n)))
    ax.scatter(xs, ys, s=400, c="tab:blue", zorder=2)
    for i in range(t.n):
        ax.annotate(str(i), pos[i], ha="center", va="center", color="white", fontsize=9, zorder=3)
    ax.set_title(f"{t.spec}: {t.n} nodes, {len(t.edges)} edges, {rule} mixing, spectral gap {gap:.4f}", fontsize=9)
    ax.set_aspect("equal")
    ax.margins(0.15)
    ax.axis("off")
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


# ---- keys --------------------------------------------------------------------------------------------------------
def _add_keys(sub) -> None:
    p = sub.add_parser("keys", help="CurveZMQ keys: one keypair per peer and a folder of public keys to share")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    make = keys_sub.add_parser("make", help="write DIR/peer-<id>.key_secret (mode 0600) and DIR/public/peer-<id>.key")
    who = make.add_mutually_exclusive_group(required=True)
    who.add_argument("--peers", type=int, help="make keys for peers 0..N-1")
    who.add_argument("--ids", help="make keys for these peer ids only, e.g. 0,3,5 (the peers of one node)")
    make.add_argument("--out", required=True, help="key folder; copy DIR/public to every node, keep secrets local")
    make.add_argument("--force", action="store_true", help="replace existing keys (peers then need the new public keys)")
    make.set_defaults(func=_run_keys_make)


def _run_keys_make(args) -> int:
    from declora.wire.security import SecurityError, generate_keys

    if args.peers is not None:
        if args.peers < 1:
            raise CliError(f"--peers must be at least 1, got {args.peers}")
        ids = list(range(args.peers))
    else:
        try:
            ids = [int(v) for v in args.ids.split(",") if v.strip()]
        except ValueError:
            raise CliError(f"--ids must be comma-separated peer ids, got {args.ids!r}") from None
        if not ids or min(ids) < 0:
            raise CliError(f"--ids must list non-negative peer ids, got {args.ids!r}")
    try:
        written = generate_keys(args.out, ids, overwrite=args.force)
    except SecurityError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"--out {args.out}: cannot write keys there ({e.strerror or e}); choose a folder you can "
                       f"write to") from None
    for path in written:  # paths only: the contents of a secret file never go to a terminal or a log
        print(path)
    print(f"wrote {len(ids)} keypairs: share {written[1].parent}/ with every node; "
          f"keep each peer-<id>.key_secret on its own node only")
    return 0


# ---- simulate / peer / launch-node / server ---------------------------------------------------------------------------
# name: (help, description, which flags, what runs it)
RUN_COMMANDS = {
    "simulate": ("run N peer processes on this host (the main job)",
                 "Start N peer processes on this host that fine-tune with LoRA and gossip over ZeroMQ on loopback; "
                 "print a line per round; write DIR/summary.json and plots.", "run", "_run_simulate"),
    "peer": ("run one peer of a multi-node run",
             "Run one peer; its neighbours' addresses come from a topology file with host/port per node, or --hosts "
             "with --base-port.", "peer", "_run_peer"),
    "launch-node": ("start this node's peers (SLURM or torchrun-style variables)",
                    "Start the peers of this node: node NODE_RANK (or SLURM_NODEID) of NNODES runs peers "
                    "NODE_RANK*L .. NODE_RANK*L+L-1, L = LOCAL_WORLD_SIZE or one per GPU.", "run", "_run_launch_node"),
    "worker": ("run one peer under torchrun or srun (peers find each other through the launcher's rendezvous)",
               "Run one gossip peer started by torchrun (`torchrun --nnodes N --nproc-per-node L -m "
               "declora.worker ...`) or SLURM (`srun -n N declora worker ...`): peer RANK of WORLD_SIZE, "
               "endpoints and CURVE public keys exchanged through the launcher's TCPStore; rank 0 writes the "
               "summary.", "run", "_run_worker"),
    "server": ("run the parameter-server baseline process (fedit, flora, flexlora, zeropad)",
               "Run the parameter server of a server-baseline run; its clients are `declora peer` processes with the "
               "same --server flag.", "server", "_run_server"),
}


def _add_run_commands(sub, with_flags: str | None) -> None:
    """The run commands. Their flags come from the run config, whose choices come from modules that import torch:
    they are declared only for the command being run (`with_flags`), so `declora --help` and `declora topology`
    start in a fraction of a second."""
    for name, (help_text, description, flags, runner) in RUN_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description)
        if name == with_flags:
            from declora.config import add_flags, add_peer_flags, add_server_flags

            {"run": add_flags, "peer": add_peer_flags, "server": add_server_flags}[flags](p)
        p.set_defaults(func=globals()[runner])


def _resolved(args):
    from declora.config import resolve

    with _user_errors():
        return resolve(args)


@contextlib.contextmanager
def _user_errors():
    """A bad config, key folder, address book or output folder found while starting: one line, exit status 2."""
    from declora.config import ConfigError
    from declora.wire.security import SecurityError

    try:
        yield
    except (ConfigError, SecurityError) as e:
        raise CliError(str(e)) from None


def _run_simulate(args) -> int:
    from declora.launch import simulate

    cfg = _resolved(args)
    _check_model_available(cfg)
    with _user_errors():
        return simulate(cfg)


def _check_model_available(cfg) -> None:
    """Fail once, here, with how to install the default model, rather than once per peer process."""
    if cfg.model:
        return
    from declora.learn.model import default_model_path

    try:
        default_model_path()
    except FileNotFoundError as e:
        raise CliError(str(e)) from None


def _run_peer(args) -> int:
    from declora.node.peer import run_from_args

    return run_from_args(args)


def _run_worker(args) -> int:
    from declora.worker import run_from_args

    return run_from_args(args)


def _run_server(args) -> int:
    from declora.node.server import run_from_args

    return run_from_args(args)


def _run_launch_node(args) -> int:
    from declora.launch import launch_node

    cfg = _resolved(args)
    _check_model_available(cfg)
    with _user_errors():
        return launch_node(cfg)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; the run flags only for `command` (the subcommand being run, if it is a run command)."""
    parser = argparse.ArgumentParser(prog="declora", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_topology(sub)
    _add_keys(sub)
    _add_run_commands(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    if from_command_line:  # a program that calls main() keeps its own SIGUSR1
        from declora.node.stack_dump import dump_stacks_on_sigusr1

        dump_stacks_on_sigusr1()
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"declora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
