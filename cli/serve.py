"""`edgegen serve`: run a device agent that answers text (and image) prompts over MQTT until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from edgegen.cli.flags import (
    add_broker_arguments,
    add_deprecated_alias,
    add_device_argument,
    add_device_id_argument,
    add_kernel_arguments,
    add_model_argument,
    broker_options,
    kernel_options,
)
from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.answer_store import AnswerStore
from edgegen.firmware_bridge.connection import parse_address
from edgegen.firmware_bridge.deploy.agent import DeployAgent, installed_engines, load_engine
from edgegen.firmware_bridge.deploy.keys import load_public_key
from edgegen.firmware_bridge.deploy.slots import DeviceStore
from edgegen.firmware_bridge.engines import ImageEngine, RuntimeImageEngine, RuntimeTextEngine, TextEngine
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.http_api import HttpApi, read_api_keys
from edgegen.firmware_bridge.service import DeviceService, ServiceConfig, serve
from edgegen.firmware_bridge.state_dir import default_state_dir
from edgegen.runtime.artifact.constants import MAX_SLOTS

log = logging.getLogger(__name__)
CONNECT_WARN_S = 10.0
# While the worker thread decodes (Python between tinygrad kernels), paho's network thread waits for the GIL to send
# each chunk: up to the switch interval, 5 ms by default. 1 ms keeps that wait small against a token's ~100+ ms.
SWITCH_INTERVAL_S = 0.001


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_id_argument(parser, "this device's id: its topic subtree and MQTT client id", required=True)
    parser.add_argument("--pool", help="also take requests sent to this pool (a shared subscription)")
    add_model_argument(parser, "a GGUF file", option=True)
    parser.add_argument("--image-model", nargs="?", const="default", default=None, metavar="FILE",
                        help="also answer image requests with this diffusion U-Net ('default' or no value: the "
                             "shipped MNIST U-Net)")
    add_device_argument(parser)
    add_deprecated_alias(parser, "--backend", "--device", dest="device", metavar="DEV")
    add_kernel_arguments(parser)
    parser.add_argument("--queue-size", type=int, default=8, help="requests that may wait; more get 'busy' (8)")
    parser.add_argument("--parallel", default="auto", metavar="N",
                        help=f"requests decoded together (continuous batching, 1-{MAX_SLOTS}; default auto: up to 4, "
                             "as many as the free memory holds with the model's KV caches; 1 with --kernels tinygrad)")
    parser.add_argument("--telemetry-interval-s", type=float, default=10.0, help="seconds between telemetry (10)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="where answers are remembered across restarts, so a request redelivered after a crash is "
                             "not generated twice (default: $XDG_STATE_HOME/edgegen/<device-id>, or "
                             "~/.local/state/edgegen/<device-id>; created with mode 0700)")
    parser.add_argument("--trust-key", type=Path, metavar="PUB",
                        help="accept model deployments (`edgegen deploy`) signed by this public key from `edgegen "
                             "keygen`; models, slots and partial transfers live under --state-dir")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the warm-up generation that compiles kernels before the device goes online")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="also answer OpenAI's HTTP API here (/v1/chat/completions, /v1/completions, /v1/models, "
                             "/health, /metrics), through the same queue and slots; works without a broker")
    parser.add_argument("--api-keys", metavar="FILE",
                        help="with --http: API keys, one per line; requests then need Authorization: Bearer KEY")
    add_broker_arguments(parser)


def run(args: argparse.Namespace, on_deploy_step: Callable[[str], None] | None = None) -> int:
    """`on_deploy_step`: the deploy agent's test-only fault hook (tests/bridge/faulty_edgegen.py passes it)."""
    options = broker_options(args)
    parallel = _parallel(args.parallel)
    http_address = parse_address(args.http, "--http") if args.http else None
    api_keys = read_api_keys(args.api_keys) if args.api_keys else None
    if args.queue_size < 1 or not args.telemetry_interval_s > 0:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"--queue-size must be >= 1 and --telemetry-interval-s > 0, "
                           f"got {args.queue_size} and {args.telemetry_interval_s}")
    topics.check_name(args.device_id)
    if args.pool is not None:
        topics.check_name(args.pool, "pool")
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    state_dir = args.state_dir or default_state_dir(args.device_id)
    config = ServiceConfig(args.device_id, pool=args.pool, queue_size=args.queue_size,
                           telemetry_interval_s=args.telemetry_interval_s, state_dir=state_dir)
    try:  # now, not after the minutes a model takes to load and warm up
        AnswerStore.open(state_dir, config.remembered_answers, config.remembered_answer_bytes).close()
    except (OSError, sqlite3.Error) as e:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"--state-dir {state_dir}: cannot keep answers there ({e})") \
            from e
    deploy = _open_deploy(args, state_dir) if args.trust_key is not None else None
    engine = RuntimeTextEngine.load(args.model, device=args.device, kernels=kernel_options(args), slots=parallel)
    config = dataclasses.replace(config, parallel=engine.slots)  # worker threads: one per slot
    if not args.no_warmup:
        # tinygrad compiles kernels on first use: pay that before announcing `online`, not on the first request.
        log.info("warming up %s", args.model)
        engine.warm_up()
    images: dict[str, ImageEngine] = {}
    if args.image_model is not None:
        image_engine = RuntimeImageEngine.load(None if args.image_model == "default" else args.image_model,
                                               device=args.device)
        if not args.no_warmup:
            image_engine.warm_up()
        images["default"] = image_engine
    texts: dict[str, TextEngine] = {"default": engine}
    if deploy is not None:  # committed deployments; a deployed "default" replaces --model
        # deployed models serve one request at a time for now: their health check measures memory against a plan
        # made for one sequence (docs/DEPLOY.md)
        installed = installed_engines(deploy[0], args.device, not args.no_warmup, kernel_options(args))
        texts.update(installed["text"])
        images.update(installed["image"])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    apis: list[HttpApi] = []

    def attach(service: DeviceService) -> None:
        if http_address is not None:
            apis.append(HttpApi(service, http_address, api_keys).start())
        if deploy is not None:
            DeployAgent(service, deploy[0], deploy[1],
                        partial(load_engine, device=args.device, kernels=kernel_options(args)), backend=args.device,
                        start_actions=deploy[2], on_step=on_deploy_step).start()

    def announce(service: DeviceService) -> None:
        http = f" and http://{apis[0].address[0]}:{apis[0].address[1]}" if apis else ""
        print(f"edgegen serve: device {args.device_id} serving {args.model} via {args.broker}{http}"
              + (f" (pool {args.pool})" if args.pool else "") + f", {engine.slots} at once", flush=True)

    try:
        serve(config, options, texts, images, stop=stop, setup=attach, ready=announce, connect_wait_s=CONNECT_WARN_S)
    finally:
        for api in apis:
            api.stop()
    return 0


def _parallel(value: str) -> int | None:
    """--parallel: "auto" (None: engines.auto_slots) or a count from 1 to MAX_SLOTS."""
    if value == "auto":
        return None
    if not value.isdigit() or not 1 <= int(value) <= MAX_SLOTS:
        raise RequestError(ErrorCode.INVALID_REQUEST,
                           f"--parallel must be auto or from 1 to {MAX_SLOTS}, got {value!r}")
    return int(value)


def _open_deploy(args: argparse.Namespace, state_dir: Path) -> tuple[DeviceStore, Any, list[dict[str, Any]]]:
    """The trusted key, the model store, and what its start did: a pending model left by a crash counts one crash
    (and rolls back at the limit) before any model is loaded."""
    key = load_public_key(args.trust_key)
    store = DeviceStore(state_dir)
    return store, key, store.on_start()
