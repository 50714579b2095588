#!/bin/bash
# Wait for the certificate the test issues for this container's address, seed the
# directory, then run slapd in the foreground (stats to stderr).
set -euo pipefail
for _ in $(seq 600); do
    [[ -s /certs/tls.crt && -s /certs/tls.key ]] && break
    sleep 0.2
done
if [[ ! -s /var/lib/ldap-test/data.mdb ]]; then
    slapadd -f /opt/ldap/slapd.conf -l /opt/ldap/seed.ldif
fi
exec slapd -f /opt/ldap/slapd.conf -h "ldap://:1389/ ldaps://:1636/ ldapi:///" -d stats
