-- The basic-auth app's user store: a database of its own beside the tracking store, owned by the
-- role that runs this (the postgres image runs it once, as $POSTGRES_USER, on an empty volume).
CREATE DATABASE mlflow_auth;
