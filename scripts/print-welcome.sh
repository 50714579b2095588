#!/usr/bin/env bash
# Last words of `make up`: where the hub is and how to log in.
set -euo pipefail
env_file="${ENV_FILE:-.env}"
value_of() { grep -E "^$1=" "$env_file" | tail -n1 | cut -d= -f2-; }

domain="$(value_of DOMAIN)"; port="$(value_of HTTPS_PORT)"
url="https://${domain}$([[ "$port" == 443 ]] || echo ":$port")/"
cat <<MSG

labhub is up: ${url}
MSG
case "$(value_of AUTH)" in
  shared-password)
    cat <<MSG
Log in with any username and the password SHARED_USER_PASSWORD from ${env_file};
admins ($(value_of ADMIN_USERS)) use SHARED_ADMIN_PASSWORD. Show them with:
  grep -E '^SHARED_(USER|ADMIN)_PASSWORD=' ${env_file}
MSG
    ;;
  *) echo "Log in with $(value_of AUTH) (AUTH in ${env_file})." ;;
esac
if [[ -f certs/labhub-ca.crt ]]; then
  echo "Browsers trust the page once certs/labhub-ca.crt is installed (docs/certificates.md)."
fi
# Subdomain mode needs a wildcard DNS record; browsers resolve *.localhost themselves.
if [[ "$(value_of SUBDOMAINS)" == true ]]; then
  probe="labhub-dns-check.${domain}"
  if [[ "$domain" != *localhost ]] && ! getent hosts "$probe" >/dev/null; then
    echo "WARNING: ${probe} does not resolve: users' servers (<user>.${domain}) will not" \
         "open until DNS has a wildcard record *.${domain} (docs/admin-guide.md)."
  fi
else
  echo "Path mode (SUBDOMAINS=false): a page a student serves shares the hub's origin;" \
       "with a wildcard DNS record, SUBDOMAINS=true separates them (docs/admin-guide.md)."
fi
