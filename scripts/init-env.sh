#!/usr/bin/env bash
# Create or complete .env from .env.example: never overwrites a value you set.
#
# - copies .env.example to .env (mode 0600) on first run;
# - appends variables that a newer .env.example added;
# - generates missing secrets with openssl and prints new passwords once.
set -euo pipefail
umask 077

env_file="${1:-.env}"
[[ -f "$env_file" ]] || cp .env.example "$env_file"
chmod 600 "$env_file"

# Variables that a newer .env.example introduced keep their documented default.
while IFS= read -r line; do
  [[ "$line" =~ ^([A-Z_][A-Z0-9_]*)= ]] || continue
  grep -q "^${BASH_REMATCH[1]}=" "$env_file" || printf '%s\n' "$line" >>"$env_file"
done <.env.example

value_of() { grep -E "^$1=" "$env_file" | tail -n1 | cut -d= -f2-; }
set_value() {
  local tmp
  tmp="$(mktemp "${env_file}.XXXXXX")"
  awk -v k="$1" -v v="$2" 'BEGIN{FS=OFS="="} $1==k{$0=k"="v} {print}' "$env_file" >"$tmp"
  mv "$tmp" "$env_file"
  chmod 600 "$env_file"
}

new_passwords=()
if [[ -z "$(value_of CONFIGPROXY_AUTH_TOKEN)" ]]; then
  set_value CONFIGPROXY_AUTH_TOKEN "$(openssl rand -hex 32)"
fi
if [[ "$(value_of AUTH)" == "shared-password" ]]; then
  if [[ -z "$(value_of SHARED_USER_PASSWORD)" ]]; then
    set_value SHARED_USER_PASSWORD "$(openssl rand -base64 18 | tr -d '/+=' | cut -c1-16)"
    new_passwords+=(SHARED_USER_PASSWORD)
  fi
  if [[ -z "$(value_of SHARED_ADMIN_PASSWORD)" ]]; then
    set_value SHARED_ADMIN_PASSWORD "$(openssl rand -hex 24)"
    new_passwords+=(SHARED_ADMIN_PASSWORD)
  fi
fi

if ((${#new_passwords[@]})); then
  echo "Generated in $env_file (shown once; they stay in $env_file, mode 0600):"
  for name in "${new_passwords[@]}"; do
    printf '  %-22s %s\n' "$name" "$(value_of "$name")"
  done
fi
