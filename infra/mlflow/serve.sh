#!/bin/sh
# The MLflow tracking server command line, in one place: the docker-compose `mlflow` service runs
# this script, and tests/e2e/test_mlflow_stack.py runs it against a real PostgreSQL and S3 store.
#
# Configuration comes only from the environment (no secret is ever an argument, so none shows
# up in `ps`):
#   BACKEND_STORE_URI        postgresql+psycopg2://USER@HOST:PORT/DB  (password: PGPASSWORD, read by libpq)
#   ARTIFACTS_DESTINATION    s3://BUCKET[/prefix]             (keys: AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY,
#                                                              endpoint: MLFLOW_S3_ENDPOINT_URL)
#   MLFLOW_AUTH_CONFIG_PATH  the basic-auth config (basic_auth.ini beside this script by default)
#   MLFLOW_AUTH_ADMIN_PASSWORD      the admin's password, needed the first time (creates the user)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  static key for the auth app's CSRF protection
#   HOST (default 127.0.0.1), PORT (default 5000), WORKERS (default 2),
#   ALLOWED_HOSTS (optional, --allowed-hosts: set it when clients reach the server by a DNS name)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
: "${BACKEND_STORE_URI:?set BACKEND_STORE_URI (postgresql+psycopg2://USER@HOST:PORT/DB, password in PGPASSWORD)}"
: "${ARTIFACTS_DESTINATION:?set ARTIFACTS_DESTINATION (s3://BUCKET)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (a long random string)}"
MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-$here/basic_auth.ini}
export MLFLOW_AUTH_CONFIG_PATH

case "$BACKEND_STORE_URI" in
  *://*:*@*) echo "serve.sh: put the database password in PGPASSWORD, not in BACKEND_STORE_URI" >&2; exit 2 ;;
esac

set -- --app-name basic-auth \
  --backend-store-uri "$BACKEND_STORE_URI" \
  --artifacts-destination "$ARTIFACTS_DESTINATION" --serve-artifacts \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}" --workers "${WORKERS:-2}"
if [ -n "${ALLOWED_HOSTS:-}" ]; then
  set -- "$@" --allowed-hosts "$ALLOWED_HOSTS"
fi
exec mlflow server "$@"
