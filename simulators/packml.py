"""The PackML state model as a transition table: only valid transitions are possible.

The states and transitions are those of the base state model of ANSI/ISA-TR88.00.02-2015
("Machine and Unit States", PackML), as exposed over OPC UA by OPC 30050 (OPC UA for PackML,
PackMLMachineStateMachineType and PackMLExecuteStateMachineType). The state numbers are those of
OPC 30060 (OPC UA for Tobacco Machine Communication, 11.9 StateEnumeration), which the contract
uses (``contract.PACKML``): Stopped 0, Resetting 1, Idle 2, Starting 3, Execute 4, Completing 5,
Complete 6, Aborting 7, Aborted 8, Stopping 9, Clearing 10, Suspending 11, Suspended 12,
Unsuspending 13, Holding 14, Held 15, Unholding 16. (TR88 itself numbers them differently, e.g.
Execute 6: a producer translates.)

A transition is fired by a command (Reset, Start, Stop, Hold, Unhold, Suspend, Unsuspend, Abort,
Clear) or by "state complete" (SC): an acting state (the "-ing" states) ends by itself when its
work is done; Execute also ends with SC when the production order is complete. Wait states
(Stopped, Idle, Complete, Suspended, Held, Aborted) change only on a command, Execute on a command
or SC. Stop is accepted in every state except Stopping, Stopped, Aborting, Aborted and Clearing;
Abort in every state except Aborting and Aborted. Hold is also accepted in Suspended
(SuspendedToHolding in OPC 30050).
"""
from __future__ import annotations

from contract import PACKML

(STOPPED, RESETTING, IDLE, STARTING, EXECUTE, COMPLETING, COMPLETE, ABORTING, ABORTED, STOPPING, CLEARING,
 SUSPENDING, SUSPENDED, UNSUSPENDING, HOLDING, HELD, UNHOLDING) = range(17)
assert [PACKML[i] for i in (STOPPED, EXECUTE, HELD)] == ["Stopped", "Execute", "Held"]  # the contract's numbers

# commands (TR88.00.02 "state commands") and "state complete"
RESET, START, STOP, HOLD, UNHOLD, SUSPEND, UNSUSPEND, ABORT, CLEAR, SC = (
    "reset", "start", "stop", "hold", "unhold", "suspend", "unsuspend", "abort", "clear", "sc")
COMMANDS = (RESET, START, STOP, HOLD, UNHOLD, SUSPEND, UNSUSPEND, ABORT, CLEAR, SC)

ACTING = frozenset({RESETTING, STARTING, COMPLETING, ABORTING, STOPPING, CLEARING, SUSPENDING, UNSUSPENDING,
                    HOLDING, UNHOLDING})
WAIT = frozenset({STOPPED, IDLE, COMPLETE, ABORTED, SUSPENDED, HELD})

_BASE = {
    (STOPPED, RESET): RESETTING,
    (RESETTING, SC): IDLE,
    (IDLE, START): STARTING,
    (STARTING, SC): EXECUTE,
    (EXECUTE, SC): COMPLETING,
    (COMPLETING, SC): COMPLETE,
    (COMPLETE, RESET): RESETTING,
    (EXECUTE, HOLD): HOLDING,
    (HOLDING, SC): HELD,
    (HELD, UNHOLD): UNHOLDING,
    (UNHOLDING, SC): EXECUTE,
    (EXECUTE, SUSPEND): SUSPENDING,
    (SUSPENDING, SC): SUSPENDED,
    (SUSPENDED, UNSUSPEND): UNSUSPENDING,
    (UNSUSPENDING, SC): EXECUTE,
    (SUSPENDED, HOLD): HOLDING,
    (STOPPING, SC): STOPPED,
    (ABORTING, SC): ABORTED,
    (ABORTED, CLEAR): CLEARING,
    (CLEARING, SC): STOPPED,
}
_STOPPABLE = frozenset(range(17)) - {STOPPING, STOPPED, ABORTING, ABORTED, CLEARING}
_ABORTABLE = frozenset(range(17)) - {ABORTING, ABORTED}

#: (state, command) -> next state. Anything not in the table is illegal.
TRANSITIONS: dict[tuple[int, str], int] = {
    **_BASE,
    **{(s, STOP): STOPPING for s in _STOPPABLE},
    **{(s, ABORT): ABORTING for s in _ABORTABLE},
}
#: every (from, to) pair some command or SC allows
LEGAL = frozenset((s, n) for (s, _), n in TRANSITIONS.items())


class IllegalTransition(ValueError):
    """A command or state complete that the PackML state model does not allow in the current state."""


def next_state(state: int, command: str) -> int:
    """The state ``command`` leads to from ``state``; raises IllegalTransition if none."""
    try:
        return TRANSITIONS[(state, command)]
    except KeyError:
        name = PACKML.get(state, state)
        allowed = sorted(c for (s, c) in TRANSITIONS if s == state)
        raise IllegalTransition(f"PackML: {command!r} is not allowed in state {name}; "
                                f"allowed: {', '.join(allowed) or 'nothing'}") from None


def path(state: int, *commands: str) -> list[int]:
    """The states visited by firing ``commands`` one after the other from ``state`` (checked)."""
    out = []
    for c in commands:
        state = next_state(state, c)
        out.append(state)
    return out


class StateMachine:
    """One unit's PackML state: changes only through ``fire``, which refuses illegal transitions."""

    def __init__(self, state: int = STOPPED):
        if state not in PACKML:
            raise IllegalTransition(f"PackML: no state {state}")
        self.state = state

    def fire(self, command: str) -> int:
        self.state = next_state(self.state, command)
        return self.state

    def can(self, command: str) -> bool:
        return (self.state, command) in TRANSITIONS

    @property
    def name(self) -> str:
        return PACKML[self.state]
