#!/usr/bin/env bash
# Create or complete .env from .env.example: never overwrites a value you set.
#
# - copies .env.example to .env (mode 0600) on first run;
# - appends variables that a newer .env.example added;
# - generates missing secrets with openssl and prints new passwords once.
set -euo pipefail
umask 077

env_file="${1:-.env}"
# Variables this run brought into .env (all of them on the first run).
added=()
if [[ ! -f "$env_file" ]]; then
  cp .env.example "$env_file"
  mapfile -t added < <(grep -oE '^[A-Z_][A-Z0-9_]*' .env.example)
fi
chmod 600 "$env_file"

# Variables that a newer .env.example introduced keep their documented default.
while IFS= read -r line; do
  [[ "$line" =~ ^([A-Z_][A-Z0-9_]*)= ]] || continue
  if ! grep -q "^${BASH_REMATCH[1]}=" "$env_file"; then
    printf '%s\n' "$line" >>"$env_file"
    added+=("${BASH_REMATCH[1]}")
  fi
done <.env.example

# The last line for a variable wins, as in docker compose --env-file (and the Makefile).
value_of() { grep -E "^$1=" "$env_file" | tail -n1 | cut -d= -f2-; }
set_value() {
  local tmp
  tmp="$(mktemp "${env_file}.XXXXXX")"
  awk -v k="$1" -v v="$2" 'BEGIN{FS=OFS="="} $1==k{$0=k"="v} {print}' "$env_file" >"$tmp"
  mv "$tmp" "$env_file"
  chmod 600 "$env_file"
}
is_new() { [[ " ${added[*]} " == *" $1 "* ]]; }
# An alphanumeric secret of $1 characters (about 5.9 bits each).
alnum() { openssl rand -base64 48 | tr -d '/+=\n' | cut -c1-"$1"; }

new_values=()
if [[ -z "$(value_of CONFIGPROXY_AUTH_TOKEN)" ]]; then
  set_value CONFIGPROXY_AUTH_TOKEN "$(openssl rand -hex 32)"
fi
# Only when first added: emptied later, it stays empty (only admins read the metrics).
if is_new PROMETHEUS_API_TOKEN && [[ -z "$(value_of PROMETHEUS_API_TOKEN)" ]]; then
  set_value PROMETHEUS_API_TOKEN "$(openssl rand -hex 32)"
fi
case "$(value_of AUTH)" in
  native)
    # The first admin: the hub creates this account at start-up, before any sign-up.
    if [[ -z "$(value_of ADMIN_USERS)" ]]; then
      set_value ADMIN_USERS admin
      new_values+=(ADMIN_USERS)
    fi
    if [[ -z "$(value_of ADMIN_INITIAL_PASSWORD)" ]]; then
      set_value ADMIN_INITIAL_PASSWORD "$(alnum 20)"
      new_values+=(ADMIN_INITIAL_PASSWORD)
    fi
    # Only when first added: emptied later, it stays empty (an admin approves sign-ups).
    if is_new SIGNUP_CODE && [[ -z "$(value_of SIGNUP_CODE)" ]]; then
      # 64 bits, in groups of four that are easy to copy from a board.
      code="$(openssl rand -hex 8)"
      set_value SIGNUP_CODE "${code:0:4}-${code:4:4}-${code:8:4}-${code:12:4}"
      new_values+=(SIGNUP_CODE)
    fi
    ;;
  shared-password)
    if [[ -z "$(value_of SHARED_USER_PASSWORD)" ]]; then
      set_value SHARED_USER_PASSWORD "$(alnum 16)"
      new_values+=(SHARED_USER_PASSWORD)
    fi
    if [[ -z "$(value_of SHARED_ADMIN_PASSWORD)" ]]; then
      set_value SHARED_ADMIN_PASSWORD "$(openssl rand -hex 24)"
      new_values+=(SHARED_ADMIN_PASSWORD)
    fi
    ;;
esac

if ((${#new_values[@]})); then
  echo "Generated in $env_file (shown once; they stay in $env_file, mode 0600):"
  for name in "${new_values[@]}"; do
    printf '  %-24s %s\n' "$name" "$(value_of "$name")"
  done
fi
