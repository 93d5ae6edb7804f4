#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying (and testing) hydra/launcher=slurm:
# Debian's slurm-wlm with munge, this host as controller and compute node, partition "local".
# Run as root; it installs the packages when sbatch is absent, writes /etc/slurm/slurm.conf
# (an existing one is kept as slurm.conf.before-pneumonia) and starts munged, slurmctld and
# slurmd. It is a tool for a workstation or CI: a real cluster is configured by its admins.
#   sudo scripts/local_slurm.sh          then   sinfo; srun hostname
set -euo pipefail
if ! command -v sbatch >/dev/null || ! command -v slurmd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
host=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/munge
chown -R slurm:slurm /var/lib/slurm /var/log/slurm
if [ -f /etc/slurm/slurm.conf ] && ! grep -q "pneumonia" /etc/slurm/slurm.conf; then
  cp /etc/slurm/slurm.conf /etc/slurm/slurm.conf.before-pneumonia
fi
cat > /etc/slurm/slurm.conf <<CONF
# Written by pneumonia's scripts/local_slurm.sh: a one-node cluster on $host.
ClusterName=local
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
# No cgroups: processes are tracked by their parents, tasks are not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# A requeued job (scontrol requeue, a preemption) may start again at once.
JobRequeue=1
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key /run/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo --noheader --states=idle,mixed,allocated --format=%N 2>/dev/null | grep -q "$host"; then
    scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    sinfo
    exit 0
  fi
  sleep 1
done
echo "SLURM did not come up: see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
