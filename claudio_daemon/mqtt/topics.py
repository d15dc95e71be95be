"""Every topic Claudio owns, under one prefix (Frigate-style).

Kept in one place so the publisher, the command parser, Home Assistant discovery and the
README cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Availability payloads (also what Home Assistant is told to expect).
ONLINE = "online"
OFFLINE = "offline"
#: Switch state payloads for AWAY mode.
STATE_ON = "ON"
STATE_OFF = "OFF"


@dataclass(frozen=True)
class Topics:
    """Topic names derived from `topic_prefix` (and the HA discovery prefix)."""

    prefix: str
    discovery_prefix: str = "homeassistant"

    @property
    def available(self) -> str:
        """ "online" after connecting; "offline" as retained last will and on clean stop."""
        return f"{self.prefix}/available"

    @property
    def event(self) -> str:
        """Every detected clap pattern and sound as JSON; not retained."""
        return f"{self.prefix}/event"

    @property
    def alert(self) -> str:
        """AWAY-mode alerts as JSON; not retained."""
        return f"{self.prefix}/alert"

    @property
    def level(self) -> str:
        """Sound level in dBFS (a bare number) for tuning thresholds; not retained."""
        return f"{self.prefix}/level"

    @property
    def away_state(self) -> str:
        """AWAY mode "ON"/"OFF", retained so a new subscriber sees the current state."""
        return f"{self.prefix}/away/state"

    @property
    def away_set(self) -> str:
        """Command topic to arm/disarm AWAY mode."""
        return f"{self.prefix}/away/set"

    @property
    def claps(self) -> str:
        """Home Assistant event-entity topic: {"event_type": "claps_2", "count": 2}."""
        return f"{self.prefix}/claps"

    @property
    def sound(self) -> str:
        """Home Assistant event-entity topic: {"event_type": "<label>", "score": ...}."""
        return f"{self.prefix}/sound"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth/will topic; "online" means it wants discovery again."""
        return f"{self.discovery_prefix}/status"

    def discovery(self, component: str, node_id: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{node_id}/{object_id}/config"


def clap_event_type(count: int) -> str:
    """Event type of an N-clap pattern, shared by payloads and discovery's event_types."""
    return f"claps_{count}"
