#!/bin/sh
# docker/compose-run.sh SERVICE [ARGS...]: `docker compose run --rm -T SERVICE [ARGS...]` for scripts, CI
# and job schedulers (no terminal).
#
# Without a terminal, `docker compose run` does not pass SIGINT/SIGTERM on to the container: interrupting
# it (a script's Ctrl-C, `timeout`, a scheduler's SIGTERM) prints "canceled" and exits, while the stage goes
# on unseen. This wrapper names the container and, on SIGINT, SIGTERM or SIGHUP, stops it with
# `docker stop` (SIGTERM to the stage, through the image's init: train saves last.pt and exits 143, resume
# with --resume); then it prints the stage's last lines if the client was cut off, removes the container
# and exits with the stage's own exit code (0, 1, 2, 130, 143, 137 when killed).
#
# Environment: everything `docker compose` reads (COMPOSE_FILE=docker-compose.yml:docker-compose.cpu.yml,
# COMPOSE_PROJECT_NAME, TASK, RUN, ...); L2R_CONTAINER_NAME (default l2r-SERVICE-PID) and
# L2R_STOP_TIMEOUT (seconds the stage has to stop before SIGKILL, default 120).
set -u
if [ "$#" -lt 1 ]; then
    echo "usage: $0 SERVICE [ARGS...]" >&2
    exit 2
fi
name="${L2R_CONTAINER_NAME:-l2r-$1-$$}"
stop_timeout="${L2R_STOP_TIMEOUT:-120}"
stopping=""

stop() {
    stopping=1
    echo "compose-run: stopping $name (docker stop -t $stop_timeout: the stage saves its state and exits)" >&2
    docker stop -t "$stop_timeout" "$name" >/dev/null 2>&1 || true
}
trap stop INT TERM HUP

docker compose run -T --name "$name" "$@" &
client=$!
wait "$client"
client_code=$?
while kill -0 "$client" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the client again
    wait "$client"
    client_code=$?
done
trap - INT TERM HUP
# The stage's exit code is the container's (the client may have been cut off by the same signal).
if code=$(docker wait "$name" 2>/dev/null); then
    if [ -n "$stopping" ] || [ "$client_code" -ge 128 ]; then
        docker logs --tail 20 "$name" >&2 2>&1 || true
    fi
    docker rm -f "$name" >/dev/null 2>&1 || true
    exit "$code"
fi
exit "$client_code"  # no container was made (a build or configuration error): compose said why
