#!/bin/sh
# Prompt an edgegen device from a shell with the Mosquitto command-line clients (MQTT 5).
#   firmware_bridge/clients/prompt.sh DEVICE "prompt"            # stream tokens (mosquitto_sub + mosquitto_pub)
#   ONESHOT=1 firmware_bridge/clients/prompt.sh DEVICE "prompt"  # one request, one answer (mosquitto_rr)
# Environment: HOST (127.0.0.1), PORT (1883), MAX_TOKENS (64); add -u/-P/--cafile to the commands for a secured
# broker. The prompt must not contain double quotes or backslashes (no JSON escaping here).
set -eu
DEVICE=${1:?usage: prompt.sh DEVICE PROMPT}
PROMPT=${2:?usage: prompt.sh DEVICE PROMPT}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-1883}
MAX_TOKENS=${MAX_TOKENS:-64}
ID="sh-$$-$(date +%s)"
REQUEST_TOPIC="edgegen/v1/devices/$DEVICE/requests/text"
REPLY_TOPIC="edgegen/v1/clients/$ID/responses"

if [ -n "${ONESHOT:-}" ]; then
  # "stream": false makes the device send only the final message, so mosquitto_rr's single reply is the answer.
  mosquitto_rr -V mqttv5 -h "$HOST" -p "$PORT" -q 1 -t "$REQUEST_TOPIC" -e "$REPLY_TOPIC" -W 600 \
    -m "{\"v\":1,\"id\":\"$ID\",\"prompt\":\"$PROMPT\",\"max_tokens\":$MAX_TOKENS,\"stream\":false}"
  exit 0
fi

# Subscribe first (mosquitto_sub -d reports the SUBACK), then publish with the MQTT 5 Response Topic property;
# print each chunk's text until the final message. stdbuf: the debug lines must not sit in a buffer.
FIFO=$(mktemp -u)
mkfifo "$FIFO"
stdbuf -oL mosquitto_sub -d -V mqttv5 -h "$HOST" -p "$PORT" -q 1 -t "$REPLY_TOPIC" -W 600 -F '%p' > "$FIFO" &
SUB=$!
trap 'kill $SUB 2>/dev/null; rm -f "$FIFO"' EXIT
STATUS=0
while IFS= read -r line; do
  case "$line" in
    *"received SUBACK"*)
      mosquitto_pub -V mqttv5 -h "$HOST" -p "$PORT" -q 1 -t "$REQUEST_TOPIC" -D publish response-topic "$REPLY_TOPIC" \
        -m "{\"v\":1,\"id\":\"$ID\",\"prompt\":\"$PROMPT\",\"max_tokens\":$MAX_TOKENS}" ;;
    *'"type":"chunk"'*) printf '%s' "$(printf '%s' "$line" | sed -e 's/.*"text":"\(.*\)"}$/\1/' -e 's/\\"/"/g')" ;;
    *'"type":"final"'*) printf '\n'; break ;;
    *'"type":"error"'*) printf '%s\n' "$line" >&2; STATUS=2; break ;;
  esac
done < "$FIFO"
exit $STATUS
