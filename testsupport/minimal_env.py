"""The smallest valid labhub environment (`.env`), for tests that build `Settings`.

One place, so that a new required setting changes one dictionary, not every test."""

MINIMAL_ENV = {
    "CONFIGPROXY_AUTH_TOKEN": "a" * 64,
    # AUTH=native (the default) needs the first admin and their initial password.
    "ADMIN_USERS": "teacher",
    "ADMIN_INITIAL_PASSWORD": "i" * 24,
}
