# Sourced by the scripts README names: they need root (network namespaces, dockerd, containerd).
# Run as root, they go on as they are (no `sudo` needed, e.g. on a root-only machine without it);
# otherwise they re-run themselves through sudo, or say how to run them.
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E "$0" "$@"
    fi
    echo "$0: needs root: run it as root (sudo is not installed)" >&2
    exit 1
fi
