"""Start peer processes and watch them: N peers on this host (`declora simulate`) or this node's share of a
multi-node run (`declora launch-node`). One line of progress per round; summary.json and plots at the end.

Every peer is a separate OS process running `python -m declora.node.peer` (the same code as `declora peer`); they talk
ZeroMQ over TCP. The launcher never touches tensors: it reads the peers' metrics files.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from declora.config import ConfigError, RunConfig, make_out_dir, write_run_config
from declora.launch_faults import Faults, check_restart, resume_point
from declora.node.addressbook import free_loopback_ports, write_addresses
from declora.node.gpu_fit import check_gpu_fit
from declora.node.metrics import plot_run, progress_line, read_jsonl, read_run_metrics, round_table, summarize
from declora.node.netns import EmulatedHosts, NetnsError, remove_stale
from declora.node.report import check_reporting, end_table, final_line, load_reference
from declora.node.tensorboard_log import write_run_board
from declora.node.transports import check_links
from declora.node.workload import check_data, resolve_metric
from declora.wire.security import generate_keys

POLL_S = 0.5
NETNS_BASE_PORT = 20000  # process i of a run on emulated hosts listens on this + i (a fresh namespace has all free)


def process_ids(cfg: RunConfig) -> list[int]:
    """The OS processes of a run: one per peer, one for centralized training, plus the server for a server run."""
    if cfg.mode == "centralized":
        return [0]
    return list(range(cfg.peers)) + ([cfg.server_id] if cfg.server else [])


def is_server(cfg: RunConfig, pid: int) -> bool:
    return bool(cfg.server) and pid == cfg.server_id


def threads_per_process(cfg: RunConfig, local_processes: int) -> int:
    return cfg.threads or max(1, (os.cpu_count() or 1) // max(1, local_processes))


def peer_command(config_path: Path, peer_id: int, threads: int, role: str = "peer",
                 resume_round: int | None = None, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", f"declora.node.{role}", "--config", str(config_path), "--peer-id", str(peer_id),
           "--threads", str(threads)]
    return cmd + resume_flags(resume_round, resume)


def resume_flags(resume_round: int | None, resume: bool) -> list[str]:
    """--resume --resume-round R: every peer from round R; --resume alone: each from its own latest checkpoint."""
    if resume_round is not None:
        return ["--resume", "--resume-round", str(resume_round)]
    return ["--resume"] if resume else []


def process_groups(cfg: RunConfig, ids: list[int]) -> list[list[int]]:
    """The processes to start, each with the ids it runs: one peer each, or --peers-per-process consecutive peers
    sharing a base; the server always alone."""
    peers = [i for i in ids if not is_server(cfg, i)]
    size = max(1, cfg.peers_per_process)
    return [peers[k:k + size] for k in range(0, len(peers), size)] + [[i] for i in ids if is_server(cfg, i)]


def group_command(config_path: Path, group: list[int], threads: int, resume_round: int | None = None,
                  resume: bool = False) -> list[str]:
    """The command of a process running `group`: a plain peer (or the server) for one id, else node.group."""
    if len(group) == 1:
        return peer_command(config_path, group[0], threads, "peer", resume_round, resume)
    cmd = [sys.executable, "-m", "declora.node.group", "--config", str(config_path),
           "--peer-ids", ",".join(map(str, group)), "--threads", str(threads)]
    return cmd + resume_flags(resume_round, resume)


class Stopped(Exception):
    """The launcher got SIGTERM or SIGHUP: stop every peer, as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _die_with_parent(parent: int):
    """For Popen's preexec_fn (Linux): the child gets SIGTERM when the launcher dies, however it dies."""
    def arm() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the launcher around the fork
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return  # not Linux: the launcher's own signal handlers still stop the children
        if os.getppid() != parent:  # the launcher died before the signal was armed
            os._exit(1)
    return arm


class PeerProcesses:
    """The child processes of this launcher, their logs, and how each ended."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.procs: dict[int, subprocess.Popen] = {}
        self.logs: dict[int, Path] = {}
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, peer_id: int, cmd: list[str], env: dict, name: str | None = None) -> None:
        name = name or ("server" if "declora.node.server" in cmd else f"peer-{peer_id}")
        self.logs[peer_id] = self.run_dir / "logs" / f"{name}.log"
        log = open(self.logs[peer_id], "ab")
        # A new session per child so that Ctrl-C on the launcher is handled once, here, not by every child; and a
        # parent-death signal, so that children never outlive a launcher killed with SIGKILL.
        # The stop signals wait until the child is in self.procs: a Ctrl-C inside Popen would otherwise leave a
        # started child that stop_all does not know of.
        try:  # the block inside: a signal handled as the mask changes raises from pthread_sigmask itself
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            self.procs[peer_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                   start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.close()
        # DIR/processes.json: the OS pid of each process (by its first peer id), for tools and fault-injection tests.
        tmp = self.run_dir / "processes.json.tmp"
        tmp.write_text(json.dumps({str(i): p.pid for i, p in sorted(self.procs.items())}) + "\n")
        tmp.replace(self.run_dir / "processes.json")

    def failures(self) -> dict[int, int]:
        return {pid: p.returncode for pid, p in self.procs.items() if p.poll() is not None and p.returncode != 0}

    def running(self) -> list[int]:
        return [pid for pid, p in self.procs.items() if p.poll() is None]

    def log_tail(self, peer_id: int, lines: int = 8) -> str:
        try:
            text = self.logs[peer_id].read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])

    def why(self, peer_id: int) -> str:
        """The last meaningful line of a dead peer's log: usually the exception."""
        text = self.log_tail(peer_id, 40).splitlines()
        for line in reversed(text):
            if line.strip() and not line.strip().startswith(("File ", "^", "~")):
                return line.strip()
        return "no output"

    def stop_all(self, grace_s: float = 5.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def prepare_run_dir(cfg: RunConfig, ephemeral_keys: bool = False, hosts: EmulatedHosts | None = None) \
        -> tuple[RunConfig, Path]:
    """Create DIR, choose loopback ports when none were given (or the emulated hosts' addresses), make the run's own
    CURVE keys (`ephemeral_keys`, unless --keys or --insecure), write the resolved config and addresses."""
    run_dir = make_out_dir(cfg)
    config_path = run_dir / "config.json"
    ids = process_ids(cfg)
    # Resume with the same ports (and keys) so that the peers' saved addresses stay right.
    reuse = cfg.resume and config_path.exists() and (run_dir / "addresses.json").exists()
    if hosts is not None:  # fresh namespaces have every port free; their subnet is new each run
        write_addresses(run_dir, {pid: f"tcp://{hosts.address(host_of(cfg, pid))}:{NETNS_BASE_PORT + pid}"
                                  for pid in ids})
    elif not reuse and not cfg.hosts and not cfg.base_port:
        ports = free_loopback_ports(len(ids))
        write_addresses(run_dir, {pid: f"tcp://127.0.0.1:{port}" for pid, port in zip(ids, ports)})
    if ephemeral_keys and not reuse and not cfg.keys and not cfg.insecure and cfg.mode != "centralized":
        cfg = replace(cfg, keys=str(make_run_keys(run_dir / "keys", ids)))
    check_links(cfg, ids)
    # On resume too: the flags that may change (rounds, deadlines, keys ...) are in cfg, merged over the saved config
    # by config.resolve; the peers read this file. --resume itself reaches them as a flag, not through the file.
    write_run_config(replace(cfg, resume=False), config_path)
    return cfg, config_path


def make_run_keys(folder: Path, ids: list[int]) -> Path:
    """Fresh CURVE keypairs for every process of this run (secret files 0600), so that even a run on one host
    authenticates every message: in plain text any local process could speak as any peer."""
    if folder.exists():
        shutil.rmtree(folder)  # an earlier run's keys in this folder: this run gets its own
    generate_keys(folder, ids)
    return folder


def child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def group_env(env: dict) -> dict:
    """A process of several peers: one malloc arena. glibc gives each training thread an arena of its own, and each
    arena keeps the freed activations of its thread's last step, so memory grows with the peers (measured in
    benchmarks/README.md, "Many peers per host"). The peers train one at a time anyway (the random-stream lock), so
    one arena costs no parallelism."""
    return {**env, "MALLOC_ARENA_MAX": env.get("MALLOC_ARENA_MAX", "1")}


def simulate(cfg: RunConfig, out=None) -> int:
    """Run every process of the run on this host (on emulated hosts with --hosts netns:K); return the exit status."""
    check_data(cfg)
    check_reporting(cfg)
    cfg = check_restart(cfg)
    with emulated_hosts(cfg) as hosts:
        cfg, config_path = prepare_run_dir(cfg, ephemeral_keys=True, hosts=hosts)
        return run_processes(cfg, config_path, process_ids(cfg), out=out, hosts=hosts)


@contextlib.contextmanager
def emulated_hosts(cfg: RunConfig):
    """The network namespaces of --hosts netns:K for the length of the run (None without it); always removed."""
    if not cfg.emulated_hosts():
        yield None
        return
    removed = remove_stale()
    if removed:
        print(f"declora: removed {len(removed)} namespaces left by killed runs", file=sys.stderr)
    try:
        hosts = EmulatedHosts(cfg.emulated_hosts(), cfg.host_mbit)
    except NetnsError as e:
        raise ConfigError(f"--hosts {cfg.hosts}: {e}; run as root on Linux with iproute2, or drop --hosts") from None
    with hosts:
        yield hosts


def host_of(cfg: RunConfig, pid: int) -> int:
    """The emulated host of process `pid`: round robin, so that ring and torus neighbours sit on different hosts."""
    return pid % cfg.emulated_hosts()


def run_processes(cfg: RunConfig, config_path: Path, ids: list[int], out=None,
                  hosts: EmulatedHosts | None = None) -> int:
    out = out or sys.stdout  # looked up now, not at import: tests swap sys.stdout
    run_dir = Path(cfg.out)
    groups = {group[0]: group for group in process_groups(cfg, ids)}  # a process by its first id
    check_gpu_fit(cfg, [g for g in groups.values() if not is_server(cfg, g[0])])  # GPUs (issue 12): fit or stop
    threads = threads_per_process(cfg, len(groups))
    procs = PeerProcesses(run_dir)
    env = child_env()
    started = time.time()
    print(f"declora: {describe(cfg)}; {len(groups)} processes x {threads} threads; output in {run_dir}", file=out,
          flush=True)
    resume_round, own_latest = resume_point(cfg, run_dir, ids, out) if cfg.resume else (None, False)
    expected = len([pid for pid in ids if not is_server(cfg, pid)])
    printed = -1
    dead_reported: set[int] = set()
    faults = Faults(cfg, run_dir, groups, started)
    status = 0

    def start(pid: int, resume_round: int | None, resume: bool) -> None:
        group, prefix = groups[pid], hosts.exec_prefix(host_of(cfg, pid)) if hosts else []
        if is_server(cfg, pid):
            procs.start(pid, prefix + peer_command(config_path, pid, threads, "server", resume_round), env)
            return
        cmd = prefix + group_command(config_path, group, threads, resume_round, resume)
        if len(group) == 1:
            procs.start(pid, cmd, env)
        else:
            procs.start(pid, cmd, group_env(env), name=f"peers-{group[0]}-{group[-1]}")

    handlers = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for pid in groups:  # inside the try: a signal during start-up stops the peers started so far
            start(pid, resume_round, own_latest)
        while True:
            for pid, code in procs.failures().items():
                if pid in dead_reported:
                    continue
                dead_reported.add(pid)
                others = [p for p in procs.running() if p != pid] + list(faults.pending)
                died, *then = faults.died(pid, code, others_running=bool(others))
                print(f"{died}: {procs.why(pid)}\n  log: {procs.logs[pid]}\n{procs.log_tail(pid)}", file=out,
                      flush=True)
                for line in then:
                    print(line, file=out, flush=True)
                if not cfg.fault_tolerant:
                    status = 1
            if status:
                break
            for pid in faults.due():  # a restart: its own latest checkpoint, then catch-up (node.catch_up)
                start(pid, None, True)
                dead_reported.discard(pid)
                print(faults.restarted(pid), file=out, flush=True)
            printed = print_new_rounds(run_dir, cfg, printed, out, expected)
            if not procs.running() and not faults.pending:
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print("declora: interrupted, stopping peers", file=out, flush=True)
        status = 130
    except Stopped as e:
        print(f"declora: got {e}, stopping peers", file=out, flush=True)
        status = 128 + e.signum
    finally:
        # A second signal must not cut the shutdown short and leave children behind.
        handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        procs.stop_all()
        for s, handler in handlers.items():
            signal.signal(s, handler)
    for line in faults.give_up():  # never a restart after the run ended or was stopped
        print(line, file=out, flush=True)
    print_new_rounds(run_dir, cfg, printed, out, expected, final=True)
    if status == 0 and faults.dead and cfg.fault_tolerant:
        print(f"declora: finished without {len(faults.dead)} dead process(es) (fault tolerance on)", file=out)
    return finish(cfg, run_dir, time.time() - started, status, out, faults)


def print_new_rounds(run_dir: Path, cfg: RunConfig, printed: int, out, expected: int, final: bool = False) -> int:
    per_peer = read_run_metrics(run_dir)
    if not per_peer:
        return printed
    for row in round_table(per_peer):
        # Print a round once every peer has reported it (or at the end, whatever is there).
        if row["round"] > printed and (row["peers_reporting"] >= expected or final):
            print(progress_line(row, cfg.rounds), file=out, flush=True)
            printed = row["round"]
    return printed


def finish(cfg: RunConfig, run_dir: Path, wall_s: float, status: int, out, faults: Faults | None = None) -> int:
    per_peer = read_run_metrics(run_dir)
    extra = {"status": "ok" if status == 0 else "failed"}
    if faults is not None and (faults.deaths or faults.returns):
        extra["faults"] = faults.summary(per_peer)
    server_metrics = run_dir / "metrics" / "server.jsonl"
    if server_metrics.exists():
        extra["server"] = read_jsonl(server_metrics)
    metric = resolve_metric(cfg)  # checked at launch
    reference = load_reference(cfg, metric)
    if reference:
        extra["reference"] = reference
    summary = summarize(cfg.to_json(), per_peer, wall_s, extra, metric)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        plots = plot_run(run_dir, per_peer, metric, describe(cfg), reference and reference["value"])
    except Exception as e:  # noqa: BLE001 - a plot failure must not hide the run's results
        plots = []
        print(f"declora: could not draw plots: {e}", file=out)
    write_run_board(cfg, summary["rounds"])
    line = final_line(summary["final"], reference)
    if line:
        print(line, file=out)
    if per_peer:
        print(end_table(per_peer, metric), file=out)
    print(f"declora: {summary['bytes_sent_total'] / 1e6:.2f} MB sent, {wall_s:.0f} s; wrote {run_dir}/summary.json"
          + "".join(f", {p.name}" for p in plots), file=out, flush=True)
    return status


def describe(cfg: RunConfig) -> str:
    if cfg.mode == "centralized":
        return f"centralized, {cfg.rounds} rounds x {cfg.local_steps * cfg.peers} steps"
    what = f"server {cfg.server}" if cfg.server else f"{cfg.mode} on {cfg.topology_spec()}"
    wire = "CURVE" if cfg.keys else "plain text"
    if cfg.emulated_hosts():
        wire += f" on {cfg.emulated_hosts()} emulated hosts" + (f" at {cfg.host_mbit:g} Mbit/s" if cfg.host_mbit else "")
    return f"{cfg.peers} peers, {what}, codec {cfg.codec} over {wire}, {cfg.rounds} rounds x {cfg.local_steps} steps"


# ---- multi-node ----------------------------------------------------------------------------------------------------
def node_environment(env: dict | None = None) -> tuple[int, int, int | None]:
    """(node rank, number of nodes, local processes or None) from torchrun-style or SLURM variables."""
    env = os.environ if env is None else env
    for rank_key, count_key, local_key in (("NODE_RANK", "NNODES", "LOCAL_WORLD_SIZE"),
                                           ("SLURM_NODEID", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE")):
        if rank_key in env:
            local = env.get(local_key)
            try:
                return int(env[rank_key]), int(env.get(count_key, "1")), int(local.split("(")[0]) if local else None
            except ValueError:
                raise ConfigError(f"{rank_key}={env[rank_key]!r}, {count_key}={env.get(count_key)!r}, "
                                  f"{local_key}={local!r}: these must be integers (as torchrun and SLURM set them); "
                                  f"fix or unset them") from None
    return 0, 1, None


def launch_node(cfg: RunConfig, config_path: Path | None = None, env: dict | None = None, out=None) -> int:
    """Start the peers of this node: node r runs peers r*L .. r*L+L-1 (L = peers per node)."""
    node, nnodes, local = node_environment(env)
    per_node = cfg.peers_per_node or local or _local_gpu_count() or max(1, cfg.peers // nnodes)
    cfg = replace(cfg, peers_per_node=per_node)
    ids = [i for i in range(node * per_node, min(cfg.peers, (node + 1) * per_node))]
    if cfg.server and node == 0:
        ids.append(cfg.server_id)
    if not ids:
        raise ConfigError(f"node {node} of {nnodes} has no peers ({cfg.peers} peers, {per_node} per node): check "
                          f"NODE_RANK/NNODES against --peers and --peers-per-node")
    check_data(cfg)
    check_reporting(cfg)
    cfg = check_restart(cfg)
    run_dir = make_out_dir(cfg)
    check_links(cfg, ids)
    config_path = run_dir / f"config.node{node}.json"
    write_run_config(cfg, config_path)
    print(f"declora: node {node}/{nnodes} runs peers {ids}", file=out, flush=True)
    return run_processes(cfg, config_path, ids, out=out)


def _local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0
