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
if [[ ! -f "${marker}" || "$(cat "${marker}")" != "${image_version}" ]]; then
  cp -rn "${skeleton}/." "${HOME}/"
  printf '%s\n' "${image_version}" >"${marker}"
fi
mkdir -p "${MNIST_LOGS_DIR:-${HOME}/logs}"

# The %tensorboard magic reaches TensorBoard through jupyter-server-proxy.
export TENSORBOARD_PROXY_URL="${JUPYTERHUB_SERVICE_PREFIX:-/}proxy/%PORT%/"

# The server ignores the student's `pip install --user` packages (~/.local), so nothing in
# the home changes it; its kernels (their kernel spec) and terminals (profile-venv.sh) see them.
export PYTHONNOUSERSITE=1

exec jupyterhub-singleuser "$@"
