# Server settings baked into the workspace image (read by jupyterhub-singleuser).
# ruff: noqa: F821  (`c` is injected by Jupyter's config loader)
import os

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

# No language servers are installed, so jupyter-lsp would only search for them at every
# server start; off, for a faster spawn.
c.ServerApp.jpserver_extensions = {"jupyter_lsp": False}
