"""Shared pieces of the bridge tests: an in-process device over FakeTextEngine and a connected client."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fake_engine import FakeTextEngine

from firmware_bridge.client import Client
from firmware_bridge.connection import BrokerOptions
from firmware_bridge.service import DeviceService, ServiceConfig


@contextlib.contextmanager
def running_device(options: BrokerOptions, engine: FakeTextEngine | None = None, device_id: str = "dev1",
                   image_engines: dict | None = None, **config) -> Iterator[tuple[DeviceService, FakeTextEngine]]:
    engine = engine or FakeTextEngine()
    service = DeviceService(ServiceConfig(device_id, **config), options, {"default": engine}, image_engines)
    service.start()
    try:
        assert service.wait_connected(10), "device did not connect"
        yield service, engine
    finally:
        service.stop()


@contextlib.contextmanager
def connected_client(options: BrokerOptions, **kwargs) -> Iterator[Client]:
    client = Client(options, timeout_s=30, **kwargs).connect()
    try:
        yield client
    finally:
        client.close()
