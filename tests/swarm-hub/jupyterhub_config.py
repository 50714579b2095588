"""JupyterHub on the test Swarm's manager (tests/test_swarm.py): LabSwarmSpawner, with every
Docker call through labhub's Docker proxy in front of the manager's engine."""

import json
import os

from labhub.settings import Settings
from labhub.swarmspawner import swarm_spawner_config

c = get_config()  # type: ignore[name-defined]  # noqa: F821

# The lab's settings, read and checked as the platform's hub reads them.
settings = Settings.from_env(os.environ)
c.JupyterHub.spawner_class = "labhub.swarmspawner.LabSwarmSpawner"
c.LabSwarmSpawner.update(swarm_spawner_config(settings))
# The proxy's address; the hub holds no Docker socket.
c.LabSwarmSpawner.client_kwargs = {"base_url": os.environ["SWARM_TEST_DOCKER_URL"]}
# The hub runs CHP itself: its container is the one joined to each user's network.
c.LabSwarmSpawner.frontend_containers = [os.environ["SWARM_TEST_HUB_NAME"]]
# A stand-in for the workspace server (the TensorFlow image stays off the test nodes).
c.LabSwarmSpawner.cmd = json.loads(os.environ["SWARM_TEST_SERVER_CMD"])
c.Spawner.start_timeout = 120

# Users' servers reach the hub by its container name on the overlay network.
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_ip = os.environ["SWARM_TEST_HUB_NAME"]
c.JupyterHub.port = 8000
c.JupyterHub.db_url = "sqlite:////tmp/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/tmp/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "/tmp/jupyterhub-proxy.pid"

# The test drives the hub through its REST API with this service's token; nobody logs in.
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.services = [{"name": "swarm-test", "api_token": os.environ["SWARM_TEST_TOKEN"]}]
c.JupyterHub.load_roles = [
    {
        "name": "swarm-test",
        "scopes": ["admin:users", "admin:servers", "access:servers"],
        "services": ["swarm-test"],
    }
]
