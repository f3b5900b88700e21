#!/usr/bin/env bash
# Start the supervisor with a state dir in the checkout, deploy examples/, and
# keep the supervisor in the foreground (Ctrl-C stops it). Needs root.
set -euo pipefail
: "${STATE_DIR:?}" "${SOCKET:?}" "${BIN:?}"
if [ "$(id -u)" != 0 ]; then
  echo "make run: lambdalet creates namespaces and cgroups; run it as root" >&2
  exit 1
fi
mkdir -p "$STATE_DIR"
http_args=()
[ -n "${HTTP:-}" ] && http_args=(--http "$HTTP")
"$BIN" serve --state-dir "$STATE_DIR" --socket "$SOCKET" "${http_args[@]}" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM EXIT
for _ in $(seq 1 100); do
  [ -S "$SOCKET" ] && "$BIN" --socket "$SOCKET" list-functions >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "the supervisor did not start" >&2; exit 1; }
  sleep 0.1
done
for dir in examples/*/; do
  name=$(basename "$dir")
  # rust-hello and c-hello are custom-runtime sources (built by the tests
  # and the provided bench), not functions to deploy as they are.
  if [ -e "$dir/Cargo.toml" ] || [ -e "$dir/bootstrap.c" ]; then
    continue
  fi
  # A Node.js example has index.mjs; the others are Python's app.py.
  if [ -e "$dir/index.mjs" ]; then
    runtime=(--runtime nodejs20.x --handler index.handler)
  else
    runtime=(--runtime python3 --handler app.handler)
  fi
  if "$BIN" --socket "$SOCKET" get-function "$name" >/dev/null 2>&1; then
    "$BIN" --socket "$SOCKET" update-function-code "$name" --code "$dir" >/dev/null
  else
    "$BIN" --socket "$SOCKET" create-function "$name" "${runtime[@]}" \
      --code "$dir" >/dev/null
  fi
  echo "deployed $name"
done
cat <<TXT

lambdalet is serving on $SOCKET. In another shell:

  $BIN --socket $SOCKET invoke hello --payload '{"name": "you"}'
  $BIN --socket $SOCKET invoke hello-node --payload '{"name": "node"}'
  $BIN --socket $SOCKET logs hello
  $BIN --socket $SOCKET put-provisioned-concurrency-config hello --count 2
  $BIN --socket $SOCKET invoke hello --invocation-type Event --payload '{"name": "later"}'
  $BIN --socket $SOCKET queue hello
  $BIN --socket $SOCKET metrics
TXT
if [ -n "${HTTP:-}" ]; then
  cat <<TXT

The AWS Lambda HTTP API is on http://$HTTP (docs/http.md): boto3, the AWS
CLI and the SDKs need only their endpoint URL (any credentials, us-east-1):

  AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_DEFAULT_REGION=us-east-1 \\
    aws --endpoint-url http://$HTTP lambda invoke --function-name hello --payload '{"name": "http"}' out.json
  curl -s 'http://$HTTP/2015-03-31/functions/hello/invocations' -d '{"name": "curl"}'
  curl -s 'http://$HTTP/url/hello/any/path?x=1'    # a function URL
TXT
fi
cat <<TXT

Ctrl-C stops the supervisor.
TXT
wait $pid
