#!/usr/bin/env bash
# Certificates for nginx: certs/<DOMAIN>.crt and certs/<DOMAIN>.key.
#
# If you dropped your institution's certificate and key there, they are used as they
# are. Otherwise we create a local CA (certs/labhub-ca.crt, valid 10 years) once and
# issue a server certificate for DOMAIN, *.DOMAIN (per-user subdomains), localhost and
# the LAN addresses, renewed when the names change. Trust labhub-ca.crt on students'
# laptops (docs/certificates.md).
set -euo pipefail
umask 077
cd "${CERTS_DIR:-$(dirname "$0")/../certs}"

domain="${DOMAIN:-localhost}"
lan="${LAN_ADDRESSES:-}"
crt="${domain}.crt"; key="${domain}.key"

if [[ -f "$crt" && -f "$key" && ! -f ".${domain}.labhub-issued" ]]; then
  echo "[certs] using your certificate certs/$crt"
  exit 0
fi

if [[ ! -f labhub-ca.key ]]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -days 3650 -nodes \
    -keyout labhub-ca.key -out labhub-ca.crt \
    -subj "/CN=labhub local CA ($(hostname))" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 644 labhub-ca.crt
  echo "[certs] created local CA certs/labhub-ca.crt"
fi

sans="DNS:${domain},DNS:*.${domain},DNS:localhost,IP:127.0.0.1,IP:::1"
IFS=',' read -r -a extra <<<"$lan"
for name in "${extra[@]}"; do
  name="$(echo "$name" | tr -d ' ')"
  [[ -z "$name" ]] && continue
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then sans+=",IP:${name}"; else sans+=",DNS:${name}"; fi
done

if [[ -f "$crt" && "$(cat ".${domain}.labhub-issued" 2>/dev/null)" == "$sans" ]] \
   && openssl x509 -in "$crt" -noout -checkend 2592000 >/dev/null; then
  echo "[certs] certs/$crt is current"
  exit 0
fi

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$key" -out "${domain}.csr" -subj "/CN=${domain}" 2>/dev/null
openssl x509 -req -in "${domain}.csr" -CA labhub-ca.crt -CAkey labhub-ca.key -CAcreateserial \
  -days 365 -sha256 -out "$crt" \
  -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' "$sans") 2>/dev/null
cat labhub-ca.crt >>"$crt"   # serve the chain
rm -f "${domain}.csr"
# nginx runs as www-data (uid/gid 33) in its container and must read the key.
chmod 644 "$crt"
if chgrp 33 "$key" 2>/dev/null; then chmod 640 "$key"; else chmod 644 "$key"; fi
printf '%s' "$sans" >".${domain}.labhub-issued"
echo "[certs] issued certs/$crt for $sans"
