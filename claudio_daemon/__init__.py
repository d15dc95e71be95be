"""Claudio: listens for claps and sounds and turns them into MQTT commands."""

__version__ = "0.1.0"
