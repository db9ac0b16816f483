"""project.daphne_fixes: applied only to the Daphne it was written for, and pinned with it."""

import logging
import re

import daphne
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol

from project import daphne_fixes
from tests.servers import ROOT


def test_fixes_are_written_for_the_pinned_daphne():
    """A Daphne upgrade in requirements.txt must come with a fresh look at the fixes."""
    pinned = re.search(r"(?m)^daphne==(\S+)$", (ROOT / "requirements.txt").read_text()).group(1)
    assert daphne_fixes.WRITTEN_FOR == pinned == daphne.__version__


def test_fixes_stay_out_of_another_daphne_version(monkeypatch, caplog):
    """On a Daphne they were not written for, the fixes are not installed and a warning says so."""
    monkeypatch.setattr(daphne_fixes, "_applied", False)
    monkeypatch.setattr(daphne, "__version__", "99.0")
    monkeypatch.setattr(WebSocketProtocol, "handle_reply", WebSocketProtocol.handle_reply)
    monkeypatch.setattr(WebSocketProtocol, "serverSend", WebSocketProtocol.serverSend)
    monkeypatch.setattr(Server, "kill_all_applications", Server.kill_all_applications)
    originals = WebSocketProtocol.handle_reply, WebSocketProtocol.serverSend, Server.kill_all_applications
    with caplog.at_level(logging.WARNING, logger="project.daphne_fixes"):
        daphne_fixes.apply()
    assert (
        WebSocketProtocol.handle_reply,
        WebSocketProtocol.serverSend,
        Server.kill_all_applications,
    ) == originals
    assert "written for Daphne 4.2.3, found 99.0: not applied" in caplog.text
