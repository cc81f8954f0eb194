"""Virtual field devices, scenarios, fault injection and replay (see the simulators issue)."""
