"""The shipped MNIST U-Net behind the MQTT bridge: a digit prompt comes back as the PNG the runtime draws itself."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from bridge_helpers import connected_client, running_device
from cli_helpers import edgegen
from PIL import Image

from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.engines import RuntimeImageEngine
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import ImageRequest


@pytest.mark.slow
def test_real_unet_answers_digit_prompts_over_mqtt(broker, tmp_path) -> None:
    options = BrokerOptions("127.0.0.1", broker.port)
    engine = RuntimeImageEngine.load()  # the shipped models/weights/unet-mnist.gguf
    engine.steps = 4
    with running_device(options, image_engines={"default": engine}) as _, connected_client(options) as client:
        client.timeout_s = 600.0
        png = client.image("seven", device="dev1", seed=3)
        for prompt, code in (("banana", ErrorCode.INVALID_REQUEST), ("7", ErrorCode.INVALID_SAMPLING)):
            with pytest.raises(RequestError) as err:
                client.image(prompt, device="dev1", steps=5000 if prompt == "7" else None)
            assert err.value.code == code and ("not a digit" in str(err.value) or "steps" in str(err.value))
        again = client.image("7", device="dev1", seed=3)  # the device kept serving after the refusals
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (112, 112) and image.dtype == np.uint8 and image.std() > 10  # a drawing, not a blank
    assert again == png  # same digit, same seed: the same image
    direct = engine.generate(ImageRequest(id="direct", prompt="7", seed=3), threading.Event())
    assert direct.png == png
    # the CLI in its own process draws the same pixels (a warm graph cache or a cold one, the same answer)
    out = tmp_path / "seven.png"
    proc = edgegen("diffuse", "7", "--seed", "3", "--steps", "4", "--scale", "4", "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.asarray(Image.open(out)), image)
