"""labhub: the Python side of the lab's GPU JupyterHub.

`jupyterhub_config.py` stays thin: it builds one validated `Settings` object
from the environment (`labhub.settings`) and wires the components defined here.
"""

__version__ = "0.1.0"
