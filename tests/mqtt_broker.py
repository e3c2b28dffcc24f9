"""The real mosquitto the MQTT tests run against (see labctl.mqtt.localbroker): free port,
generated config in tmp_path, optional password file and the shipped ACL, stop/restart on the
same port. A missing mosquitto fails the tests loudly; it never skips them."""

from __future__ import annotations

from labctl.mqtt.localbroker import SHIPPED_ACL, MosquittoBroker, free_port

__all__ = ["SHIPPED_ACL", "MosquittoBroker", "free_port"]
