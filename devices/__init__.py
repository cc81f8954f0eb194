"""Device profiles, payload decoders and the device registry.

`devices` is the base of the dependency graph: every other part may import it,
and it imports none of them.
"""

from devices.errors import DevicesError, ProfileError, RegistryError
from devices.model import DeviceEvent, Quality, Reading, StatusUpdate
from devices.profile import DeviceProfile, ProfileSet, load_profile, load_profiles

__all__ = [
    "DeviceEvent",
    "DeviceProfile",
    "DevicesError",
    "ProfileError",
    "ProfileSet",
    "Quality",
    "Reading",
    "RegistryError",
    "StatusUpdate",
    "load_profile",
    "load_profiles",
]
