#!/usr/bin/env bash
# Collect the extra CA certificates every image build (and the hub) must trust
# into .build/extra-ca/, the folder the Dockerfiles copy.
#
# Sources: certs/extra-ca/*.crt (a campus or institution CA you drop in) and, when
# TRUST_HOST_CAS=true, the CAs this host's admin already added locally
# (/usr/local/share/ca-certificates, the folder update-ca-certificates reads),
# which is what a host behind a TLS-inspecting proxy needs. Certificate checks
# are never turned off; we only add trust anchors.
set -euo pipefail

dest=.build/extra-ca
rm -rf "$dest"
mkdir -p "$dest"

copy_from() {
  local dir="$1"
  [[ -d "$dir" ]] || return 0
  find "$dir" -maxdepth 2 -type f -name '*.crt' -print0 | while IFS= read -r -d '' crt; do
    if ! openssl x509 -in "$crt" -noout 2>/dev/null; then
      echo "[extra-ca] $crt is not a PEM certificate; fix or remove it" >&2
      exit 2
    fi
    cp "$crt" "$dest/$(basename "$(dirname "$crt")")-$(basename "$crt")"
  done
}

copy_from certs/extra-ca
trust_host_cas="${TRUST_HOST_CAS:-true}"
# true or false in any case, as labhub.settings reads every switch.
if [[ "${trust_host_cas,,}" == true ]]; then
  copy_from /usr/local/share/ca-certificates
fi
echo "[extra-ca] $(find "$dest" -name '*.crt' | wc -l) extra CA certificate(s) staged" >&2
