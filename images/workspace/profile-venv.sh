# shellcheck shell=sh
# Installed as /etc/profile.d/labhub-venv.sh: login shells (JupyterLab's terminal is one) keep the
# workspace's tools (mnist-train, tensorboard, python with TensorFlow) on PATH; Debian's
# /etc/profile sets PATH anew and would otherwise drop /opt/venv/bin. The terminal's Python
# and pip see the student's own `pip install --user` packages (the server does not:
# start-workspace.sh sets PYTHONNOUSERSITE for it alone).
case ":${PATH}:" in
  *:/opt/venv/bin:*) ;;
  *) PATH="/opt/venv/bin:${PATH}" ;;
esac
export PATH
unset PYTHONNOUSERSITE
