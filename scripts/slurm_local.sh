#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests: munged, slurmctld and slurmd on localhost, as root, with
# every file under one folder. Nothing is installed system-wide and nothing listens beyond 127.0.0.1.
#
#   scripts/slurm_local.sh up DIR      start the cluster; prints `export SLURM_CONF=DIR/slurm.conf` to use it
#   scripts/slurm_local.sh down DIR    stop it (safe to call twice)
#
# Needs root and Debian's slurm-wlm and munge packages (apt-get install slurm-wlm munge). Exit status 3 means
# "cannot start here" (not root, packages missing, daemons refused): callers skip rather than fail.
set -euo pipefail
action="${1:?usage: slurm_local.sh up|down DIR}"
dir="$(mkdir -p "${2:?usage: slurm_local.sh up|down DIR}" && cd "$2" && pwd)"

stop() {
    for name in slurmd slurmctld munged; do
        if [ -f "$dir/$name.pid" ]; then
            kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
            rm -f "$dir/$name.pid"
        fi
    done
}

if [ "$action" = down ]; then
    stop
    exit 0
fi
[ "$action" = up ] || { echo "usage: slurm_local.sh up|down DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "slurm_local: needs root (slurmd runs jobs as their user)" >&2; exit 3; }
for tool in munged slurmctld slurmd srun; do
    command -v "$tool" >/dev/null || { echo "slurm_local: $tool not found: apt-get install slurm-wlm munge" >&2; exit 3; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
host="$(hostname -s)"
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"
[ -f "$dir/munge/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" 2>/dev/null; }
chmod 400 "$dir/munge/munge.key"
cat > "$dir/slurm.conf" <<EOF
ClusterName=declora-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/linear
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# A test node runs more tasks than it has cores (the peers time-share them).
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=16 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
EOF
export SLURM_CONF="$dir/slurm.conf"
munged --force --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed" \
    || { echo "slurm_local: munged did not start (see $dir/munged.log)" >&2; exit 3; }
slurmctld -f "$SLURM_CONF" -i || { stop; echo "slurm_local: slurmctld did not start (see $dir/slurmctld.log)" >&2; exit 3; }
slurmd -f "$SLURM_CONF" || { stop; echo "slurm_local: slurmd did not start (see $dir/slurmd.log)" >&2; exit 3; }
for _ in $(seq 1 60); do
    if sinfo -h -o %t 2>/dev/null | grep -q -E '^(idle|mix|alloc)'; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
stop
echo "slurm_local: the node never became idle (see $dir/slurmctld.log and $dir/slurmd.log)" >&2
exit 3
