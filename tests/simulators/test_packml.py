"""The PackML transition table (ISA-TR88.00.02, OPC 30060 numbers) refuses what the standard does not allow."""
import pytest

from contract import PACKML
from simulators import packml
from simulators.packml import IllegalTransition, StateMachine, next_state, path

N = {name: code for code, name in PACKML.items()}

# Written out by hand from the TR88.00.02 state diagram, independently of simulators.packml
_BASE_EDGES = {
    ("Stopped", "Resetting"), ("Resetting", "Idle"), ("Idle", "Starting"), ("Starting", "Execute"),
    ("Execute", "Completing"), ("Completing", "Complete"), ("Complete", "Resetting"),
    ("Execute", "Holding"), ("Holding", "Held"), ("Held", "Unholding"), ("Unholding", "Execute"),
    ("Execute", "Suspending"), ("Suspending", "Suspended"), ("Suspended", "Unsuspending"),
    ("Unsuspending", "Execute"), ("Suspended", "Holding"),
    ("Stopping", "Stopped"), ("Aborting", "Aborted"), ("Aborted", "Clearing"), ("Clearing", "Stopped"),
}
_NO_STOP = {"Stopping", "Stopped", "Aborting", "Aborted", "Clearing"}
_NO_ABORT = {"Aborting", "Aborted"}
LEGAL_BY_HAND = ({(N[a], N[b]) for a, b in _BASE_EDGES}
                 | {(N[s], N["Stopping"]) for s in N if s not in _NO_STOP}
                 | {(N[s], N["Aborting"]) for s in N if s not in _NO_ABORT})


def test_table_has_exactly_the_standards_transitions():
    assert packml.LEGAL == LEGAL_BY_HAND
    assert len(PACKML) == 17 and set(PACKML) == set(range(17))


def test_the_paths_the_machines_use():
    E = N["Execute"]
    assert [PACKML[s] for s in path(E, "hold", "sc", "unhold", "sc")] == ["Holding", "Held", "Unholding", "Execute"]
    assert [PACKML[s] for s in path(E, "suspend", "sc", "unsuspend", "sc")] == [
        "Suspending", "Suspended", "Unsuspending", "Execute"]
    assert [PACKML[s] for s in path(E, "sc", "sc", "reset", "sc", "start", "sc")] == [
        "Completing", "Complete", "Resetting", "Idle", "Starting", "Execute"]
    # a hard fault and a stop end in Stopped, and Reset leads back to production
    assert PACKML[path(E, "abort", "sc", "clear", "sc", "reset", "sc", "start", "sc")[-1]] == "Execute"
    assert PACKML[path(E, "stop", "sc")[-1]] == "Stopped"


@pytest.mark.parametrize("state, command", [
    ("Execute", "unhold"), ("Execute", "start"), ("Execute", "reset"), ("Idle", "hold"), ("Held", "sc"),
    ("Suspended", "unhold"), ("Stopped", "start"), ("Aborted", "reset"), ("Aborting", "abort"),
    ("Stopped", "stop"), ("Complete", "start"), ("Held", "suspend"), ("Execute", "clear")])
def test_illegal_commands_raise(state, command):
    with pytest.raises(IllegalTransition, match=f"{command!r} is not allowed in state {state}"):
        next_state(N[state], command)
    sm = StateMachine(N[state])
    assert not sm.can(command)
    with pytest.raises(IllegalTransition):
        sm.fire(command)
    assert sm.name == state  # a refused command changes nothing


def test_state_machine_walks_legal_commands_only():
    sm = StateMachine()
    assert sm.name == "Stopped"
    for c in ("reset", "sc", "start", "sc"):
        sm.fire(c)
    assert sm.name == "Execute"
    with pytest.raises(IllegalTransition):
        StateMachine(17)


def test_every_state_is_reachable_and_can_get_back_to_execute():
    def reach(start, edges):
        seen, todo = {start}, [start]
        while todo:
            s = todo.pop()
            for a, b in edges:
                if a == s and b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    assert reach(N["Stopped"], packml.LEGAL) == set(range(17))
    reverse = {(b, a) for a, b in packml.LEGAL}
    assert reach(N["Execute"], reverse) == set(range(17))  # no dead end
