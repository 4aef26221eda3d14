"""umqtt.simple's MQTTClient API (the part the reference client uses) over paho-mqtt speaking MQTT 3.1.1.

Not a fake broker or a mock: every call is a real MQTT 3.1.1 exchange with the test's Mosquitto, like umqtt's.
"""
from __future__ import annotations

import queue
import threading

import paho.mqtt.client as mqtt


class MQTTException(Exception):
    pass


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=False,
                 ssl_params=None):
        self.server, self.port, self.keepalive = server, port or 1883, keepalive
        self._paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                 clean_session=True)
        if user is not None:
            self._paho.username_pw_set(user, password)
        self._messages: queue.Queue = queue.Queue()
        self._callback = None
        self._paho.on_message = lambda c, u, msg: self._messages.put((msg.topic.encode(), msg.payload))

    def set_callback(self, f) -> None:
        self._callback = f

    def connect(self, clean_session=True) -> int:
        connected = threading.Event()
        self._paho.on_connect = lambda c, u, f, rc, p: connected.set()
        self._paho.connect(self.server, self.port, self.keepalive or 60)
        self._paho.loop_start()
        if not connected.wait(10):
            raise MQTTException("no CONNACK")
        return 0

    def subscribe(self, topic, qos=0) -> None:
        done = threading.Event()
        self._paho.on_subscribe = lambda c, u, mid, rcs, p: done.set()
        self._paho.subscribe(topic, qos)
        if not done.wait(10):
            raise MQTTException("no SUBACK")

    def publish(self, topic, msg, retain=False, qos=0) -> None:
        self._paho.publish(topic, msg, qos=qos, retain=retain).wait_for_publish(10)

    def check_msg(self) -> None:
        try:
            topic, payload = self._messages.get_nowait()
        except queue.Empty:
            return
        self._callback(topic, payload)

    def disconnect(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()
