#!/usr/bin/env bash
# Container health check: healthy when the model has an AVAILABLE version.
# Asks TF Serving's REST status endpoint, GET /v1/models/$MODEL_NAME, with bash's /dev/tcp
# (the serving image has no curl guarantee). Exit 0 = healthy.
set -euo pipefail
model="${MODEL_NAME:-gru4rec}"
port="${REST_PORT:-8501}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET /v1/models/%s HTTP/1.0\r\nHost: localhost\r\n\r\n' "${model}" >&3
grep -q '"AVAILABLE"' <&3
