"""EdgeAIForge's contracts: configuration, events, MQTT topics and payloads, manifests.

Pure pydantic models and functions; nothing here performs I/O.
"""
