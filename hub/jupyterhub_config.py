"""JupyterHub configuration: wiring only.

All values come from one validated `Settings` object built from the environment
(`.env`, described in `labhub.settings.SECTIONS`, documented in `.env.example`); the
logic lives in the `labhub` package.
"""
# ruff: noqa: F821  (`c` is injected by JupyterHub's config loader)

import os
import sys
from pathlib import Path

from labhub import course
from labhub.apiguard import guard_api_bodies
from labhub.auth import authenticator_config, discover_endpoints, provider_ca_bundle
from labhub.contract import GPU_SERVICE, WORKSPACE_DEFAULT_URL
from labhub.culls import IDLE_CULLER, log_and_count_culls
from labhub.gpu.allocator import load_allocator
from labhub.native import TEMPLATES as HUB_TEMPLATES
from labhub.settings import Settings, SettingsError, check_files, settings_environment
from labhub.spawner import spawner_config
from labhub.swarmgpu import swarm_gpu_spawner_config
from labhub.swarmspawner import swarm_spawner_config

try:
    # Validation first, all problems at once: the variables, then the files they name.
    settings = Settings.from_env(os.environ)
    check_files(settings)
    # GPU inventory and profiles, loaded and checked now (not at the first spawn page).
    gpu_allocator = load_allocator(settings)
    # Then the start-up steps with effects: the provider's CA bundle file, OIDC discovery.
    provider_ca = provider_ca_bundle(settings)
    oidc = None
    if settings.auth == "generic":
        assert settings.oauth is not None
        oidc = discover_endpoints(settings.oauth, provider_ca)
except SettingsError as error:
    # A wrong setting (or a file it names) stops start-up with a message naming the
    # variable, not a traceback.
    print(error, file=sys.stderr, flush=True)
    sys.exit(2)

# Two JupyterHub 6.1.1 API bugs guarded (labhub.apiguard): a JSON body that is not an
# object gets 400, not 500; the admin panel's unchanged `name` no longer nulls the name.
guard_api_bodies()

# --- Hub and proxy ---------------------------------------------------------------
# The hub's public URL: cookies are Secure and OAuth callbacks are built from it.
c.JupyterHub.bind_url = "http://:8000"
c.JupyterHub.public_url = settings.public_url
# Every cookie (the XSRF one too) is Secure: the hub is only ever reached over https.
# Requests are logged as JupyterHub logs them, and the idle culler's stops are counted
# (labhub_culls_total{reason="hub-idle"} on /hub/metrics, labhub.culls).
c.JupyterHub.tornado_settings = {
    "cookie_options": {"secure": True},
    "log_function": log_and_count_culls,
}
if settings.subdomains:
    # Each user's server at https://<user>.DOMAIN/: browsers keep users' pages apart.
    c.JupyterHub.subdomain_host = settings.public_url
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
# User containers reach the hub by its service name on the Docker network.
c.JupyterHub.hub_connect_url = "http://hub:8081"
# configurable-http-proxy runs as its own service, so a hub restart drops no connection.
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://proxy-chp:8001"
c.ConfigurableHTTPProxy.auth_token = settings.configproxy_auth_token
# Users' servers keep running while the hub restarts or upgrades.
c.JupyterHub.cleanup_servers = False
# Every 30 s the hub reads the proxy's routes (users' last activity) and re-adds any
# that are missing, so a restarted proxy-chp serves every user again within ~30 s
# (default 300 s). See docs/reliability.md.
c.JupyterHub.last_activity_interval = 30
# The database and cookie secret live in the hub's data volume.
c.JupyterHub.db_url = f"sqlite:///{settings.data_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{settings.data_dir}/jupyterhub_cookie_secret"
c.JupyterHub.concurrent_spawn_limit = settings.concurrent_spawn_limit
# Prometheus metrics at /hub/metrics, for admins (tokens with read:metrics) only.
c.JupyterHub.authenticate_prometheus = True
c.JupyterHub.log_level = "DEBUG" if settings.debug else "INFO"

# --- Authentication ----------------------------------------------------------------
authenticator_class, authenticator_traits = authenticator_config(settings, provider_ca, oidc)
c.JupyterHub.authenticator_class = authenticator_class
c[authenticator_class.rsplit(".", 1)[-1]].update(authenticator_traits)
# labhub's pages before JupyterHub's: the sign-up page (with the class's sign-up code,
# AUTH=native), the home and spawn pages (the named-server pattern, NAMED_SERVERS).
c.JupyterHub.template_paths = [HUB_TEMPLATES]

# --- Spawner -------------------------------------------------------------------------
if settings.engine == "swarm":
    # ENGINE=swarm (docs/scale-out.md): each user's server a Swarm service on their home's
    # node, through the Docker proxy in front of the manager (PROXY_POLICY=swarm).
    if gpu_allocator.inventory:
        # GPUs across nodes (labhub.swarmgpu): the allocator picks node and device.
        c.JupyterHub.spawner_class = "labhub.swarmgpu.LabSwarmGpuSpawner"
        c.LabSwarmGpuSpawner.update(swarm_gpu_spawner_config(settings, gpu_allocator))
    else:
        c.JupyterHub.spawner_class = "labhub.swarmspawner.LabSwarmSpawner"
        c.LabSwarmSpawner.update(swarm_spawner_config(settings))
    # Users' servers reach the hub by its container name (compose/swarm.yml), on whichever
    # overlay network they share with it; the spawner connects these two to a user's network.
    if not (settings.hub_container and settings.chp_container):
        sys.exit("ENGINE=swarm: HUB_CONTAINER and CHP_CONTAINER are not set: start with make up")
    c.JupyterHub.hub_connect_url = f"http://{settings.hub_container}:8081"
    c.LabSwarmSpawner.frontend_containers = [settings.hub_container, settings.chp_container]
    # The users' way out (labhub.egress): joined to their networks like the frontends.
    if settings.egress_container:
        c.LabSwarmSpawner.frontend_containers.append(settings.egress_container)
        c.LabSwarmSpawner.egress_proxy = settings.egress_container
else:
    c.JupyterHub.spawner_class = "labhub.spawner.LabSpawner"
    c.LabSpawner.update(spawner_config(settings, gpu_allocator))
# Users may not change their server's environment through their own config files.
c.Spawner.disable_user_config = True
c.Spawner.default_url = WORKSPACE_DEFAULT_URL
# Named servers on the same home (NAMED_SERVERS besides the default one): a CPU server
# to edit in, a GPU server next to it only to train. The GPU allocator books per server.
c.JupyterHub.allow_named_servers = settings.named_servers > 0
c.JupyterHub.named_server_limit_per_user = settings.named_servers

# --- Idle culler ---------------------------------------------------------------------
c.JupyterHub.load_roles = [
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": [IDLE_CULLER],
    }
]
c.JupyterHub.services = [
    {
        "name": IDLE_CULLER,
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={settings.idle_timeout}",
            "--cull-every=60",
        ],
    }
]

# --- Metrics (docs/monitoring.md) -------------------------------------------------------
# /hub/metrics answers admins' tokens and this service's: read:metrics and nothing else.
if settings.prometheus_api_token:
    c.JupyterHub.load_roles.append(
        {"name": "metrics-reader", "scopes": ["read:metrics"], "services": ["prometheus"]}
    )
    c.JupyterHub.services.append({"name": "prometheus", "api_token": settings.prometheus_api_token})
# --- Course material (docs/course.md) ---------------------------------------------------
# `make course-link ... GROUP=g` stores a link in group g's properties through the API,
# as this token-only service (scope "groups": read and write groups, not create or delete
# them); every hub page then shows a member their groups' links, with no restart.
c.JupyterHub.load_roles.append(
    {"name": course.SERVICE, "scopes": course.SERVICE_SCOPES, "services": [course.SERVICE]}
)
c.JupyterHub.services.append(
    {
        "name": course.SERVICE,
        "api_token": course.service_token(Path(settings.data_dir) / course.TOKEN_FILE),
    }
)
c.JupyterHub.template_vars = {"announcement": course.announcement}

# --- GPUs (docs/gpus.md) ---------------------------------------------------------------
# The admin page and API at /services/gpus/, and the students' api/me (their GPU session,
# its warnings and extensions). Every user may pass the hub's OAuth for the service (and
# their server's token gets the same access, LabSpawner's server_token_scopes); the
# service itself answers 403 on every admin page and endpoint to anyone not an admin.
# It also stops GPU holders by the rules of labhub.gpu.reclaim (idle GPU, session
# length, GPU_IDLE_TIMEOUT), sooner than the idle culler above. With QUOTA_ROOT it runs
# without GPUs too: api/me and the admin page also show the homes' disk usage and limits.
if settings.gpu_service:
    c.JupyterHub.load_roles.append(
        {"name": "user", "scopes": ["self", "access:services!service=gpus"]}
    )
    c.JupyterHub.load_roles.append(
        {
            "name": "gpus-service",
            "scopes": [
                "admin:servers",
                "list:users",
                "read:users:name",
                "read:users:activity",
                # api/me: the quota that applies to a student depends on their groups.
                "read:users:groups",
            ],
            "services": [GPU_SERVICE],
        }
    )
    # On a Swarm it also reads the node list through the hub's Docker proxy (the homes'
    # usage, read node by node: labhub.gpu.homes).
    gpus_swarm_environment = (
        {"DOCKER_HOST": os.environ.get("DOCKER_HOST", "")} if settings.engine == "swarm" else {}
    )
    c.JupyterHub.services.append(
        {
            "name": GPU_SERVICE,
            # proxy-chp runs in its own container: it reaches the service by the hub's name.
            "url": "http://hub:10101",
            # proxy-chp reaches it from another container: listen on every interface.
            "command": [sys.executable, "-m", "labhub.gpu.service", "--bind=0.0.0.0"],
            # The service builds the same Settings from the same variables as the hub.
            "environment": settings_environment(os.environ) | gpus_swarm_environment,
            "oauth_no_confirm": True,
            # The hub stops if a managed service does not answer in time (default 30 s);
            # on a loaded host (many servers starting) Python start-up alone can take that.
            "timeout": 120,
        }
    )
