"""The smallest valid labhub environment (`.env`), for tests that build `Settings`.

One place, so that a new required setting changes one dictionary, not every test."""

MINIMAL_ENV = {
    "CONFIGPROXY_AUTH_TOKEN": "a" * 64,
    # AUTH=native (the default) needs the first admin and their initial password.
    "ADMIN_USERS": "teacher",
    "ADMIN_INITIAL_PASSWORD": "i" * 24,
}

# The users' network's layout (.env.example's values), which NetworkSettings requires.
NETWORK_ENV = {
    "USERS_BRIDGE": "labhub-users",
    "USERS_SUBNET": "172.31.240.0/20",
    "USERS_IP_RANGE": "172.31.248.0/21",
    "HUB_USERS_IP": "172.31.240.2",
    "PROXY_USERS_IP": "172.31.240.3",
}
