"""What acme-companion 2.5 sends the Docker API to reload nginx-proxy, written out as its
scripts send it (app/functions.sh, reload_nginx), independently of labhub's policy, so
that tests can check the policy against the real thing."""

RELOAD_EXEC = {
    "AttachStdin": False,
    "AttachStdout": True,
    "AttachStderr": True,
    "Tty": False,
    "Cmd": [
        "sh",
        "-c",
        "/app/docker-entrypoint.sh /usr/local/bin/docker-gen /app/nginx.tmpl "
        "/etc/nginx/conf.d/default.conf; /usr/sbin/nginx -s reload",
    ],
}
