#!/usr/bin/env bash
# Start a local Mosquitto with edgegen's settings on 127.0.0.1:${PORT:-1883}, persistence under ${STATE:-.mqtt-state}.
#   firmware_bridge/mosquitto/run_local.sh            # foreground; Ctrl-C stops it
#   PORT=1884 firmware_bridge/mosquitto/run_local.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${PORT:-1883}
STATE=${STATE:-$PWD/.mqtt-state}
mkdir -p "$STATE"
CONF="$STATE/edgegen.conf"
# Same settings as the shipped file, with this port and state folder; as root Mosquitto would drop to the
# `mosquitto` user, which cannot write $STATE.
sed -e "s|^listener 1883 127.0.0.1|listener $PORT 127.0.0.1|" \
    -e "s|^persistence_location .*|persistence_location $STATE/|" "$HERE/edgegen.conf" > "$CONF"
[ "$(id -u)" -eq 0 ] && echo "user root" >> "$CONF"
echo "edgegen: mosquitto on 127.0.0.1:$PORT (config $CONF)" >&2
exec "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$CONF"
