#!/usr/bin/env bash
# Set up pspnet-cluster in ./.venv on a fresh machine.
#   ./setup.sh          the package and its pinned dependencies (MindSpore 2.10, numpy<2, ...)
#   ./setup.sh --test   also pytest/hypothesis and the system programs the tests drive for real:
#                       openssh-server (sshd), prometheus (+ promtool), chromium, and Slurm
#                       (slurm-wlm: slurmctld, slurmd, srun, sbatch; munge) (needs root + apt)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
  need=()
  [ -x /usr/sbin/sshd ] || need+=(openssh-server openssh-client)
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && command -v srun >/dev/null 2>&1 || need+=(slurm-wlm)
  [ -x /usr/sbin/munged ] || need+=(munge)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${need[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"
echo "setup: ready ($(.venv/bin/python -c 'import mindspore, numpy; print("mindspore", mindspore.__version__, "numpy", numpy.__version__)' 2>/dev/null || echo 'mindspore not importable'))"
