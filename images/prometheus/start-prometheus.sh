#!/usr/bin/env bash
# Put the hub's metrics token where prometheus.yml reads it (the file, not the
# environment, is what Prometheus can use), then run Prometheus.
set -euo pipefail
: "${PROMETHEUS_API_TOKEN:?PROMETHEUS_API_TOKEN is empty: run make env to generate it}"
umask 077
printf '%s' "$PROMETHEUS_API_TOKEN" >/var/lib/prometheus/hub-token
unset PROMETHEUS_API_TOKEN
# The GPU service runs only with GPUs (GPU_INVENTORY not none): scrape it then.
config=/var/lib/prometheus/prometheus.yml
cp /etc/labhub/prometheus.yml "$config"
if [[ "${GPU_INVENTORY:-none}" != none ]]; then
  cat /etc/labhub/prometheus-gpus.yml >>"$config"
fi
exec prometheus \
  --config.file="$config" \
  --storage.tsdb.path=/var/lib/prometheus/data \
  --storage.tsdb.retention.time="${PROMETHEUS_RETENTION:-30d}" \
  --web.listen-address=0.0.0.0:9090
