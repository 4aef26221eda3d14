"""edgegen reference client for MicroPython boards (ESP32 class), on umqtt.simple (MQTT 3.1.1, QoS 1).

On the board: `import mip; mip.install("umqtt.simple")`, copy this file, then
    from umqtt_client import EdgegenClient
    client = EdgegenClient("192.168.1.10", "esp32-kitchen")   # broker address, this board's client id
    client.connect()
    for piece in client.generate("Is 21 C warm for a kitchen?", device="dev1", max_tokens=32):
        print(piece, end="")
MQTT 3.1.1 has no Response Topic or Correlation Data: the request names its answer topic in "reply_to" and answers
are matched by request "id". Protocol: firmware_bridge/README.md. Written for MicroPython; also runs on CPython.
"""
try:
    import ujson as json
except ImportError:
    import json
import time

from umqtt.simple import MQTTClient

ROOT = "edgegen/v1"
MAX_REQUEST_BYTES = 64 * 1024  # the device refuses larger requests (payload_too_large): check before sending
POLL_MS = 10


def _ticks_ms():
    return time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)


def _sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


class EdgegenError(Exception):
    """An error answer from the device: `code` is machine-readable (busy, prompt_too_long, ...)."""

    def __init__(self, code, message):
        super().__init__(code + ": " + message)
        self.code = code
        self.message = message


class EdgegenClient:
    def __init__(self, server, client_id, port=1883, user=None, password=None, ssl=False, ssl_params=None,
                 timeout_ms=300000):
        self.client_id = client_id
        self.reply_to = ROOT + "/clients/" + client_id + "/responses"
        self.timeout_ms = timeout_ms
        self.mqtt = MQTTClient(client_id, server, port=port, user=user, password=password, keepalive=60,
                               ssl=ssl, ssl_params=ssl_params or {})
        self.mqtt.set_callback(self._on_message)
        self._inbox = []
        self._count = 0

    def connect(self):
        self.mqtt.connect()
        self.mqtt.subscribe(self.reply_to, qos=1)

    def close(self):
        self.mqtt.disconnect()

    def _on_message(self, topic, msg):
        self._inbox.append(msg)

    def _send(self, kind, target, request):
        payload = json.dumps(request)
        if len(payload) > MAX_REQUEST_BYTES:
            raise EdgegenError("payload_too_large", "request is %d bytes, limit %d" % (len(payload),
                                                                                       MAX_REQUEST_BYTES))
        self.mqtt.publish(target + "/requests/" + kind, payload, qos=1)

    def _target(self, device, pool):
        return ROOT + ("/devices/" + device if device else "/pools/" + pool)

    def generate(self, prompt, device=None, pool=None, max_tokens=64, model="default", temperature=0.0,
                 stream=True):
        """Yield text pieces in order; the final message is kept in `self.result` (text, finish_reason, stats)."""
        self._count += 1
        request_id = "%s-%d-%d" % (self.client_id, _ticks_ms(), self._count)
        self.result = None
        self._send("text", self._target(device, pool), {
            "v": 1, "id": request_id, "model": model, "prompt": prompt, "max_tokens": max_tokens,
            "stream": stream, "sampling": {"temperature": temperature}, "reply_to": self.reply_to})
        next_seq = 0
        started = _ticks_ms()
        while _ticks_ms() - started < self.timeout_ms:
            self.mqtt.check_msg()  # handles one incoming message (and its PUBACK) if there is one
            if not self._inbox:
                _sleep_ms(POLL_MS)
                continue
            message = json.loads(self._inbox.pop(0))
            if message.get("id") != request_id:
                continue  # a late answer to an earlier request
            kind = message["type"]
            if kind == "error":
                raise EdgegenError(message["code"], message["message"])
            if kind == "final":
                self.result = message
                if not stream:
                    yield message["text"]
                return
            if message["seq"] == next_seq:  # a device that restarted sends from seq 0 again: skip repeats
                next_seq += 1
                yield message["text"]
        raise EdgegenError("timeout", "no final answer to %s within %d ms" % (request_id, self.timeout_ms))
