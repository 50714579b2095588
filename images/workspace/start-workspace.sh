#!/usr/bin/env bash
# Container entry point: put the MNIST workspace into the user's persistent home,
# then hand over to JupyterHub's single-user server.
set -euo pipefail

skeleton=/opt/workspace
marker="${HOME}/.mnist_workspace_version"
# The skeleton's fingerprint: any image whose workspace files differ counts as new.
image_version="$(cd "${skeleton}" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"

# Copy on first start and whenever the image brings different workspace files, file by
# file and never over an existing file (cp -n): a student's edited notebook always wins.
# A home that is full (its disk quota) still gets its server, where the student frees
# space: the copy is tried again at the next start.
if [[ ! -f "${marker}" || "$(cat "${marker}")" != "${image_version}" ]]; then
  if ! { cp -rn "${skeleton}/." "${HOME}/" && printf '%s\n' "${image_version}" >"${marker}"; }; then
    echo "start-workspace: the MNIST workspace was not fully copied into ${HOME} (is it" \
      "full?); the server starts, and the copy is tried again at the next start" >&2
  fi
fi
logs="${MNIST_LOGS_DIR:-${HOME}/logs}"
mkdir -p "${logs}" || echo "start-workspace: could not make ${logs} (is ${HOME} full?)" >&2

# The %tensorboard magic reaches TensorBoard through jupyter-server-proxy.
export TENSORBOARD_PROXY_URL="${JUPYTERHUB_SERVICE_PREFIX:-/}proxy/%PORT%/"

# The server ignores the student's `pip install --user` packages (~/.local), so nothing in
# the home changes it; its kernels (their kernel spec) and terminals (profile-venv.sh) see them.
export PYTHONNOUSERSITE=1

exec jupyterhub-singleuser "$@"
