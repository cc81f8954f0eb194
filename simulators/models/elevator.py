"""Elevator: a car state machine with GB/T 24476-style telemetry, faults and events.

The car is simulated event by event rather than in fixed sub-steps: every
phase (running, levelling, doors opening, open, closing) ends at a known time,
calls arrive as a Poisson process, and each timer fires at its exact instant
inside `step`. `step` itself is called every `tick_s` (default 5 s) to look at
the outside world — power and incidents — so a power cut is noticed within a
tick while a trapped-passengers event still fires exactly `trapped_after_s`
after the car stopped.

Invariant: the car moves only with the doors closed. The one exception is an
unintended car movement (code 5), which happens only under that fault.

Telemetry goes out on every meaningful change of state (car state, door,
direction, landing, occupancy, load, mode, power, fault) and as a heartbeat
once per reporting interval; events go out the moment they happen.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from simulators.construct import emission
from simulators.model import DeviceModel, Emission, SimDevice
from simulators.models import register

if TYPE_CHECKING:
    from simulators.world import Incident, World

KG_PER_PASSENGER = 70.0
DOOR_ZONE_M = 0.15
"""Half-height of a landing's unlocking zone."""
RELEVEL_SPEED_MPS = 0.3
CREEP_SPEED_MPS = 0.4
ACCELERATION_MPS2 = 0.8

CLOSED, OPENING, OPEN, CLOSING = "closed", "opening", "open", "closing"


class Phase(Enum):
    """What the car is doing; the `state` metric is derived from it."""

    PARKED = "parked"  # at a landing, no demand
    RUNNING = "running"
    ARRIVING = "arriving"  # levelled at the landing, brake applied, doors about to open
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    HALTED = "halted"  # stopped by a fault or a power loss, wherever the car was


class FaultKind(Enum):
    HALT = "halt"  # the car stops where it is during a run
    HALT_LOADED = "halt_loaded"  # the same, on a run with passengers aboard
    DOOR_CLOSE = "door_close"
    DOOR_OPEN = "door_open"
    UCM = "ucm"
    RESTART = "restart"
    OVER_TOP = "over_top"
    OVER_BOTTOM = "over_bottom"


FAULT_KINDS: dict[int, FaultKind] = {
    1: FaultKind.HALT,  # safety circuit broken while running
    2: FaultKind.DOOR_CLOSE,
    3: FaultKind.DOOR_OPEN,
    4: FaultKind.HALT,  # stopped outside the unlocking zone
    5: FaultKind.UCM,
    6: FaultKind.HALT,  # motor run-time limiter
    7: FaultKind.HALT,  # floor position lost
    8: FaultKind.RESTART,
    9: FaultKind.OVER_TOP,
    10: FaultKind.OVER_BOTTOM,
    11: FaultKind.HALT_LOADED,  # a drill: strand a loaded car so passengers are trapped
}

# Random faults by relative frequency. Unintended car movement (5) is left out:
# it is rare enough that it happens here only when an incident injects it.
RANDOM_FAULT_WEIGHTS: dict[int, float] = {
    1: 10,
    2: 25,
    3: 25,
    4: 10,
    6: 5,
    7: 10,
    8: 10,
    9: 2.5,
    10: 2.5,
}

MODES: dict[int, str] = {
    42: "out_of_service",
    43: "inspection",
    44: "fire_return",
    45: "firefighter",
    46: "emergency_power",
    47: "earthquake",
}
FIRE_MODES = frozenset({"fire_return", "firefighter"})
LOCAL_POWER_OFF = 41
ALARM_BUTTON = 90

SNAPSHOT_METRICS = frozenset(
    {
        "state",
        "floor",
        "door",
        "direction",
        "speed_mps",
        "in_door_zone",
        "passengers_present",
        "service_mode",
        "power",
        "load_pct",
        "run_count",
        "fault_code",
    }
)
"""The metrics `Elevator.snapshot` knows, in a profile's own names."""

# Timers fire in time order; at the same instant, in this order.
TIMER_ORDER = (
    "phase",
    "release",
    "rescue",
    "repair",
    "trapped",
    "alarm",
    "door_shut",
    "call",
    "fault",
    "heartbeat",
)
# Timers are kept as {name: (time, rank in TIMER_ORDER)}: the smallest value fires first.
_PHASE, _RELEASE, _RESCUE, _REPAIR, _TRAPPED, _ALARM, _DOOR_SHUT, _CALL, _FAULT, _HEARTBEAT = range(
    len(TIMER_ORDER)
)
_NEVER = datetime.max.replace(tzinfo=UTC)
"""When no timer is set."""


def _after(t: datetime, seconds: float) -> datetime:
    # timedelta(0, seconds) is timedelta(seconds=seconds), without the keyword parsing
    # that makes up most of its cost.
    return t + timedelta(0, seconds)


def _bump(hour: float, centre: float, width_h: float) -> float:
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (d / width_h) ** 2)


def busyness(hour: float) -> float:
    """Call rate relative to an ordinary daytime hour: near zero at night,
    a morning up-peak, a lunch peak and an evening down-peak."""
    day = 1.0 / (1.0 + math.exp(-(hour - 6.5) / 0.5)) / (1.0 + math.exp(-(22.0 - hour) / 0.6))
    peaks = (
        1.6 * _bump(hour, 8.3, 0.7) + 0.6 * _bump(hour, 12.2, 0.6) + 1.2 * _bump(hour, 18.0, 0.8)
    )
    return 0.05 + 0.95 * day + peaks


PEAK_BUSYNESS = 1.05 * max(busyness(i / 20) for i in range(480))


@dataclass(frozen=True, slots=True)
class Run:
    """A trapezoidal-speed run from `from_m` to `to_m` (heights above the lowest landing)."""

    start: datetime
    from_m: float
    to_m: float
    vmax: float
    accel: float
    duration_s: float

    @classmethod
    def plan(cls, start: datetime, from_m: float, to_m: float, vmax: float, accel: float) -> Run:
        d = abs(to_m - from_m)
        if d <= vmax * vmax / accel:
            duration = 2.0 * math.sqrt(d / accel)
        else:
            duration = d / vmax + vmax / accel
        return cls(start, from_m, to_m, vmax, accel, max(duration, 0.1))

    def time_to_travel(self, distance_m: float) -> float:
        """Seconds from the start until the car has covered `distance_m` (capped at the run)."""
        d = min(distance_m, abs(self.to_m - self.from_m))
        a = self.accel
        peak = min(self.vmax, math.sqrt(abs(self.to_m - self.from_m) * a))
        ramp = peak / a
        if d <= 0.5 * a * ramp * ramp:
            return math.sqrt(2.0 * d / a)
        if d <= abs(self.to_m - self.from_m) - 0.5 * a * ramp * ramp:
            return ramp + (d - 0.5 * a * ramp * ramp) / peak
        return self.duration_s - math.sqrt(2.0 * max(abs(self.to_m - self.from_m) - d, 0.0) / a)

    @property
    def sign(self) -> int:
        return 1 if self.to_m >= self.from_m else -1

    def at(self, t: datetime) -> tuple[float, float]:
        """Position and speed at `t`."""
        # min() and max() spelt out (with their results for ties), as this runs for
        # every report of a moving car.
        duration = self.duration_s
        tau = (t - self.start).total_seconds()
        if tau < 0.0:
            tau = 0.0
        if duration < tau:
            tau = duration
        d = abs(self.to_m - self.from_m)
        a = self.accel
        peak = math.sqrt(d * a)
        if not peak < self.vmax:
            peak = self.vmax
        ramp = peak / a
        if tau < ramp:
            s, v = 0.5 * a * tau * tau, a * tau
        elif tau <= duration - ramp:
            s, v = 0.5 * peak * ramp + peak * (tau - ramp), peak
        else:
            left = duration - tau
            s, v = d - 0.5 * a * left * left, a * left
        if s < 0.0:
            s = 0.0
        if d < s:
            s = d
        sign = 1 if self.to_m >= self.from_m else -1
        return self.from_m + sign * s, 0.0 if v < 0.0 else v


@dataclass(slots=True)
class Stop:
    """A landing in the car's plan, with who gets on or off there."""

    index: int
    board: int = 0
    alight: int = 0


@dataclass(slots=True)
class Fault:
    code: int
    kind: FaultKind
    incident: Incident | None
    repair_s: float
    triggered: bool = False


@register("elevator")
class Elevator(DeviceModel):
    """One car in its shaft.

    Parameters (profile `simulator:` section, overridden by device attributes):
    `floors`, `lowest_floor`, `trips_per_hour` (at an ordinary daytime hour;
    rush hours are busier, nights quieter), `rated_speed_mps`, `rated_load_kg`,
    `floor_height_m`, `door_time_s`, `fault_rate_per_day`, `trapped_after_s`,
    `rescue_minutes` (how long a rescue team takes), `repair_minutes`
    (typical repair of a random fault), `tick_s`.

    Incidents of kind `elevator_fault` with param `code`: 1–11 inject that
    fault (11 strands a loaded car between floors), 41 cuts this car's power,
    42–47 switch the service mode, 90 presses the alarm button. The fault or
    mode lasts as long as the incident. The World's power cuts stop the car
    where it is.
    """

    def __init__(self, device: SimDevice, params: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(device, params, rng)
        self.floors = int(self.param("floors", 10))
        if self.floors < 1:
            raise ValueError(f"elevator {device.device_id}: floors must be at least 1")
        self.lowest_floor = int(self.param("lowest_floor", 1))
        self.floor_height_m = self.param("floor_height_m", 3.2)
        self.rated_speed_mps = self.param("rated_speed_mps", 2.5)
        self.rated_load_kg = self.param("rated_load_kg", 1000.0)
        self.capacity = max(1, int(self.rated_load_kg // 75.0))
        self.door_time_s = self.param("door_time_s", 3.0)
        self.trapped_after_s = self.param("trapped_after_s", 40.0)
        self.rescue_s = self.param("rescue_minutes", 25.0) * 60.0
        self.repair_s = self.param("repair_minutes", 50.0) * 60.0
        self.trips_per_s = self.param("trips_per_hour", 30.0) / 3600.0
        self.faults_per_s = self.param("fault_rate_per_day", 0.0) / 86400.0
        self.lobby = (
            (1 - self.lowest_floor)
            if self.lowest_floor <= 1 < self.lowest_floor + self.floors
            else 0
        )
        self._tick = timedelta(seconds=self.param("tick_s", 5.0))
        self._metrics = frozenset(device.profile.metrics)
        # Profiles with every metric of the snapshot (the shipped ones) take `_report`'s
        # fast path, which builds the change key and the body without the filtering.
        self._all_metrics = self._metrics >= SNAPSHOT_METRICS
        self._heartbeat = device.profile.reporting_interval
        self._loads: dict[int, float] = {}  # load_pct by passengers aboard

        # The car.
        self.phase = Phase.PARKED
        self.position_m = 0.0
        self.door = CLOSED
        self.run: Run | None = None
        self.passengers = 0
        self.run_count = 0
        self.plan: deque[Stop] = deque()
        self.evacuate = False  # everyone leaves at the next opening (after a fault, a cut, a mode)
        self.mode = "normal"
        self.fault: Fault | None = None
        self.power_on = True
        self.back_to_normal_due = False

        self._halting = False  # the current run ends in a HALT fault, not at a landing
        self._over_travel = False  # the current run overshoots a terminal landing
        self._ucm = False  # the current movement is an unintended one, doors open
        self._mode_incident: Incident | None = None
        self._local_power_off: Incident | None = None
        self._active: set[Incident] = set()
        self._timers: dict[str, tuple[datetime, int]] = {}
        self._next_due = _NEVER
        self._started = False
        self._last_key: tuple[Any, ...] | None = None
        self._out: list[Emission] = []
        self._world: World | None = None

    @property
    def tick(self) -> timedelta:
        return self._tick

    # --- derived state --------------------------------------------------------

    def _index_at(self, position_m: float) -> int:
        # min(max(round(…), 0), floors - 1), without three builtin calls.
        index: int = round(position_m / self.floor_height_m)
        if index < 0:
            return 0
        top = self.floors - 1
        return top if index > top else index

    def _in_zone_at(self, position_m: float) -> bool:
        return abs(position_m - self._index_at(position_m) * self.floor_height_m) <= DOOR_ZONE_M

    @property
    def index(self) -> int:
        """Landing index (0 = lowest) the car is at or nearest to."""
        return self._index_at(self.position_m)

    @property
    def floor(self) -> int:
        return self.lowest_floor + self.index

    @property
    def in_door_zone(self) -> bool:
        return self._in_zone_at(self.position_m)

    @property
    def state(self) -> str:
        if self.fault is not None and self.fault.triggered:
            return "fault"
        if self.phase is Phase.RUNNING:
            return "running"
        if self.phase is Phase.PARKED:
            return "idle"
        return "stopped"

    @property
    def in_service(self) -> bool:
        return (
            self.power_on
            and self.mode == "normal"
            and (self.fault is None or not self.fault.triggered)
        )

    def snapshot(self, t: datetime) -> dict[str, Any]:
        """The telemetry body at `t`, with the profile's metric names and enum words."""
        position, speed = self.position_m, 0.0
        direction = "stopped"
        if self.phase is Phase.RUNNING and self.run is not None:
            position, speed = self.run.at(t)
            direction = "up" if self.run.sign > 0 else "down"
        body: dict[str, Any] = {
            "state": self.state,
            "floor": self.lowest_floor + self._index_at(position),
            "door": self.door,
            "direction": direction,
            "speed_mps": round(speed, 2),
            "in_door_zone": self._in_zone_at(position),
            "passengers_present": self.passengers > 0,
            "service_mode": self.mode,
            "power": "mains" if self.power_on else "battery",
            "load_pct": round(
                min(self.passengers * KG_PER_PASSENGER / self.rated_load_kg * 100, 150), 1
            ),
            "run_count": self.run_count,
            "fault_code": self.fault.code if self.fault is not None and self.fault.triggered else 0,
        }
        return {k: v for k, v in body.items() if k in self._metrics}

    # --- the step -------------------------------------------------------------

    def step(self, t: datetime, world: World) -> list[Emission]:
        # Timers are set only inside step; `_next_due` is the earliest after each part of it.
        out: list[Emission] = []
        self._out = out
        self._world = world
        if not self._started:
            self._start(t)
            self._next_due = self._earliest()
        if self._next_due <= t:
            self._advance(t)
        if (
            world.incidents
            or world.power_cuts
            or self._active
            or not self.power_on
            or self._local_power_off is not None
        ):
            # Otherwise there is nothing outside to see: no incidents, power on as before.
            self._look_outside(t, world)
            self._next_due = self._earliest()
            if self._next_due <= t:
                self._advance(t)
        self._out = []
        return out

    def _earliest(self) -> datetime:
        return min(self._timers.values())[0] if self._timers else _NEVER

    def _start(self, t: datetime) -> None:
        self._started = True
        self.position_m = self.rng.randrange(self.floors) * self.floor_height_m
        # A unit installed some years ago: its run counter is well past zero.
        self.run_count = self.rng.randrange(10_000, 2_000_000)
        self._schedule_call(t)
        if self.faults_per_s > 0:
            self._timers["fault"] = (_after(t, self.rng.expovariate(self.faults_per_s)), _FAULT)
        self._report(t, force=True)

    def _advance(self, until: datetime) -> None:
        timers = self._timers
        while timers:
            # The earliest timer; of several at the same instant, the first in TIMER_ORDER.
            at, rank = min(timers.values())
            if at > until:
                self._next_due = at
                return
            name = TIMER_ORDER[rank]
            del timers[name]
            if rank == _PHASE:
                self._phase_done(at)
            else:
                self._fire(name, at)
            self._report(at)
        self._next_due = _NEVER

    def _fire(self, name: str, t: datetime) -> None:
        match name:
            case "phase":
                self._phase_done(t)
            case "call":
                self._call(t)
            case "heartbeat":
                self._report(t, force=True)
            case "release":
                self._release(t)
            case "rescue":
                self._rescue(t)
            case "repair":
                self._clear_fault(t)
            case "trapped":
                if self._confined():
                    self._event(t, "trapped_passengers", passengers=self.passengers)
            case "alarm":
                if self._confined():
                    self._event(t, "alarm_button")
            case "door_shut":
                if (
                    self.phase is Phase.HALTED
                    and self.passengers == 0
                    and not (self.fault is not None and self.fault.kind is FaultKind.DOOR_CLOSE)
                ):
                    self.door = CLOSED
            case "fault":
                self._random_fault(t)
            case _:
                raise AssertionError(f"unknown timer {name}")

    # --- the outside world ----------------------------------------------------

    def _look_outside(self, t: datetime, world: World) -> None:
        if world.incidents or self._active:
            active = world.incidents_for(
                "elevator_fault", self.device.device_id, self.device.district, t
            )
            for incident in active:
                if incident not in self._active:
                    self._incident_starts(t, incident)
            for incident in self._active - set(active):
                self._incident_ends(t, incident)
            self._active = set(active)

        on = world.power_on(self.device.district, t) and self._local_power_off is None
        if on != self.power_on:
            if on:
                self._power_back(t)
            else:
                self._power_lost(t)
            self._report(t)

    def _incident_starts(self, t: datetime, incident: Incident) -> None:
        code = int(incident.param("code", 0))
        if code in FAULT_KINDS:
            if self.fault is None or not self.fault.triggered:
                self.fault = Fault(code, FAULT_KINDS[code], incident, self.repair_s)
                self._arm(t)
        elif code in MODES:
            self._enter_mode(t, incident, code)
        elif code == LOCAL_POWER_OFF:
            self._local_power_off = incident
        elif code == ALARM_BUTTON:
            self._event(t, "alarm_button")
        else:
            raise ValueError(
                f"elevator_fault incident for {self.device.device_id}: code {code} is not a fault "
                f"(1-11), power-off (41), mode (42-47) or alarm (90) code"
            )
        self._report(t)

    def _incident_ends(self, t: datetime, incident: Incident) -> None:
        if self.fault is not None and self.fault.incident == incident:
            if self.fault.triggered:
                self._clear_fault(t)
            else:
                self.fault = None
        if self._mode_incident == incident:
            self._leave_mode(t)
        if self._local_power_off == incident:
            self._local_power_off = None
        self._report(t)

    def _power_lost(self, t: datetime) -> None:
        self.power_on = False
        self._event(t, "main_power_off")
        self._halt(t)
        self.back_to_normal_due = True

    def _power_back(self, t: datetime) -> None:
        self.power_on = True
        if self.fault is None or not self.fault.triggered:
            self._resume(t)

    # --- calls and trips ------------------------------------------------------

    def _schedule_call(self, t: datetime) -> None:
        if self.trips_per_s > 0 and self.floors > 1:
            # Thinning: candidates at the peak rate, each kept with busyness/peak.
            self._timers["call"] = (
                _after(t, self.rng.expovariate(self.trips_per_s * PEAK_BUSYNESS)),
                _CALL,
            )

    def _call(self, t: datetime) -> None:
        self._schedule_call(t)
        hour = self._hour(t)
        if self.rng.random() * PEAK_BUSYNESS > busyness(hour):
            return
        if not self.in_service or len(self.plan) >= 12:
            return  # nobody answers; people take the stairs
        origin, destination = self._trip(hour)
        rush = 7.0 <= hour < 10.0 or 16.5 <= hour < 19.5
        weights = (35, 25, 15, 12, 8, 5) if rush else (60, 22, 10, 5, 2, 1)
        riders = self.rng.choices(range(1, 7), weights)[0]
        self.plan.append(Stop(origin, board=riders))
        self.plan.append(Stop(destination, alight=riders))
        if self.phase is Phase.PARKED and self.door == CLOSED:
            self._next(t)

    def _trip(self, hour: float) -> tuple[int, int]:
        rng = self.rng
        others = [i for i in range(self.floors) if i != self.lobby]
        if 7.0 <= hour < 10.0:
            up, down = 0.75, 0.15
        elif 16.5 <= hour < 19.5:
            up, down = 0.2, 0.7
        else:
            up, down = 0.4, 0.4
        r = rng.random()
        if r < up:
            return self.lobby, rng.choice(others)
        if r < up + down:
            return rng.choice(others), self.lobby
        a, b = rng.sample(range(self.floors), 2)
        return a, b

    # --- the car's own phases -------------------------------------------------

    def _set_phase(self, phase: Phase, t: datetime | None = None, seconds: float = 0.0) -> None:
        self.phase = phase
        if t is None:
            self._timers.pop("phase", None)
        else:
            self._timers["phase"] = (_after(t, seconds), _PHASE)

    def _phase_done(self, t: datetime) -> None:
        match self.phase:
            case Phase.RUNNING:
                self._run_ends(t)
            case Phase.ARRIVING:
                self._open_doors(t)
            case Phase.OPENING:
                self.door = OPEN
                self._board(t)
                self._set_phase(Phase.OPEN, t, self._dwell())
                if (
                    self.fault is not None
                    and self.fault.kind is FaultKind.UCM
                    and not self.fault.triggered
                ):
                    # The brake slips while the doors stand open.
                    self._set_phase(Phase.OPEN, t, self.rng.uniform(0.5, 2.0))
            case Phase.OPEN:
                self._doors_open_done(t)
            case Phase.CLOSING:
                self.door = CLOSED
                self._next(t)
            case Phase.PARKED | Phase.HALTED:
                pass

    def _dwell(self) -> float:
        return 2.5 + self.rng.uniform(0.0, 2.0)

    def _board(self, t: datetime) -> None:
        """People get off and on at the landing the doors have just opened at."""
        if self.evacuate:
            self.passengers = 0
            self.evacuate = False
        while self.plan and self.plan[0].index == self.index and self.in_service:
            stop = self.plan.popleft()
            self.passengers = min(max(self.passengers - stop.alight + stop.board, 0), self.capacity)

    def _doors_open_done(self, t: datetime) -> None:
        fault = self.fault
        if fault is not None and not fault.triggered and fault.kind is FaultKind.UCM:
            self._unintended_movement(t)
            return
        if self.in_service and self.plan and self.plan[0].index == self.index:
            self._report(t)  # the open door, before the new riders step in
            self._board(t)
            self._set_phase(Phase.OPEN, t, self._dwell())
            return
        if self.mode in FIRE_MODES and self.index == self.lobby and self.passengers == 0:
            self._set_phase(Phase.PARKED)  # fire recall: parked at the lobby, doors open
            return
        if fault is not None and not fault.triggered and fault.kind is FaultKind.DOOR_CLOSE:
            self._trigger(t)
            self._set_phase(Phase.HALTED)
            self._check_confinement(t)
            return
        self.door = CLOSING
        self._set_phase(Phase.CLOSING, t, self.door_time_s)

    def _open_doors(self, t: datetime) -> None:
        fault = self.fault
        if fault is not None and not fault.triggered and fault.kind is FaultKind.DOOR_OPEN:
            self._trigger(t)
            self._set_phase(Phase.HALTED)
            self._check_confinement(t)
            return
        self.door = OPENING
        self._set_phase(Phase.OPENING, t, self.door_time_s)

    def _target(self) -> int | None:
        """The landing the car should go to next, or None to park."""
        if self.mode in FIRE_MODES:
            return self.lobby
        if self.evacuate and self.passengers > 0:
            return self.index
        if not self.in_door_zone:
            return self.index  # level to the nearest landing first
        if self.mode != "normal":
            return None
        return self.plan[0].index if self.plan else None

    def _next(self, t: datetime) -> None:
        """Doors are closed: go on with the plan, or park."""
        if not self.power_on or (self.fault is not None and self.fault.triggered):
            self._set_phase(Phase.HALTED)
            return
        if (
            self.back_to_normal_due
            and self.mode == "normal"
            and self.passengers == 0
            and self.in_door_zone
        ):
            self.back_to_normal_due = False
            self._event(t, "back_to_normal")
        target = self._target()
        if target is None:
            self._set_phase(Phase.PARKED)
        elif target == self.index and self.in_door_zone:
            self._open_doors(t)
        else:
            self._start_run(t, target)

    def _start_run(self, t: datetime, target: int) -> None:
        if self.door != CLOSED:
            raise AssertionError(
                f"elevator {self.device.device_id} would move with the door {self.door}"
            )
        fault = self.fault
        if fault is not None and not fault.triggered and fault.kind is FaultKind.RESTART:
            self._trigger(t)
            self._set_phase(Phase.HALTED)
            self._check_confinement(t)
            return
        to_m = target * self.floor_height_m
        self._over_travel = False
        over_top = fault is not None and fault.kind is FaultKind.OVER_TOP
        over_bottom = fault is not None and fault.kind is FaultKind.OVER_BOTTOM
        if (
            fault is not None
            and not fault.triggered
            and ((over_top and target == self.floors - 1) or (over_bottom and target == 0))
        ):
            overshoot = self.rng.uniform(0.25, 0.5)
            to_m += overshoot if over_top else -overshoot
            self._over_travel = True
        distance = abs(to_m - self.position_m)
        speed = self.rated_speed_mps if distance > self.floor_height_m / 2 else RELEVEL_SPEED_MPS
        self.run = Run.plan(t, self.position_m, to_m, speed, ACCELERATION_MPS2)
        self.run_count += 1
        self._ucm = False
        duration = self.run.duration_s
        self._halting = (
            fault is not None
            and not fault.triggered
            and (
                fault.kind is FaultKind.HALT
                or (fault.kind is FaultKind.HALT_LOADED and self.passengers > 0)
            )
        )
        ends = self.rng.uniform(0.3, 0.7) * duration if self._halting else duration
        self._set_phase(Phase.RUNNING, t, ends)

    def _run_ends(self, t: datetime) -> None:
        run = self.run
        assert run is not None
        self.position_m, _ = run.at(t)
        if self._ucm and self.fault is not None and not self.fault.triggered:
            self._trigger(t)  # out of the unlocking zone, doors open: detected
            self._set_phase(Phase.RUNNING, run.start, run.duration_s)
            return
        self.run = None
        if self._ucm:
            self._ucm = False
            self._set_phase(Phase.HALTED)
            self._check_confinement(t)
            if self.fault is None and self.power_on:
                self._resume(t)  # repaired while it was still creeping
            return
        if self._halting:
            self._halting = False
            self._halt_fault(t)
            return
        if self._over_travel:
            self._over_travel = False
            self._set_phase(Phase.HALTED)
            self._trigger(t)
            self._check_confinement(t)
            return
        self.position_m = run.to_m
        self._set_phase(Phase.ARRIVING, t, 0.8)

    # --- faults -------------------------------------------------------------

    def _random_fault(self, t: datetime) -> None:
        self._timers["fault"] = (_after(t, self.rng.expovariate(self.faults_per_s)), _FAULT)
        if self.fault is not None:
            return
        codes = list(RANDOM_FAULT_WEIGHTS)
        code = self.rng.choices(codes, [RANDOM_FAULT_WEIGHTS[c] for c in codes])[0]
        repair = self.repair_s * self.rng.uniform(0.4, 1.8)
        self.fault = Fault(code, FAULT_KINDS[code], None, repair)
        self._arm(t)

    def _arm(self, t: datetime) -> None:
        """A new fault shows at once if the car is doing what it breaks, else at the next chance."""
        fault = self.fault
        assert fault is not None
        if (
            self.phase is Phase.RUNNING
            and not self._ucm
            and (
                fault.kind is FaultKind.HALT
                or (fault.kind is FaultKind.HALT_LOADED and self.passengers > 0)
            )
        ):
            self._halt_fault(t)

    def _trigger(self, t: datetime) -> None:
        fault = self.fault
        assert fault is not None
        fault.triggered = True
        self.back_to_normal_due = True
        self.plan.clear()
        self.evacuate = self.passengers > 0
        if fault.incident is None:
            self._timers["repair"] = (_after(t, fault.repair_s), _REPAIR)
        name = self.device.profile.event_by_code.get(fault.code)
        if name is not None and fault.code != 11:
            self._event(t, name)

    def _halt_fault(self, t: datetime) -> None:
        """The car stops where it is in the shaft."""
        fault = self.fault
        assert fault is not None
        if self.run is not None:
            self.position_m, _ = self.run.at(t)
        self.run = None
        self._halting = False
        if fault.kind is FaultKind.HALT_LOADED and self.in_door_zone:
            # A drill of trapped passengers: the car stops clear of the landing.
            shift = 0.5 if self.index < self.floors - 1 else -0.5
            self.position_m = self.index * self.floor_height_m + shift
        self._set_phase(Phase.HALTED)
        self._trigger(t)
        if not self.in_door_zone and fault.code != 4:
            self._event(t, "stopped_outside_unlocking_zone")
        self._check_confinement(t)

    def _unintended_movement(self, t: datetime) -> None:
        """The car creeps off the landing with the doors open until the UCM device stops it.

        The monitor sees the fault when the car leaves the unlocking zone.
        """
        direction = self.rng.choice((-1, 1))
        if self.index == 0:
            direction = 1
        elif self.index == self.floors - 1:
            direction = -1
        to_m = self.position_m + direction * self.rng.uniform(0.3, 1.0)
        self.run = Run.plan(t, self.position_m, to_m, CREEP_SPEED_MPS, ACCELERATION_MPS2)
        self._ucm = True
        self._set_phase(Phase.RUNNING, t, self.run.time_to_travel(DOOR_ZONE_M * 1.01))

    def _clear_fault(self, t: datetime) -> None:
        """Repaired: the car returns to service and lets anyone aboard out."""
        self._timers.pop("repair", None)
        self.fault = None
        if self.power_on:
            self._resume(t)

    # --- stopped cars, trapped passengers -----------------------------------

    def _halt(self, t: datetime) -> None:
        """Stop where the car is: a power loss."""
        if self.phase is Phase.HALTED:
            return  # already stopped by a fault; its timers stand
        if self.phase is Phase.RUNNING and self.run is not None:
            self.position_m, _ = self.run.at(t)
        self.run = None
        self._halting = self._over_travel = self._ucm = False
        if self.door in (OPENING, CLOSING):
            self.door = OPEN  # unpowered door panels are free to push
        self.plan.clear()
        self.evacuate = self.passengers > 0
        self._set_phase(Phase.HALTED)
        self._check_confinement(t)

    def _confined(self) -> bool:
        """Passengers are shut in a car that will not let them out."""
        jammed = (
            self.fault is not None
            and self.fault.triggered
            and self.fault.kind is FaultKind.DOOR_OPEN
        )
        return (
            self.phase is Phase.HALTED
            and self.passengers > 0
            and self.door == CLOSED
            and (jammed or not self.in_door_zone)
        )

    def _check_confinement(self, t: datetime) -> None:
        """Decide how the people in a halted car get out: by themselves, or rescued."""
        for name in ("release", "rescue", "trapped", "alarm"):
            self._timers.pop(name, None)
        if self.phase is not Phase.HALTED or self.passengers == 0:
            return
        if self._confined():
            self._timers["trapped"] = (_after(t, self.trapped_after_s), _TRAPPED)
            self._timers["alarm"] = (_after(t, self.rng.uniform(10.0, 60.0)), _ALARM)
            self._timers["rescue"] = (
                _after(t, self.rescue_s * self.rng.uniform(0.6, 1.4)),
                _RESCUE,
            )
        elif self.in_door_zone:
            # At a landing the car door can be opened by hand: they let themselves out.
            self._timers["release"] = (_after(t, self.rng.uniform(5.0, 20.0)), _RELEASE)
        else:
            # Doors open but the car is off the landing: too dangerous to climb out.
            self._timers["rescue"] = (
                _after(t, self.rescue_s * self.rng.uniform(0.6, 1.4)),
                _RESCUE,
            )

    def _release(self, t: datetime) -> None:
        if self.phase is not Phase.HALTED:
            return
        self.door = OPEN
        self.passengers = 0
        self.evacuate = False
        self._timers.pop("trapped", None)
        self._timers.pop("alarm", None)
        self._timers.pop("rescue", None)
        self._timers["door_shut"] = (_after(t, 30.0), _DOOR_SHUT)

    def _rescue(self, t: datetime) -> None:
        """The rescue team winds the car to the nearest landing by hand and opens the doors."""
        if self.phase is not Phase.HALTED:
            return
        if self.door == CLOSED:
            self.position_m = self.index * self.floor_height_m
            self._report(t)
        self._release(t)

    def _resume(self, t: datetime) -> None:
        """Power and controller are back: close the doors, re-level, carry on."""
        for name in ("release", "rescue", "trapped", "alarm", "door_shut"):
            self._timers.pop(name, None)
        if self.phase not in (Phase.HALTED, Phase.PARKED):
            return
        if self.door != CLOSED:
            self.door = CLOSING
            self._set_phase(Phase.CLOSING, t, self.door_time_s)
        else:
            self._next(t)

    # --- service modes --------------------------------------------------------

    def _enter_mode(self, t: datetime, incident: Incident, code: int) -> None:
        self._mode_incident = incident
        self.mode = MODES[code]
        self._event(t, self.device.profile.event_by_code.get(code, ""))
        self.plan.clear()
        self.evacuate = self.passengers > 0
        self.back_to_normal_due = True
        if self.phase is Phase.PARKED and self.door == CLOSED and self.power_on:
            self._next(t)

    def _leave_mode(self, t: datetime) -> None:
        self._mode_incident = None
        self.mode = "normal"
        if self.phase is Phase.PARKED and self.power_on:
            self._resume(t)

    # --- output ---------------------------------------------------------------

    def _hour(self, t: datetime) -> float:
        assert self._world is not None
        return self._world.local_hour(t)

    def _event(self, t: datetime, name: str, **extra: Any) -> None:
        spec = self.device.profile.events.get(name)
        if spec is None:
            return
        detail: dict[str, Any] = {"floor": self.floor, "in_door_zone": self.in_door_zone}
        detail.update(extra)
        self._out.append(Emission(t, "event", {"type": name, "code": spec.code, "detail": detail}))

    def _report(self, t: datetime, force: bool = False) -> None:
        """Telemetry when anything but the speed changed (or `force`); the heartbeat restarts.

        While the car runs, passing landings and door zones are not changes either.
        """
        if not self._all_metrics:
            body = self.snapshot(t)
            key: tuple[Any, ...] = tuple(
                v
                for k, v in body.items()
                if k != "speed_mps"
                and not (self.phase is Phase.RUNNING and k in ("floor", "in_door_zone"))
            )
            if force or key != self._last_key:
                self._last_key = key
                self._out.append(Emission(t, "telemetry", body))
                self._timers["heartbeat"] = (t + self._heartbeat, _HEARTBEAT)
            return
        # The same as above for a profile with every snapshot metric, called on every
        # timer of every car: the key is built from the state without the body's dict.
        position, speed, direction = self.position_m, 0.0, "stopped"
        running = self.phase is Phase.RUNNING
        if running and self.run is not None:
            position, speed = self.run.at(t)
            direction = "up" if self.run.sign > 0 else "down"
        fault = self.fault
        if fault is not None and fault.triggered:
            state, fault_code = "fault", fault.code
        else:
            fault_code = 0
            state = "running" if running else "idle" if self.phase is Phase.PARKED else "stopped"
        power = "mains" if self.power_on else "battery"
        passengers = self.passengers
        load = self._loads.get(passengers)
        if load is None:  # round(x, 1) is slow, and there are only so many passengers
            load = self._loads[passengers] = round(
                min(passengers * KG_PER_PASSENGER / self.rated_load_kg * 100, 150), 1
            )
        if running:
            key = (
                state,
                self.door,
                direction,
                passengers > 0,
                self.mode,
                power,
                load,
                self.run_count,
                fault_code,
            )
            if not force and key == self._last_key:
                return
            index = self._index_at(position)
            in_zone = abs(position - index * self.floor_height_m) <= DOOR_ZONE_M
        else:
            index = self._index_at(position)
            in_zone = abs(position - index * self.floor_height_m) <= DOOR_ZONE_M
            key = (
                state,
                index,
                self.door,
                direction,
                in_zone,
                passengers > 0,
                self.mode,
                power,
                load,
                self.run_count,
                fault_code,
            )
            if not force and key == self._last_key:
                return
        self._last_key = key
        self._out.append(
            emission(
                t,
                "telemetry",
                {
                    "state": state,
                    "floor": self.lowest_floor + index,
                    "door": self.door,
                    "direction": direction,
                    "speed_mps": speed if speed == 0.0 else round(speed, 2),
                    "in_door_zone": in_zone,
                    "passengers_present": passengers > 0,
                    "service_mode": self.mode,
                    "power": power,
                    "load_pct": load,
                    "run_count": self.run_count,
                    "fault_code": fault_code,
                },
            )
        )
        self._timers["heartbeat"] = (t + self._heartbeat, _HEARTBEAT)
