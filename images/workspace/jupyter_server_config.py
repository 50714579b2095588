# Server settings baked into the workspace image (read by jupyterhub-singleuser).
# ruff: noqa: F821  (`c` is injected by Jupyter's config loader)
import os

from labhub_status.status import ContainerFacts

# Open the MNIST notebook on login; students start from the story, not a file list.
c.ServerApp.default_url = "/lab/tree/mnist/MNIST.ipynb"

# TensorBoard as a launcher tile, served at /user/<name>/tensorboard/ and reading
# MNIST_LOGS_DIR (~/logs, set in the image), where mnist-train and the notebook write runs.
c.ServerProxy.servers = {
    "tensorboard": {
        "command": [
            "tensorboard",
            "--logdir=" + os.environ.get("MNIST_LOGS_DIR", os.path.expanduser("~/logs")),
            "--port={port}",
            "--host=127.0.0.1",
            "--path_prefix={base_url}tensorboard",
            "--reload_interval=15",
        ],
        "mappath": {},
        "absolute_url": True,
        "timeout": 120,
        "new_browser_tab": True,
        "launcher_entry": {"title": "TensorBoard"},
    }
}

# One kernel, "TensorFlow-GPU" (or "PyTorch" in the PyTorch workspace; installed in the
# image): without this, ipykernel's built-in "Python 3" kernel, the same environment under
# another name, is listed too.
c.KernelSpecManager.ensure_native_kernel = False

# NVIDIA's GPU dashboard only on a server that holds a GPU (the spawner sets
# NVIDIA_VISIBLE_DEVICES to its devices, "void" without): importing its server extension
# costs every start about 0.2 s (NVML's binding, its handlers; docs/benchmarks.md), and on a
# CPU server it has nothing to show. There JupyterLab reads its settings from a folder whose
# page_config.json also turns the dashboard's panel off (the Dockerfile makes it), so that
# the page never asks for the routes the server extension would have served.
holds_gpu = bool(ContainerFacts.from_env(os.environ).devices)
if not holds_gpu:
    c.LabApp.app_settings_dir = "/opt/venv/share/jupyter/lab/settings-cpu"

# No language servers are installed, so jupyter-lsp would only search for them at every
# server start; off, for a faster spawn.
c.ServerApp.jpserver_extensions = {"jupyter_lsp": False, "jupyterlab_nvdashboard": holds_gpu}
