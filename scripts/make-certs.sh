#!/usr/bin/env bash
# Certificates for nginx: certs/<DOMAIN>.crt and certs/<DOMAIN>.key.
#
# If you dropped your institution's certificate and key there, they are used as they
# are. Otherwise we create a local CA (certs/labhub-ca.crt, valid 10 years) once and
# issue a server certificate for DOMAIN, *.DOMAIN (per-user subdomains), localhost and
# the LAN addresses, renewed when the names change. Trust labhub-ca.crt on students'
# laptops (docs/certificates.md): its name constraints let it vouch for these names
# only, so on a laptop it cannot be used to impersonate any other site.
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

# The server certificate's names (sans) and the CA's permitted subtrees (permitted):
# a DNS constraint covers the name and every name below it (RFC 5280), an IP one the
# address under its mask.
all_ones_v6="ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
sans="DNS:${domain},DNS:*.${domain},DNS:localhost,IP:127.0.0.1,IP:::1"
permitted="permitted;DNS:${domain},permitted;IP:127.0.0.0/255.0.0.0,permitted;IP:::1/${all_ones_v6}"
[[ "$domain" == localhost ]] || permitted+=",permitted;DNS:localhost"
IFS=',' read -r -a extra <<<"$lan"
for name in "${extra[@]}"; do
  name="$(echo "$name" | tr -d ' ')"
  [[ -z "$name" ]] && continue
  if [[ "$name" =~ ^[0-9.]+$ ]]; then
    sans+=",IP:${name}"; permitted+=",permitted;IP:${name}/255.255.255.255"
  elif [[ "$name" == *:* ]]; then
    sans+=",IP:${name}"; permitted+=",permitted;IP:${name}/${all_ones_v6}"
  else
    sans+=",DNS:${name}"; permitted+=",permitted;DNS:${name}"
  fi
done

if [[ ! -f labhub-ca.key ]]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -days 3650 -nodes \
    -keyout labhub-ca.key -out labhub-ca.crt \
    -subj "/CN=labhub local CA ($(hostname))" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "nameConstraints=critical,${permitted}" \
    -addext "extendedKeyUsage=serverAuth" 2>/dev/null
  chmod 644 labhub-ca.crt
  echo "[certs] created local CA certs/labhub-ca.crt (valid for ${domain} and the LAN addresses only)"
elif ! openssl x509 -in labhub-ca.crt -noout -ext nameConstraints 2>/dev/null | grep -q Permitted; then
  echo "[certs] WARNING: certs/labhub-ca.crt has no name constraints (made by an older labhub):" \
       "trusted on a laptop, it could vouch for any web site. Re-create it (docs/certificates.md):" \
       "move certs/labhub-ca.* aside, run \`make certs\`, hand out the new labhub-ca.crt." >&2
fi

# A key issued by an older labhub may be 0640 or 0644: nothing but its owner needs it.
[[ -f "$key" ]] && chmod 600 "$key"

if [[ -f "$crt" && "$(cat ".${domain}.labhub-issued" 2>/dev/null)" == "$sans" ]] \
   && openssl x509 -in "$crt" -noout -checkend 2592000 >/dev/null; then
  echo "[certs] certs/$crt is current"
  exit 0
fi

# Issued into temporary files and checked against the CA (its name constraints
# included) before replacing anything nginx serves.
new_key="$(mktemp ./.new-key.XXXXXX)"; new_crt="$(mktemp ./.new-crt.XXXXXX)"
trap 'rm -f "$new_key" "$new_crt" "${domain}.csr"' EXIT
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$new_key" -out "${domain}.csr" -subj "/CN=${domain}" 2>/dev/null
openssl x509 -req -in "${domain}.csr" -CA labhub-ca.crt -CAkey labhub-ca.key -CAcreateserial \
  -days 365 -sha256 -out "$new_crt" \
  -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' "$sans") 2>/dev/null
if ! problem="$(openssl verify -purpose sslserver -CAfile labhub-ca.crt "$new_crt" 2>&1)"; then
  echo "[certs] the local CA certs/labhub-ca.crt cannot vouch for ${sans}:" >&2
  echo "        ${problem//$'\n'/ }" >&2
  echo "        Its name constraints, fixed when it was created, are:" \
       "$(openssl x509 -in labhub-ca.crt -noout -ext nameConstraints 2>/dev/null | tail -n +2 | tr -s ' \n' ' ')" >&2
  echo "        DOMAIN or LAN_ADDRESSES changed since. Re-create the CA: move certs/labhub-ca.crt" \
       "and certs/labhub-ca.key aside, run \`make certs\` again, and hand the new" \
       "labhub-ca.crt to students (docs/certificates.md)." >&2
  exit 1
fi
cat labhub-ca.crt >>"$new_crt"   # serve the chain
# The key stays 0600, owned by whoever runs this: the proxy container copies it for
# nginx as root (images/proxy/start-proxy.sh), so it never needs to be shared.
chmod 600 "$new_key"
chmod 644 "$new_crt"
mv -f "$new_key" "$key"
mv -f "$new_crt" "$crt"
printf '%s' "$sans" >".${domain}.labhub-issued"
echo "[certs] issued certs/$crt for $sans"
