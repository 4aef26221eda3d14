"""Ed25519 keys and the signed manifest: building, signing, verifying, and strict parsing of all a device reads."""
from __future__ import annotations

import base64
import json
import math
import stat

import pytest
from deploy_lib_helpers import FAKE_GOLDEN, fake_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegen.firmware_bridge.deploy import keys
from edgegen.firmware_bridge.deploy.errors import DeployError
from edgegen.firmware_bridge.deploy.manifest import (
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    Manifest,
    SignedManifest,
    build_manifest,
    sign,
    verify,
)


def signed_for(keypair, data: bytes = b"x" * 5000, **kw) -> SignedManifest:
    return sign(fake_manifest(data, **kw), keys.load_private_key(keypair[0]))


# ---- keys --------------------------------------------------------------------------------------------------------
def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(tmp_path):
    priv, pub = keys.generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    kid = keys.key_id(keys.load_public_key(pub))
    assert kid == keys.key_id(keys.load_private_key(priv).public_key()) and len(kid) == 16
    before = priv.read_bytes()
    with pytest.raises(DeployError, match="already exists") as e:
        keys.generate_keypair(tmp_path / "k")
    assert e.value.code == "bad_state" and priv.read_bytes() == before


def test_load_key_errors_name_the_file(tmp_path, keypair):
    with pytest.raises(DeployError, match="cannot read the public key"):
        keys.load_public_key(tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(DeployError, match="is not a PEM public key"):
        keys.load_public_key(bad)
    with pytest.raises(DeployError, match="is not an unencrypted PEM private key"):
        keys.load_private_key(keypair[1])  # the public file where the private one belongs
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = tmp_path / "p256.pem"
    p256.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(DeployError, match="expected Ed25519"):
        keys.load_public_key(p256)


# ---- building and verifying --------------------------------------------------------------------------------------
def test_build_manifest_from_a_real_file(tiny_models, keypair):
    good, _ = tiny_models
    m = build_manifest(good, "tiny", 3, golden=FAKE_GOLDEN, block_size=4096, baseline=12.5)
    data = good.read_bytes()
    assert m.file_size == len(data) and m.n_blocks == math.ceil(len(data) / 4096)
    assert m.block_range(m.n_blocks - 1) == ((m.n_blocks - 1) * 4096, len(data) - (m.n_blocks - 1) * 4096)
    assert m.architecture == "qwen2" and "Q8_0" in m.tensor_types and m.kind == "text"
    assert m.plan["weights_bytes"] > 0 and m.plan["total_bytes"] > m.plan["weights_bytes"]
    signed = sign(m, keys.load_private_key(keypair[0]))
    assert signed.key_id == signed.manifest.key_id == keys.key_id(keys.load_public_key(keypair[1]))
    again = SignedManifest.from_json(signed.to_json())
    assert again == signed
    assert verify(again, keys.load_public_key(keypair[1]), trusted_version=2) == signed.manifest


def test_default_block_size_fits_broker_limits():
    assert DEFAULT_BLOCK_SIZE == 64 * 1024 <= MAX_BLOCK_SIZE // 2  # half a 128 KiB packet cap, for MQTT headers


def test_verify_refuses_each_reason(keypair, other_keypair):
    pub = keys.load_public_key(keypair[1])
    signed = signed_for(keypair)
    with pytest.raises(DeployError) as e:
        verify(signed_for(other_keypair), pub)
    assert e.value.code == "untrusted_key" and e.value.details["trusted_key_id"] == keys.key_id(pub)
    forged = SignedManifest(signed.manifest, base64.b64encode(b"\x00" * 64).decode(), signed.key_id)
    with pytest.raises(DeployError) as e:
        verify(forged, pub)
    assert e.value.code == "bad_signature"
    with pytest.raises(DeployError) as e:
        verify(signed, pub, now=signed.manifest.expires)
    assert e.value.code == "expired" and e.value.details["expires"] == signed.manifest.expires
    for trusted in (1, 5):  # the same version is not a rise either
        with pytest.raises(DeployError) as e:
            verify(signed, pub, trusted_version=trusted)
        assert e.value.code == "downgrade" and e.value.details == {"version": 1, "trusted_version": trusted}
    assert verify(signed, pub, trusted_version=0).version == 1


def test_altered_field_breaks_the_signature(keypair):
    pub = keys.load_public_key(keypair[1])
    d = json.loads(signed_for(keypair).to_json())
    d["manifest"]["version"] = 99  # a valid manifest, but not the one that was signed
    with pytest.raises(DeployError) as e:
        verify(SignedManifest.from_dict(d), pub)
    assert e.value.code == "bad_signature"


# ---- strict parsing ----------------------------------------------------------------------------------------------
def _manifest_dict(keypair) -> dict:
    return json.loads(signed_for(keypair).to_json())


BAD_FIELDS = [
    ("version", 0, "version=0 must be an integer in"),
    ("version", True, "version=True must be an integer"),
    ("version", 1.0, "version=1.0 must be an integer"),
    ("name", "a/b", "name='a/b' must be a string matching"),
    ("name", "", "name='' must be a string"),
    ("kind", "video", "kind='video' must be one of text, image"),
    ("file_sha256", "ab" * 31, "file_sha256=.* must be 64 lowercase hex digits"),
    ("file_sha256", "AB" * 32, "must be 64 lowercase hex digits"),
    ("file_size", 0, "file_size=0 must be an integer in"),
    ("file_size", 6000, r"block_sha256 has 5 entries: expected ceil\(6000 / 1024\) = 6"),
    ("block_size", 512, "block_size=512 must be an integer in"),
    ("block_size", 10 ** 6, "block_size=1000000 must be an integer in"),
    ("block_sha256", "x", "block_sha256 has str entries"),
    ("created", -1, "created=-1 must be an integer in"),
    ("expires", 0, "expires=0 must be after created"),
    ("golden", {"prompt": "a", "max_tokens": 4}, r"golden \(text\) fields: missing \['token_ids'\]"),
    ("golden", {"prompt": "a", "max_tokens": 2, "token_ids": [1, 2, 3]}, "golden.token_ids must be a list of at most"),
    ("golden", {"prompt": "a", "max_tokens": 2, "token_ids": [-1]}, r"golden.token_ids\[0\]=-1 must be an integer"),
    ("golden", {"prompt": "a", "max_tokens": 2, "token_ids": []}, "golden.token_ids is empty"),
    ("plan", {}, "plan fields: missing"),
    ("baseline_decode_tok_s", -3.0, "baseline_decode_tok_s=-3.0 must be null or a number"),
    ("baseline_decode_tok_s", "fast", "baseline_decode_tok_s='fast' must be null"),
    ("key_id", "0" * 15, "key_id='0{15}' must be 16 lowercase hex digits"),
    ("tensor_types", ["q8_0"], r"tensor_types\[0\]='q8_0' must be a string matching"),
    ("architecture", "Llama!", "architecture='Llama!' must be a string matching"),
    ("v", 2, "manifest v=2 is not supported: expected 1"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS, ids=[f"{f}={v!r:.20}" for f, v, _ in BAD_FIELDS])
def test_bad_field_is_bad_manifest_naming_it(keypair, field, value, message):
    d = _manifest_dict(keypair)
    d["manifest"][field] = value
    with pytest.raises(DeployError, match=message) as e:
        SignedManifest.from_dict(d)
    assert e.value.code == "bad_manifest"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("signature"), r"signed manifest fields: missing \['signature'\]"),
    (lambda d: d.__setitem__("extra", 1), r"unknown \['extra'\]"),
    (lambda d: d["manifest"].__setitem__("extra", 1), r"manifest fields: missing \[\], unknown \['extra'\]"),
    (lambda d: d.__setitem__("signature", "!!"), "is not valid base64"),
    (lambda d: d.__setitem__("signature", base64.b64encode(b"x" * 63).decode()), "decodes to 63 bytes"),
    (lambda d: d.__setitem__("key_id", "f" * 16), "differs from the manifest's key_id"),
    (lambda d: d.__setitem__("manifest", []), "manifest must be a JSON object, got list"),
])
def test_bad_envelope_is_bad_manifest(keypair, mutate, message):
    d = _manifest_dict(keypair)
    mutate(d)
    with pytest.raises(DeployError, match=message) as e:
        SignedManifest.from_dict(d)
    assert e.value.code == "bad_manifest"


@pytest.mark.parametrize(("text", "message"), [
    (b"\xff\xfe", "not valid JSON"), ("[1,", "not valid JSON"), ('{"v": NaN}', "NaN is not a JSON number"),
    ('{"v": 1, "v": 1}', "key 'v' appears twice"), ("[" * 100_000, "not valid JSON"), ("null", "got NoneType"),
])
def test_bad_json_is_bad_manifest(text, message):
    with pytest.raises(DeployError, match=message) as e:
        SignedManifest.from_json(text)
    assert e.value.code == "bad_manifest"


def test_image_golden_is_checked(keypair):
    d = json.loads(signed_for(keypair, kind="image").to_json())
    assert SignedManifest.from_dict(d).manifest.golden["verdict"] == 7
    d["manifest"]["golden"]["verdict"] = 10
    with pytest.raises(DeployError, match=r"golden.verdict=10 must be an integer in \[0, 9\]"):
        SignedManifest.from_dict(d)


def test_block_range_out_of_range():
    m = fake_manifest(b"y" * 3000)
    assert m.n_blocks == 3 and m.block_range(2) == (2048, 952)
    with pytest.raises(DeployError, match="block 3 out of range: expected 0..2"):
        m.block_range(3)


def test_manifest_dict_round_trip():
    m = fake_manifest(b"z" * 2048)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


# ---- property: no mutation of a signed manifest is ever accepted --------------------------------------------------
def _accepts(text: str | bytes, pub) -> object:
    """verify(from_json(text)): the Manifest, or the DeployError code; any other exception propagates (a bug)."""
    try:
        return verify(SignedManifest.from_json(text), pub, now=0)
    except DeployError as e:
        return e.code


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_byte_mutations_are_refused(keypair, data):
    pub = keys.load_public_key(keypair[1])
    signed = signed_for(keypair)
    raw = bytearray(signed.to_json().encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "delete":
            del raw[i]
        else:
            raw.insert(i, data.draw(st.integers(0, 255)))
    outcome = _accepts(bytes(raw), pub)
    # A mutation that leaves the same manifest (whitespace, an escape spelled differently) may verify: it is the
    # signed content. Anything else is refused, and only for these two reasons.
    assert outcome == signed.manifest or outcome in ("bad_signature", "bad_manifest"), outcome


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_field_mutations_are_refused(keypair, data):
    pub = keys.load_public_key(keypair[1])
    signed = signed_for(keypair)
    d = json.loads(signed.to_json())
    target = d["manifest"] if data.draw(st.booleans()) else d
    for key in ("golden", "plan"):  # reach into the nested objects too
        if target is d["manifest"] and data.draw(st.booleans()):
            target = d["manifest"][key]
            break
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    key = data.draw(st.sampled_from(sorted(target)))
    if action == "replace":
        target[key] = data.draw(JSON_VALUES)
    elif action == "delete":
        del target[key]
    else:
        target[data.draw(st.text(min_size=1, max_size=8))] = data.draw(JSON_VALUES)
    outcome = _accepts(json.dumps(d), pub)
    assert outcome == signed.manifest or outcome in ("bad_signature", "bad_manifest"), outcome
