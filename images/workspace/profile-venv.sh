# shellcheck shell=sh
# Installed as /etc/profile.d/labhub-venv.sh: login shells (JupyterLab's terminal is one) keep the
# workspace's tools (mnist-train, tensorboard, python with TensorFlow) on PATH; Debian's
# /etc/profile sets PATH anew and would otherwise drop /opt/venv/bin.
case ":${PATH}:" in
  *:/opt/venv/bin:*) ;;
  *) PATH="/opt/venv/bin:${PATH}" ;;
esac
export PATH
