"""In-place config reload for processes that re-read their files on SIGHUP (Prometheus, Alertmanager): a sidecar.

A ConfigMap or Secret mounted whole is updated by the kubelet in place; Prometheus and Alertmanager
re-read their config (Prometheus: ``prometheus.yml`` and every rule file) on SIGHUP, and keep the old
one, logging the error, when the new one is invalid. Restarting them instead costs more: the TSDB is
one pod that replays its WAL before it serves again, and Alertmanager keeps its silences only in the
running process (docs/deploy.md, "Config changes reach the pods").

The sidecar :func:`reloader_container` runs the main container's own image (both images are busybox
based: ``sh``, ``cat``, ``sha256sum``, ``pidof``, ``kill``, ``sleep``), as the same user, in a pod with
``shareProcessNamespace: true``, so it may signal that process and nothing it does not already share.
An image without those applets (a distroless mirror set in ``ems:images``) gets a sidecar that says
so once and idles, rather than crash-looping the pod out of its Service; config changes then wait
for a rollout restart. A file briefly unreadable during the kubelet's swap is not a change.
Every ``interval_s`` it hashes the watched files (read through the kubelet's ``..data`` symlink) and,
when the hash changed, sends SIGHUP to every process named ``process``. Not the HTTP lifecycle API
(``--web.enable-lifecycle``): it would also serve ``/-/quit`` to every pod allowed to reach the TSDB.
"""

from __future__ import annotations

import shlex
from typing import Any, Sequence

from components.k8s_common import Resources, container

RELOADER_NAME = "config-reloader"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
"""Pod annotation naming the container ``kubectl logs``/``exec`` use without ``-c``: the main one, not the sidecar."""
RELOADER_RESOURCES = Resources("5m", "8Mi", "50m", "32Mi", ephemeral_request="1Mi", ephemeral_limit="8Mi")


def reload_script(process: str, files: Sequence[str], interval_s: int = 10) -> str:
    """The sidecar's POSIX sh script (busybox applets only): SIGHUP to ``process`` when ``files`` change."""
    if not files or interval_s < 1:
        raise ValueError("reload_script needs at least one file and an interval of 1 s or more")
    quoted = " ".join(shlex.quote(f) for f in files)
    name = shlex.quote(process)
    return f"""\
set -o pipefail
for applet in cat sha256sum pidof kill sleep; do
  command -v "$applet" >/dev/null || {{
    echo "config-reloader: this image has no $applet; config changes reach {name} only by a rollout restart" >&2
    exec tail -f /dev/null; }}
done
state() {{ cat {quoted} | sha256sum; }}
seen=$(state) || seen=unreadable
echo "config-reloader: watching {quoted} for {name}"
while sleep {interval_s}; do
  now=$(state) || continue
  [ "$now" = "$seen" ] && continue
  if pids=$(pidof {name}) && kill -HUP $pids; then
    seen=$now
    echo "config-reloader: files changed, SIGHUP sent to {name} ($pids)"
  else
    echo "config-reloader: files changed, {name} not running; trying again"
  fi
done
"""


def reloader_container(image: str, process: str, files: Sequence[str], mounts: Sequence[tuple[str, str]], *,
                       run_as_user: int, interval_s: int = 10) -> dict[str, Any]:
    """The hardened sidecar (image, user and read-only ``mounts`` of the main container) that runs :func:`reload_script`.

    Its pod needs ``shareProcessNamespace: true``."""
    return container(RELOADER_NAME, image, RELOADER_RESOURCES, command=["/bin/sh", "-c", reload_script(process, files, interval_s)],
                     mounts=mounts, run_as_user=run_as_user)
