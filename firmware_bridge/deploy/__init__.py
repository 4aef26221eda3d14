"""Signed, resumable, health-checked model deployment to boards (issue 15): the library without MQTT.

Modules: `errors` (DeployError and its codes), `keys` (Ed25519 key pairs), `manifest` (what is signed), `transfer`
(a partial file with a persisted block bitmap), `slots` (the device's model slots and trusted versions),
`preflight` (will it fit before a byte moves), `health` (the golden check before commit), `bundle` (offline
install from a tar). The MQTT side (protocol, server, agent) builds on these; docs/DEPLOY.md describes both.
"""
