#!/usr/bin/env bash
# Render the nginx site from its template and start nginx in the foreground.
set -euo pipefail

: "${DOMAIN:?DOMAIN must be set, e.g. DOMAIN=gpu.lab.example.edu}"
export HTTPS_PORT="${HTTPS_PORT:-443}"
export HUB_UPSTREAM="${HUB_UPSTREAM:-http://proxy-chp:8000}"
export MAX_BODY_SIZE="${MAX_BODY_SIZE:-512m}"
if [[ "${HTTPS_PORT}" == "443" ]]; then HTTPS_PORT_SUFFIX=""; else HTTPS_PORT_SUFFIX=":${HTTPS_PORT}"; fi
export HTTPS_PORT_SUFFIX

for ext in crt key; do
  if [[ ! -r "/etc/nginx/certs/${DOMAIN}.${ext}" ]]; then
    echo "proxy: /etc/nginx/certs/${DOMAIN}.${ext} is missing: run \`make certs\` or put your" \
         "institution's certificate in certs/${DOMAIN}.crt and certs/${DOMAIN}.key" >&2
    exit 2
  fi
done

# shellcheck disable=SC2016  # the variable names are envsubst's, not the shell's
envsubst '${DOMAIN} ${HTTPS_PORT_SUFFIX} ${HUB_UPSTREAM} ${MAX_BODY_SIZE}' \
  </etc/nginx/templates/labhub.conf.template >/etc/nginx/conf.d/labhub.conf
exec nginx -g 'daemon off;'
