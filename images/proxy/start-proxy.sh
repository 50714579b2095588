#!/usr/bin/env bash
# The proxy container's entrypoint: render the nginx site from its template, take a
# private copy of the TLS key pair, and run nginx in the foreground as www-data.
#
# The container starts as root for one reason: to read certs/<DOMAIN>.key whatever its
# owner and mode on the host (0600, owned by whoever ran `make certs`). The pair is
# copied to /run/labhub-tls (a tmpfs in compose), readable by www-data only; then every
# privilege is dropped before nginx starts.
set -euo pipefail

: "${DOMAIN:?DOMAIN must be set, e.g. DOMAIN=gpu.lab.example.edu}"
export HTTPS_PORT="${HTTPS_PORT:-443}"
export HUB_UPSTREAM="${HUB_UPSTREAM:-http://proxy-chp:8000}"
export MAX_BODY_SIZE="${MAX_BODY_SIZE:-512m}"
export LOGIN_RATE_LIMIT="${LOGIN_RATE_LIMIT:-30}"
if [[ "${HTTPS_PORT}" == "443" ]]; then HTTPS_PORT_SUFFIX=""; else HTTPS_PORT_SUFFIX=":${HTTPS_PORT}"; fi
export HTTPS_PORT_SUFFIX

if [[ ! "${LOGIN_RATE_LIMIT}" =~ ^[1-9][0-9]{0,5}$ ]]; then
  echo "proxy: LOGIN_RATE_LIMIT=${LOGIN_RATE_LIMIT} is not a number of login attempts per" \
       "minute: set it in .env to a whole number from 1 to 999999, e.g. LOGIN_RATE_LIMIT=30" >&2
  exit 2
fi
if [[ ! "${MAX_BODY_SIZE}" =~ ^[0-9]+[kKmMgG]?$ ]]; then
  echo "proxy: MAX_BODY_SIZE=${MAX_BODY_SIZE} is not a size: set it in .env like 512m or 1g" >&2
  exit 2
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "proxy: start this container as root (the image's default): it copies the TLS key" \
       "for nginx, then runs nginx as www-data" >&2
  exit 2
fi

for ext in crt key; do
  if [[ ! -f "/etc/nginx/certs/${DOMAIN}.${ext}" ]]; then
    echo "proxy: /etc/nginx/certs/${DOMAIN}.${ext} is missing: run \`make certs\` or put your" \
         "institution's certificate in certs/${DOMAIN}.crt and certs/${DOMAIN}.key" >&2
    exit 2
  fi
done
# Modes before owners: once www-data owns a file, changing its mode would need FOWNER,
# which the container does not get.
mkdir -p /run/labhub-tls
chmod 0700 /run/labhub-tls
cp "/etc/nginx/certs/${DOMAIN}.crt" /run/labhub-tls/server.crt
cp "/etc/nginx/certs/${DOMAIN}.key" /run/labhub-tls/server.key
chmod 0400 /run/labhub-tls/server.crt /run/labhub-tls/server.key
chown -R www-data:www-data /run/labhub-tls

# shellcheck disable=SC2016  # the variable names are envsubst's, not the shell's
envsubst '${DOMAIN} ${HTTPS_PORT_SUFFIX} ${HUB_UPSTREAM} ${MAX_BODY_SIZE} ${LOGIN_RATE_LIMIT}' \
  </etc/nginx/templates/labhub.conf.template >/etc/nginx/conf.d/labhub.conf
# nginx reopens /dev/stdout and /dev/stderr (its logs): the container's pipes, root's.
chown www-data:www-data /proc/self/fd/1 /proc/self/fd/2
# Nothing runs as root from here on: tini (PID 1, reaps and forwards signals) and nginx.
exec setpriv --reuid=www-data --regid=www-data --clear-groups --inh-caps=-all \
  tini -g -- nginx -g 'daemon off;'
