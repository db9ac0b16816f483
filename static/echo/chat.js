// A minimal client for ws/: send what is typed, show what comes back. Text only, never HTML.
(function () {
  "use strict";
  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + window.location.host + "/ws/";
  var status = document.getElementById("status");
  var log = document.getElementById("log");
  var form = document.getElementById("send-form");
  var input = document.getElementById("message");
  var socket = new WebSocket(url);

  function show(direction, text) {
    var line = document.createElement("li");
    line.className = direction;
    line.textContent = (direction === "sent" ? "→ " : "← ") + text;
    log.appendChild(line);
    line.scrollIntoView({block: "end"});
  }

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  socket.addEventListener("open", function () { setStatus("open", "Connected to " + url); });
  socket.addEventListener("message", function (event) { show("received", String(event.data)); });
  socket.addEventListener("close", function (event) {
    setStatus("closed", "Closed (code " + event.code + (event.reason ? ", " + event.reason : "") + ")");
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (socket.readyState !== WebSocket.OPEN || input.value === "") { return; }
    socket.send(input.value);
    show("sent", input.value);
    input.value = "";
  });
})();
