#!/usr/bin/env bash
# Last words of `make up`: where the hub is and how the first admin and students log in.
set -euo pipefail
env_file="${ENV_FILE:-.env}"
# The last line for a variable wins, as in docker compose --env-file (and the Makefile).
value_of() { grep -E "^$1=" "$env_file" | tail -n1 | cut -d= -f2-; }

domain="$(value_of DOMAIN)"; port="$(value_of HTTPS_PORT)"
url="https://${domain}$([[ "$port" == 443 ]] || echo ":$port")"
cat <<MSG

labhub is up: ${url}/
MSG
case "$(value_of AUTH)" in
  native)
    cat <<MSG
First admin: log in as $(value_of ADMIN_USERS) with ADMIN_INITIAL_PASSWORD from ${env_file}
(show it with: grep ^ADMIN_INITIAL_PASSWORD= ${env_file}), then change it at
${url}/hub/change-password.
Students create their own account at ${url}/hub/signup.
MSG
    if [[ -n "$(value_of SIGNUP_CODE)" ]]; then
      echo "With the class's SIGNUP_CODE (grep ^SIGNUP_CODE= ${env_file}) it works at once;"
      echo "without it, an admin approves each account at ${url}/hub/authorize."
    else
      echo "SIGNUP_CODE is empty: an admin approves each account at ${url}/hub/authorize."
    fi
    ;;
  shared-password)
    cat <<MSG
WORKSHOP MODE (AUTH=shared-password): anyone with SHARED_USER_PASSWORD can log in under
any name, an existing user's too, and read their files. Use it only for a short workshop
with throw-away accounts; for a class set AUTH=native (docs/security.md#login).
Admins ($(value_of ADMIN_USERS)) log in with SHARED_ADMIN_PASSWORD. Show the passwords with:
  grep -E '^SHARED_(USER|ADMIN)_PASSWORD=' ${env_file}
MSG
    ;;
  ldap)
    cat <<MSG
Students and staff log in with their campus directory username and password
($(value_of LDAP_URL)); who may and who is admin: ALLOWED_GROUPS, ADMIN_GROUPS (docs/ldap.md).
MSG
    ;;
  *) echo "Log in with $(value_of AUTH) (AUTH in ${env_file})." ;;
esac
if [[ -f certs/labhub-ca.crt ]]; then
  echo "Browsers trust the page once certs/labhub-ca.crt is installed (docs/certificates.md)."
fi
# Subdomain mode needs a wildcard DNS record; browsers resolve *.localhost themselves.
subdomains="$(value_of SUBDOMAINS)"
if [[ "${subdomains,,}" == true ]]; then
  probe="labhub-dns-check.${domain}"
  if [[ "$domain" != *localhost ]] && ! getent hosts "$probe" >/dev/null; then
    echo "WARNING: ${probe} does not resolve: users' servers (<user>.${domain}) will not" \
         "open until DNS has a wildcard record *.${domain} (docs/admin-guide.md)."
  fi
else
  echo "Path mode (SUBDOMAINS=false): a page a student serves shares the hub's origin;" \
       "with a wildcard DNS record, SUBDOMAINS=true separates them (docs/admin-guide.md)."
fi
