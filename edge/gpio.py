"""Digital inputs on a Raspberry Pi (gpiozero): part counters and a stack light as the machine's state.

For a machine without a PLC interface: a light barrier at the outfeed counts parts (``good``, and
``reject`` at the reject chute if there is one), and the machine's stack light tells its state.

Wiring (for the electrician; a Pi pin takes 3.3 V and nothing more)
    * Never connect 24 V (or 5 V) to a Pi pin: it destroys the Pi. Machine signals are 24 V.
    * A light barrier with a PNP 24 V output goes through an optocoupler module (24 V input side,
      3.3 V output side) or a 24 V -> 3.3 V level shifter. An optocoupler whose transistor pulls the
      Pi pin to GND needs a pull-up: ``pull_up=True`` uses the Pi's own (the input is then active
      when low, as in gpiozero).
    * Stack light: tap each lamp's 24 V through a relay contact or an optocoupler per colour, never
      directly. The stack light inputs use no resistor inside the Pi (gpiozero ``pull_up=None``):
      use modules that drive the pin both ways, or add a 10 kOhm pull-down (active high) or pull-up
      (then ``active_high=False``).
    * Keep GND of the 3.3 V side common with the Pi's GND, not with the machine's 0 V.

Pins are BCM numbers (17) or gpiozero pin names ("GPIO17", "BOARD11", "J8:11"), see
https://gpiozero.readthedocs.io/en/stable/recipes.html#pin-numbering. ``pin_factory="mock"`` runs on
any computer with simulated pins (gpiozero's MockFactory,
https://gpiozero.readthedocs.io/en/stable/api_pins.html#mock-pins); drive them with
``source.factory.pin(17).drive_high()``.

Counters count activations (rising edges of the active level). Each count is recorded with the time
of its edge as a monotonic counter. A part standing in the barrier when the agent starts is not
counted. ``start_counts`` continues from a count the caller kept; without it a counter restarts at 0
after an agent restart, which downstream reads as a counter reset (the gateway handles it): no part
is lost or counted twice either way.

Debouncing is done here, the same way on every pin library: an input's new level counts only once it
has held for ``bounce_s`` (chatter at a part's edge counts once, a spike shorter than ``bounce_s``
not at all; the count carries the time the level was reached). gpiozero's own ``bounce_time`` means
different things per pin library and MockFactory ignores it, so it is not used. ``bounce_s`` must be
shorter than the shortest real pulse and gap (a part passing the barrier, the space between parts).

Stack light -> state: the lit colour with the highest ``priority`` gives the state (``states``, PackML
numbers of OPC 30060; no light is ``"off"``). A state is recorded only after all lamps have been
steady for ``settle_s``, with the time they reached that pattern: lamps switching one after the
other (orange on, then green off) never produce a flash of a wrong state, and a lamp flashing for
less than ``settle_s`` is ignored. A stack light has no reason code: reason is always 0. A lamp that
blinks on purpose reads as changing states (or, with ``settle_s`` longer than a blink, as no change
until it stops blinking); wire such a lamp through an off-delay relay.

Colours are "green", "orange" (also written "yellow" or "amber": the same lamp) and "red"; other
colours (blue, white) work when ``states`` and ``priority`` name them.

A classroom without hardware drives the mock pins from the keyboard: ``drive_from_keys`` (``fieldlab edge --config
FILE --mock-keys``; ``key_action`` says what each key does). The ideal cycle time such a machine lacks comes from the
mapping file (edge/products.py).
"""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

from contract import PACKML
from contract.errors import ServiceError

from .batcher import Batcher

log = logging.getLogger("fieldlab.edge.gpio")

COUNTER_TAGS = ("good", "reject")
COLOUR_ALIASES = {"yellow": "orange", "amber": "orange"}
DEFAULT_STATES = {"red": 15, "orange": 12, "green": 4, "off": 2}  # Held, Suspended, Execute, Idle
NO_GPIO_HELP = ("for a trial without hardware set pin_factory: mock; on a Raspberry Pi install lgpio "
                "(sudo apt install python3-lgpio, or pip install lgpio in the agent's venv) and run the agent "
                "as a user in the gpio group")


def _colour(name) -> str:
    name = str(name).strip().lower()
    return COLOUR_ALIASES.get(name, name)


def _check_pin(pin) -> None:
    if isinstance(pin, bool) or not isinstance(pin, (int, str)) or (isinstance(pin, int) and pin < 0) \
            or (isinstance(pin, str) and not pin.strip()):
        raise ValueError(f"pin {pin!r}: write a BCM number like 17 or a gpiozero pin name like GPIO17")


@dataclass(frozen=True)
class CounterPin:
    """A part counter on one input, e.g. a light barrier at the machine's outfeed.

    ``pull_up`` as gpiozero's DigitalInputDevice: None = an external resistor or a module that drives
    the pin both ways, the input is then active when high if ``active_high``; True = the Pi's pull-up,
    active when low; False = the Pi's pull-down, active when high (``active_high`` is then not used,
    and ``pull_up=False`` with ``active_high=False`` is refused as contradictory)."""

    tag: str  # "good" or "reject"
    pin: int | str  # BCM number or a gpiozero pin name like "GPIO17"
    active_high: bool = True
    pull_up: bool | None = None
    bounce_s: float | None = 0.005

    def __post_init__(self):
        if self.tag not in COUNTER_TAGS:
            raise ValueError(f"counter tag {self.tag!r}: use good or reject")
        _check_pin(self.pin)
        if self.pull_up is False and self.active_high is False:
            raise ValueError("pull_up: false pulls the input low, so it is active when high; "
                             "leave active_high out or use an external pull-up (pull_up left out)")
        if self.bounce_s is not None and not self.bounce_s >= 0:
            raise ValueError(f"bounce {self.bounce_s!r}: must be 0 or more seconds")

    @property
    def active_state(self) -> bool:
        """The pin level (True = high) that means a part is there."""
        return self.active_high if self.pull_up is None else not self.pull_up


@dataclass(frozen=True)
class StackLight:
    """A stack light's lamps as the machine's state. Colour names are case-insensitive; "yellow" and
    "amber" are read as "orange". ``states`` given here override the defaults light by light."""

    pins: dict[str, int | str]  # colour -> pin
    states: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_STATES))  # colour or "off" -> PackML
    priority: tuple[str, ...] = ("red", "orange", "green")  # when several lamps are on, the first wins
    active_high: bool = True
    settle_s: float = 0.05  # a state is recorded once all lamps have been steady this long

    def __post_init__(self):
        if not isinstance(self.pins, dict) or not self.pins:
            raise ValueError("stack light: write colour -> pin, e.g. {green: 22, orange: 27, red: 23}")
        pins: dict[str, int | str] = {}
        for colour, pin in self.pins.items():
            c = _colour(colour)
            if c in pins:
                raise ValueError(f"stack light colour {colour!r} appears twice")
            _check_pin(pin)
            pins[c] = pin
        states = dict(DEFAULT_STATES)
        for light, code in (self.states or {}).items():
            if isinstance(code, bool) or not isinstance(code, int) or code not in PACKML:
                raise ValueError(f"stack light state for {light!r}: {code!r} is not a PackML state number "
                                 f"(e.g. 4 Execute, 12 Suspended, 15 Held)")
            states[_colour(light)] = code
        priority = tuple(_colour(c) for c in self.priority)
        for c in pins:
            if c not in states:
                raise ValueError(f"stack light colour {c!r} has no state: add it to states, e.g. {c}: 12")
            if c not in priority:
                raise ValueError(f"stack light colour {c!r} is not in priority {list(priority)}")
        if not self.settle_s >= 0:
            raise ValueError(f"settle {self.settle_s!r}: must be 0 or more seconds")
        object.__setattr__(self, "pins", pins)
        object.__setattr__(self, "states", states)
        object.__setattr__(self, "priority", priority)

    def state(self, lit: set[str] | frozenset[str]) -> int:
        """The state the given lit colours mean."""
        return next((self.states[c] for c in self.priority if c in lit and c in self.pins), self.states["off"])


class _Input:
    """One gpiozero input and its latest level, as seen on the event loop."""

    __slots__ = ("name", "pin", "light", "device", "level", "accepted", "changed_at", "timer", "filter_s")

    def __init__(self, name: str, pin, light: bool, filter_s: float = 0.0):
        self.name, self.pin, self.light, self.filter_s = name, pin, light, filter_s
        self.device = None
        self.level = self.accepted = False
        self.changed_at = 0.0
        self.timer: asyncio.TimerHandle | None = None


def _named_factory(name: str):
    """A gpiozero pin factory by its name (the names GPIOZERO_PIN_FACTORY takes)."""
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group="gpiozero_pin_factories")}
    if name.lower() not in eps:
        raise ValueError(f"pin_factory {name!r}: use one of {', '.join(sorted(eps))} (or leave it out on a Pi)")
    return eps[name.lower()]


class GpioSource:
    """Counters and a stack light on the Pi's pins, fed into a Batcher.

    ``pin_factory``: None = gpiozero's default (on a Pi: lgpio, else RPi.GPIO, ...; GPIOZERO_PIN_FACTORY
    chooses), "mock" = simulated pins (gpiozero's MockFactory), another gpiozero factory name, or a
    factory object (used, never closed here). The global ``gpiozero.Device.pin_factory`` is used when
    someone set it, and never changed. ``stats["good"]`` / ``stats["reject"]`` hold the current counts
    (what to pass as ``start_counts`` next time)."""

    def __init__(self, counters: Sequence[CounterPin] = (), stack_light: StackLight | None = None, *,
                 pin_factory: str | object | None = None, start_counts: dict[str, int] | None = None):
        self.counters = tuple(counters)
        self.stack_light = stack_light
        tags = [c.tag for c in self.counters]
        for t in set(tags):
            if tags.count(t) > 1:
                raise ValueError(f"two counters for {t!r}: one pin per counter")
        if not self.counters and stack_light is None:
            raise ValueError("nothing to read: give counter pins and/or a stack light")
        self.counts = {t: 0 for t in COUNTER_TAGS}
        for t, n in (start_counts or {}).items():
            if t not in COUNTER_TAGS:
                raise ValueError(f"start_counts: {t!r} is not a counter; use good or reject")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"start_counts[{t!r}] = {n!r}: must be a whole number >= 0")
            self.counts[t] = n
        self._factory_name: str | None = None
        self._close_factory_on_stop = False  # only a factory opened in start (real pins) is closed in stop
        self.factory = None
        if isinstance(pin_factory, str):
            ep = _named_factory(pin_factory)
            if ep.name == "mock":  # simulated pins: there from the start, so a test can set levels first
                self.factory = ep.load()()
            else:
                self._factory_name = ep.name
        elif pin_factory is not None:
            self.factory = pin_factory
        self.stats: dict = {"edges": 0, "good": self.counts["good"], "reject": self.counts["reject"],
                            "state": None, "states_recorded": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batcher: Batcher | None = None
        self._running = False
        self._counters: list[_Input] = []
        self._lights: list[_Input] = []
        self._light_timer: asyncio.TimerHandle | None = None
        self._light_changed_at = 0.0
        self._state: int | None = None

    # ------------------------------------------------------------------ start and stop

    def _open_factory(self):
        if self.factory is not None:
            return self.factory
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if self._factory_name is not None:
                    factory = _named_factory(self._factory_name).load()()
                else:
                    from gpiozero import Device

                    if Device.pin_factory is not None:  # set by whoever runs us: use it, do not close it
                        self.factory = Device.pin_factory
                        return self.factory
                    # gpiozero's own choice (GPIOZERO_PIN_FACTORY, else lgpio, rpigpio, pigpio, native),
                    # made without setting the global Device.pin_factory
                    factory = Device._default_pin_factory()
            except Exception as e:
                tried = "; ".join(str(w.message).replace("Falling back from ", "") for w in caught
                                  if str(w.message).startswith("Falling back from "))
                why = f"{e}" + (f" (tried {tried})" if tried else "")
                raise ServiceError(f"no GPIO on this computer: {why}; {NO_GPIO_HELP}") from None
        if any(type(w.message).__name__ == "NativePinFactoryFallback" for w in caught):
            log.warning("gpiozero uses its experimental native pin library; install lgpio for best results")
        self.factory, self._close_factory_on_stop = factory, True
        return factory

    def _device(self, factory, inp: _Input, what: str, pull_up, active_state: bool):
        from gpiozero import DigitalInputDevice
        from gpiozero.exc import GPIOPinInUse, PinFixedPull, PinInvalidPin

        kw = {"active_state": active_state} if pull_up is None else {}
        try:
            dev = DigitalInputDevice(inp.pin, pull_up=pull_up, bounce_time=None, pin_factory=factory, **kw)
        except PinInvalidPin:
            raise ServiceError(f"GPIO pin {inp.pin!r} for {what}: not a pin of this board (write a BCM number "
                               "like 17 or a name like GPIO17)") from None
        except GPIOPinInUse:
            raise ServiceError(f"GPIO pin {inp.pin!r} for {what}: already used by another input "
                               "(each signal needs its own pin)") from None
        except PinFixedPull:
            raise ServiceError(f"GPIO pin {inp.pin!r} for {what}: this pin has a fixed pull-up resistor "
                               "(GPIO2/3, I2C); use another pin") from None
        except Exception as e:  # GPIOZeroError, or the pin library's own (lgpio: "GPIO busy")
            raise ServiceError(f"GPIO pin {inp.pin!r} for {what}: {e or type(e).__name__}") from None
        inp.device = dev
        dev.when_activated = functools.partial(self._on_pin, inp, True)
        dev.when_deactivated = functools.partial(self._on_pin, inp, False)
        inp.level = inp.accepted = bool(dev.is_active)  # read after the handlers are in: no edge missed

    async def start(self, batcher: Batcher) -> None:
        if importlib.util.find_spec("gpiozero") is None:
            raise ServiceError("gpiozero is not installed: pip install 'fieldlab[edge]' (or pip install gpiozero)")
        if self._running:
            return
        self._loop, self._batcher = asyncio.get_running_loop(), batcher
        factory = self._open_factory()
        self._counters = [_Input(c.tag, c.pin, False, c.bounce_s or 0.0) for c in self.counters]
        light = self.stack_light
        self._lights = [_Input(colour, pin, True) for colour, pin in light.pins.items()] if light else []
        try:
            for inp, spec in zip(self._counters, self.counters):
                self._device(factory, inp, f"'{spec.tag}'", spec.pull_up, spec.active_state)
            for inp in self._lights:
                self._device(factory, inp, f"'state' (stack light {inp.name})", None, light.active_high)
        except BaseException:
            self._close_devices()
            self._close_factory()
            raise
        self._running = True
        t0 = time.time()
        if self._counters:  # rows need both counters: one the machine has not got stays at its start value
            for tag in COUNTER_TAGS:
                batcher.record(tag, t0, self.counts[tag])
        if light:
            self._light_changed_at = t0
            self._settle_lights()
        log.info("gpio source up counters=%s stack_light=%s factory=%s",
                 {c.tag: c.pin for c in self.counters}, dict(light.pins) if light else None,
                 type(factory).__name__)

    def _close_devices(self) -> None:
        for inp in self._counters + self._lights:
            if inp.device is not None:
                try:
                    inp.device.close()
                except Exception:  # closing must go on for the other pins
                    log.exception("closing GPIO pin %s failed", inp.pin)
                inp.device = None

    def _close_factory(self) -> None:
        if self._close_factory_on_stop and self.factory is not None:
            try:
                self.factory.close()
            except Exception:  # nothing more to do about it; the log says why
                log.exception("closing the GPIO pin factory failed")
            self.factory = None
        self._close_factory_on_stop = False

    async def stop(self) -> None:
        """Release the pins. A change still settling (within bounce_s / settle_s) is taken as it stands."""
        if not self._running:
            return
        self._close_devices()
        await asyncio.sleep(0)  # edges the pins reported before they closed are queued on the loop: take them
        for inp in self._counters:
            if inp.timer is not None:
                inp.timer.cancel()
                self._settle_counter(inp)
        if self._light_timer is not None:
            self._light_timer.cancel()
            self._settle_lights()
        self._running = False
        self._close_factory()
        log.info("gpio source stopped counts=%s edges=%d", self.counts, self.stats["edges"])

    # ------------------------------------------------------------------ events

    def _on_pin(self, inp: _Input, active: bool) -> None:
        """gpiozero's callback, in its own thread (real pins) or in whoever drives a mock pin."""
        ts = time.time()  # when it happened, not when the loop gets to it
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._edge, inp, ts, active)
        except RuntimeError:  # the loop is closed: the agent is gone
            pass

    def _edge(self, inp: _Input, ts: float, active: bool) -> None:
        """One edge, on the loop. Whether a level held long enough is judged by the edges' own times: when
        the loop was busy (a slow disk write) and gets a part's arrival and departure together, the part
        still counts."""
        if not self._running:
            return
        self.stats["edges"] += 1
        if inp.light:
            if self._light_timer is not None:
                self._light_timer.cancel()
                if ts - self._light_changed_at >= self.stack_light.settle_s:
                    self._settle_lights()  # the lamps had been steady long enough before this edge
            inp.level, self._light_changed_at = active, ts
            self._light_timer = self._later(ts, self.stack_light.settle_s, self._settle_lights)
        else:
            if inp.timer is not None:
                inp.timer.cancel()
                if ts - inp.changed_at >= inp.filter_s:
                    self._settle_counter(inp)  # the level had held long enough before this edge
            inp.level, inp.changed_at = active, ts
            inp.timer = self._later(ts, inp.filter_s, functools.partial(self._settle_counter, inp))

    def _later(self, ts: float, hold_s: float, fn) -> asyncio.TimerHandle | None:
        if hold_s <= 0:
            fn()
            return None
        return self._loop.call_later(max(0.0, ts + hold_s - time.time()), fn)

    def _settle_counter(self, inp: _Input) -> None:
        inp.timer = None
        if inp.level == inp.accepted:
            return  # it went back: bounce or a spike
        inp.accepted = inp.level
        if inp.level:
            self.counts[inp.name] += 1
            self.stats[inp.name] = self.counts[inp.name]
            self._batcher.record(inp.name, inp.changed_at, self.counts[inp.name])

    def _settle_lights(self) -> None:
        self._light_timer = None
        state = self.stack_light.state({inp.name for inp in self._lights if inp.level})
        if state == self._state:
            return  # a flash shorter than settle_s, or lamps that came back to the same pattern
        self._state = state
        self._batcher.record("state", self._light_changed_at, state)
        self._batcher.record("reason", self._light_changed_at, 0)
        self.stats["state"] = state
        self.stats["states_recorded"] += 1


# ------------------------------------------------------------------ mock pins from the keyboard (a classroom)

#: printed when the keys start; what a trainee sees, so in English and Dutch
KEYS_HELP = ("keys: p = a part passes the light barrier, x = a reject, g/o/r = green/orange/red lamp on/off, "
             "q = quit",
             "toetsen: p = een product door de lichtsluis, x = afkeur, g/o/r = groene/oranje/rode lamp aan/uit, "
             "q = stoppen")
_KEY_LAMPS = {"g": "green", "o": "orange", "y": "orange", "r": "red"}


def key_action(key: str, counters: dict[str, int | str], lamps: dict[str, int | str]) -> tuple[str, object] | None:
    """What a key does to the mock pins: ("pulse", pin) a part (p: good, x: reject), ("toggle", pin) a lamp
    (g, o or y, r), ("quit", None) (q, Ctrl-C, Ctrl-D), or None (a key without a pin in this mapping file).
    ``counters``: tag -> pin, ``lamps``: colour -> pin, as in the mapping file."""
    k = key.lower()
    if k in ("q", "\x03", "\x04"):
        return "quit", None
    if k in ("p", "x"):
        pin = counters.get("good" if k == "p" else "reject")
        return None if pin is None else ("pulse", pin)
    if k in _KEY_LAMPS and _KEY_LAMPS[k] in lamps:
        return "toggle", lamps[_KEY_LAMPS[k]]
    return None


def pins_line(source: GpioSource) -> str:
    """One line: the counters, each lamp on or off, the state it gives."""
    parts = [f"{c.tag} {source.counts[c.tag]}" for c in source.counters]
    light = source.stack_light
    if light is not None:
        parts += [f"{colour} {'ON' if source.factory.pin(pin).state else 'off'}" for colour, pin in light.pins.items()]
        state = source.stats["state"]
        parts.append(f"state {PACKML.get(state, '-') if state is not None else '-'}")
    return "  ".join(parts)


async def drive_from_keys(source: GpioSource, fd: int, out, done: asyncio.Event | None = None) -> None:
    """Drive a mock GpioSource's pins from the keys typed on terminal ``fd`` (key_action), showing the pins on
    one line of ``out``, until q (or ``done`` is set, or the task is cancelled). The terminal is put in cbreak
    mode (each key at once, no echo; Ctrl-C still interrupts) and restored on the way out, whatever the way."""
    import os
    import termios
    import tty

    counters = {c.tag: c.pin for c in source.counters}
    active = {c.pin: c.active_state for c in source.counters}
    lamps = dict(source.stack_light.pins) if source.stack_light else {}
    hold = max([0.05] + [3 * (c.bounce_s or 0) for c in source.counters])
    settle = (source.stack_light.settle_s if source.stack_light else 0) + 0.02
    keys: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        data = os.read(fd, 64)
        for ch in (data.decode(errors="replace") if data else "\x04"):  # end of input: as Ctrl-D
            keys.put_nowait(ch)

    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setcbreak(fd)
        loop.add_reader(fd, readable)
        out.write("\n".join(KEYS_HELP) + "\n" + pins_line(source))
        out.flush()
        while done is None or not done.is_set():
            action = key_action(await keys.get(), counters, lamps)
            if action is None:
                continue
            what, pin = action
            if what == "quit":
                break
            mock = source.factory.pin(pin)
            if what == "pulse":  # to the counter's active level and back
                on, off = (mock.drive_high, mock.drive_low) if active[pin] else (mock.drive_low, mock.drive_high)
                on()
                await asyncio.sleep(hold)
                off()
                await asyncio.sleep(hold)
            else:
                mock.drive_low() if mock.state else mock.drive_high()
                await asyncio.sleep(settle)
            out.write("\r\x1b[K" + pins_line(source))
            out.flush()
    finally:
        loop.remove_reader(fd)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write("\n")
        out.flush()
