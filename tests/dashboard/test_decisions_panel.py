"""Undo and override from the decisions panel, end to end in one process: a real RunEngine runs
`operando_series` on the simulated beamline, its documents feed the dashboard model, the panel's
buttons send their inverse commands through a real control channel (ZeroMQ, token) to
RunEngineSteering, and the plan records each undo as a decision of its own."""
from __future__ import annotations

import json
import threading

from bluesky import RunEngine
from bokeh.document import Document
from bokeh.events import ButtonClick
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

from opmon.acquisition import PeriodicTrigger, SteeringRequests, operando_series, rule_from_values
from opmon.acquisition.cell_state import CellMode
from opmon.acquisition.decisions import action, answers, awaited
from opmon.acquisition.mapping import MapGrid
from opmon.acquisition.potentiostat import CellCommand
from opmon.acquisition.steering import RunEngineSteering
from opmon.dashboard.control_client import ControlClient
from opmon.dashboard.decisions_panel import DecisionsPanel
from opmon.dashboard.model import DashboardModel, Decision
from opmon.dashboard.steering import Steering
from opmon.simulators.beamline import BeamlineConfig, SimulatedBeamline
from opmon.simulators.instrument import SxdmSetup
from opmon.streaming.archive.map_sink import Hdf5MapSink
from opmon.streaming.control import ControlServer
from tests.waiting import until

TOKEN = "panel-test-token-0123456789"


def _decisions(docs):
    steer = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "steering"}
    return [(e["data"]["steering-decision"], e["data"]["steering-reason"], json.loads(e["data"]["steering-detail"]))
            for n, e in docs if n == "event" and e["descriptor"] in steer]


def _click(panel: DecisionsPanel, label_start: str) -> None:
    (button,) = [b for b in panel.buttons.children if b.label.startswith(label_start)]
    assert not button.disabled
    button._trigger_event(ButtonClick(button))


def test_undo_and_override_buttons_send_the_inverse_and_the_plan_records_it(tmp_path):
    RE = RunEngine({}, call_returns_result=True, context_managers=[])
    model, docs = DashboardModel(), []
    RE.subscribe(lambda name, doc: (docs.append((name, doc)), model.on_document(name, doc)))
    bl = SimulatedBeamline(BeamlineConfig(setup=SxdmSetup(map_shape=(4, 4), n_angles=3, roi=(224, 288, 224, 288),
                                                          eta_step=0.2), acceleration=600.0),
                           sink=Hdf5MapSink(tmp_path / "frames"))
    requests = SteeringRequests(loop=RE.loop)
    steering = RunEngineSteering(RE, requests, rule_from_values)
    server = ControlServer("tcp://127.0.0.1:0", TOKEN, steering).start()
    client = ControlClient(server.endpoint)
    doc = Document()
    panel = DecisionsPanel(Steering(doc, client, TOKEN, True, figure(), ColumnDataSource()))
    plan = operando_series(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector,
                           grid=MapGrid((4, 4), bl.config.setup.map_step_um), etas=bl.etas()[:2],
                           triggers=PeriodicTrigger(1e6, start_now=False),
                           charge=CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 15), cutoff=4.9),
                           requests=requests, poll_s=0.02)
    result: list[str] = []
    runner = threading.Thread(target=lambda: result.append(steering.run(plan)), daemon=True)
    runner.start()

    def show() -> list[str]:
        panel.show(model.decisions()[1])
        return [b.label for b in panel.buttons.children if not b.disabled]
    try:
        assert until(lambda: RE.state == "running", 20)
        assert client.request("set_region", TOKEN, r0=0, r1=2, c0=1, c1=3)["ok"]
        assert client.request("set_trigger", TOKEN, period_s=5.0, reason="faster maps")["ok"]
        assert until(lambda: any(label.startswith("Undo: restore the previous rule") for label in show()), 20)
        _click(panel, "Undo: restore the previous region")
        _click(panel, "Undo: restore the previous rule")
        assert until(lambda: sum(d == "map region" for d, _, _ in _decisions(docs)) == 2
                     and sum(d == "trigger rule" for d, _, _ in _decisions(docs)) == 2, 20)
        # each button is used once; the undo decisions offer their own undo (a redo)
        assert sum(label.startswith("Undo: restore") for label in show()) == 2 and len(panel.used) == 2
        # an automatic pause (as the dose watch sends it): resume and switch the rule off from the panel
        assert client.request("pause", TOKEN, reason="dose limit: 3e7 photons", automatic="dose")["ok"]
        assert until(lambda: RE.state == "paused", 20)
        model.on_status({"source": "acquisition", **steering.status()})
        assert until(lambda: "Undo: resume (pause" in " ".join(show()), 5)
        _click(panel, "Disable dose actions")
        assert until(lambda: not steering.allows("dose"), 10)
        _click(panel, "Undo: resume")
        assert until(lambda: RE.state == "running", 20)
        assert client.request("stop", TOKEN)["ok"]
        runner.join(30)
        assert result == ["success"]
    finally:
        if RE.state != "idle":
            steering.abort("test over")
            runner.join(10)
        client.close()
        server.close()
        bl.close()
    decided = _decisions(docs)
    regions = [(why, detail["region"]) for d, why, detail in decided if d == "map region"]
    assert regions == [("steering request", [0, 2, 1, 3]), ("undo: previous map region restored", None)]
    rules = [(why, detail) for d, why, detail in decided if d == "trigger rule"]
    assert rules == [("faster maps", {"period_s": 5.0}),
                     ("undo: previous trigger rule restored", {"period_s": 1e6})]
    notes = [(d, why) for d, why, _ in decided if d in ("pause", "resume", "override")]
    assert ("pause", "dose limit: 3e7 photons") in notes and ("override", "dose actions disabled from the dashboard") in notes
    assert ("resume", "undo of the pause: dose limit: 3e7 photons") in notes
    assert [c for c, _ in panel.sent] == ["set_region", "set_trigger", "set_automatic", "resume"]


def _row(t: float, decision: str, reason: str, actions=(), **detail) -> Decision:
    """A decision as the plan records it (`acquisition.decisions.record`'s event data)."""
    found = Decision.from_event({"time": t, "data": {
        "steering-decision": decision, "steering-reason": reason, "steering-detail": json.dumps(detail),
        "steering-actions": json.dumps(list(actions))}})
    assert found is not None
    return found


def test_an_open_proposal_stays_in_view_until_a_later_decision_answers_it():
    """Phase tracking's proposal is an ordinary decision whose accept is an awaited action: the
    panel keeps it (row and button) in view however many maps follow, and drops its button once
    the plan's re-centring answers it; an ordinary undo scrolls out with its row."""
    panel = DecisionsPanel(Steering(Document(), None, None, False, figure(), ColumnDataSource()))
    accept = awaited("Accept: re-centre on d = 2.0184 Å", "accept_proposal", proposal=1)
    rows = [_row(0.0, "trigger rule", "faster maps", [action("Undo: restore the previous rule", "set_trigger",
                                                             period_s=1200.0)], period_s=5.0),
            _row(1.0, "proposal", "re-centre on d = 2.0184 Å: accept in the dashboard", [accept], proposal=1,
                 eta=10.2, delta=20.4, d_angstrom=2.0184)]
    rows += [_row(2.0 + i, "map", "periodic", map=i) for i in range(8)]
    panel.show(rows)
    assert 'data-decision="proposal"' in panel.table.text and "accept in the dashboard" in panel.table.text
    assert 'data-decision="trigger rule"' not in panel.table.text and "(10 this run)" in panel.table.text
    (button,) = panel.buttons.children
    assert button.label.startswith("Accept: re-centre on d = 2.0184 Å (proposal, ") and button.button_type == "success"
    panel.show(rows + [_row(10.0, "map", "periodic", map=8)])
    assert panel.buttons.children == [button]                 # the same button: a click is not lost to a re-draw
    # the reflection kept fading: a newer proposal replaces the open one, whose button goes
    rows.append(_row(11.0, "proposal", "re-centre on d = 2.0184 Å: accept in the dashboard (replaces proposal 1)",
                     [awaited("Accept: re-centre on d = 2.0184 Å", "accept_proposal", proposal=2)], proposal=2,
                     answers=[answers("accept_proposal", proposal=1)]))
    rows += [_row(12.0 + i, "map", "periodic", map=9 + i) for i in range(6)]
    panel.show(rows)
    (newer,) = panel.buttons.children
    assert newer is not button and panel.table.text.count('data-decision="proposal"') == 1
    rows.append(_row(20.0, "re-centre", "proposal 2 accepted in the dashboard", delta=20.4,
                     answers=answers("accept_proposal", proposal=2)))
    panel.show(rows)
    assert panel.buttons.children == [] and 'data-decision="proposal"' not in panel.table.text
    assert 'data-decision="re-centre"' in panel.table.text and "answers" not in panel.table.text
