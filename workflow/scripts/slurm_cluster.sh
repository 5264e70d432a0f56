#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests: munge + MariaDB + slurmdbd +
# slurmctld + slurmd, all with their own config, state and sockets under DIR, listening on
# 127.0.0.1 only, on free ports. Nothing under /etc is changed; the system services stay off.
#
#   bash workflow/scripts/slurm_cluster.sh start DIR   # installs Debian's slurm-wlm/munge/mariadb if missing
#   . DIR/env.sh                                       # SLURM_CONF + a PATH whose sbatch logs its command line
#   bash workflow/scripts/slurm_cluster.sh stop DIR    # stops every daemon started above (by pid file)
#
# The node (s2cnode) advertises 16 CPUs, 64 GB and 2 GPUs (gres gpu, no device files) whatever the
# machine has (SlurmdParameters=config_overrides), so the workflow profile's real requests
# (cpus_per_task up to 8, mem_mb up to 32000, --gpus=1) are accepted as written; partitions `cpu`
# and `gpu` match profiles/slurm. Accounting (sacct, which the Snakemake executor queries) goes
# through slurmdbd into a private MariaDB; account `s2c` holds user $(id -un).
# Every sbatch call is appended, shell-quoted, to DIR/sbatch.log (DIR/bin/sbatch wraps the real one);
# DIR/bin/srun restores SLURM_CONF, which the executor's job step clears before its srun.
set -euo pipefail

cmd=${1:-}
DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

stop() {
  local name pid
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    [ -f "$DIR/run/$name.pid" ] || continue
    pid=$(cat "$DIR/run/$name.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/run/$name.pid"
  done
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

need=()
for b in slurmctld:slurmctld slurmd:slurmd slurmdbd:slurmdbd sbatch:slurm-client munged:munge mariadbd:mariadb-server; do
  command -v "${b%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${b%%:*}" ] || need+=("${b#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "missing ${need[*]}: apt-get install them (needs root)" >&2; exit 1; }
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurm-wlm slurmdbd slurm-client munge mariadb-server >/dev/null
fi
export PATH=/usr/sbin:/sbin:$PATH

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
rm -rf "$DIR"/{run,log,state,spool,munge,db,bin,dev}
mkdir -p "$DIR"/{run,log,state,spool,munge,db,bin}
chmod 700 "$DIR/munge"
chmod 755 "$DIR/run"
trap 'echo "slurm_cluster: start failed; logs in $DIR/log" >&2; tail -n 20 "$DIR"/log/*.log >&2 || true; stop' ERR

USER_NAME=$(id -un)
HOST=$(hostname -s)
read -r P_CTLD P_SLURMD P_DBD P_DB < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)

# munge: a private key and socket
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/run/munge.sock" \
  --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
AUTH="AuthInfo=socket=$DIR/run/munge.sock"

# MariaDB on 127.0.0.1 for slurmdbd
mariadb-install-db --user="$USER_NAME" --datadir="$DIR/db" --auth-root-authentication-method=socket \
  --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1
mariadbd --user="$USER_NAME" --datadir="$DIR/db" --socket="$DIR/run/mysql.sock" --port="$P_DB" \
  --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" \
  --innodb-buffer-pool-size=32M --skip-name-resolve 2>> "$DIR/log/mariadbd.log" &
for _ in $(seq 100); do
  mariadb -S "$DIR/run/mysql.sock" -u root -e 'select 1' >/dev/null 2>&1 && break
  sleep 0.2
done
DBPW=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
mariadb -S "$DIR/run/mysql.sock" -u root -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPW';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

cat > "$DIR/slurmdbd.conf" <<EOF
$AUTH
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$P_DBD
SlurmUser=$USER_NAME
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$P_DB
StorageUser=slurm
StoragePass=$DBPW
StorageLoc=slurm_acct_db
EOF
chmod 600 "$DIR/slurmdbd.conf"

cat > "$DIR/slurm.conf" <<EOF
ClusterName=s2c
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$P_CTLD
SlurmdPort=$P_SLURMD
SlurmUser=$USER_NAME
SlurmdUser=root
AuthType=auth/munge
$AUTH
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MinJobAge=300
DefMemPerCPU=1000
KillWait=5
InactiveLimit=0
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$P_DBD
AccountingStoragePass=$DIR/run/munge.sock
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName=s2cnode NodeAddr=127.0.0.1 NodeHostname=$HOST CPUs=16 RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=s2cnode Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=s2cnode MaxTime=INFINITE State=UP
EOF
# two stand-in GPU device files (char devices equal to /dev/null): Slurm binds gres to files
mkdir -p "$DIR/dev" "$DIR/spool/s2cnode"
if mknod "$DIR/dev/gpu0" c 1 3 2>/dev/null && mknod "$DIR/dev/gpu1" c 1 3 2>/dev/null; then
  GPU_FILES="$DIR/dev/gpu[0-1]"
else
  GPU_FILES="/dev/null,/dev/zero"
fi
cat > "$DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=s2cnode Name=gpu File=$GPU_FILES
EOF
export SLURM_CONF="$DIR/slurm.conf"

slurmdbd  # reads slurmdbd.conf next to $SLURM_CONF
for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.3; done
sacctmgr -i add cluster s2c >/dev/null
sacctmgr -i add account s2c Description=s2c-tests Organization=s2c >/dev/null
sacctmgr -i add user "$USER_NAME" Account=s2c DefaultAccount=s2c >/dev/null

slurmctld -f "$DIR/slurm.conf"
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.3; done
slurmd -f "$DIR/slurm.conf" -N s2cnode
for _ in $(seq 150); do
  state=$(sinfo -h -n s2cnode -o %t 2>/dev/null | head -n1)
  case "$state" in idle|mix|alloc) break ;; esac
  sleep 0.3
done
case "$state" in idle|mix|alloc) ;; *) echo "node s2cnode did not come up (state '$state')" >&2; false ;; esac

# sbatch that records its command line, then runs the real one. The executor submits jobs
# concurrently: the line is written under a lock, or two calls' words and newlines interleave
cat > "$DIR/bin/sbatch" <<EOF
#!/usr/bin/env bash
line=\$(printf '%q ' sbatch "\$@")
flock "$DIR/sbatch.log" bash -c 'printf "%s\\n" "\$1" >> "\$2"' _ "\$line" "$DIR/sbatch.log"
exec $(command -v sbatch) "\$@"
EOF
# srun that finds this cluster's config: the executor's job step (snakemake-executor-plugin-slurm-
# jobstep) removes every SLURM_* variable, SLURM_CONF included, before its nested srun, so a config
# outside /etc/slurm would otherwise be lost inside jobs
cat > "$DIR/bin/srun" <<EOF
#!/usr/bin/env bash
export SLURM_CONF=$DIR/slurm.conf
exec $(command -v srun) "\$@"
EOF
chmod +x "$DIR/bin/sbatch" "$DIR/bin/srun"
cat > "$DIR/env.sh" <<EOF
export SLURM_CONF=$DIR/slurm.conf
export PATH=$DIR/bin:/usr/sbin:\$PATH
EOF
trap - ERR
echo "slurm cluster up: SLURM_CONF=$DIR/slurm.conf (ctld :$P_CTLD, dbd :$P_DBD)"
